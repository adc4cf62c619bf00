// Fused GATv2 kernels on CUDA (docs/design.md §10), per head:
//   u_ij = xl_j + xr_i + e_ij,   z_ij = <att, LeakyReLU(u_ij)>,   out_i = sum_j alpha_ij keep_ij xl_j
//
// Forward: Gatv2Rule on the forward skeleton of forward_kernels.cuh (split plan and merge shared
// with GAT). z sums over all C channels, so each step's scores are group reductions
// (group_logits); an item owns one channel tile, and where C spans several tiles each item
// recomputes the whole z per tile (the score's loads are the tile's gather many times over).
//
// Backward, no atomics, bitwise deterministic (every output element summed by one lane group in
// a fixed order), with alpha recomputed from lse, D_i = <dout_i, out_i>, g(u) = (u > 0 ? 1 : slope):
//   CSR pass, a group per (destination i, head, tile), over row i's entries (then its loop):
//     D_i; per entry z and <dout_i, xl_j> (group sums over all C, per tile as the forward),
//     dz = alpha (keep <dout_i, xl_j> - D_i), stored with w = alpha keep per slot (tile 0);
//     du = dz att . g(u) on the tile: dxr_i = sum du, de_ij = du, row i's datt share
//     sum dz LeakyReLU(u).
//   CSC pass, a group per (source j, head, tile), over j's out-edges (then its loop):
//     dxl_j = sum w dout_i + dz att . g(u), u recomputed on the tile (no reduction over C).
//   datt = the rows' shares summed in fixed chunks of rows (sum_rows_kernel).
// Scratch: dz and w, (E + num_loops) x H, and the datt shares, N_dst x H x C, in the
// accumulation dtype. Dead slots are never visited; de on them is zeroed by
// zero_dead_slots_kernel. Kernels assume valid input (csrc/common/checks.h checks shapes).
#pragma once
#include <algorithm>
#include <cstdint>

#include "forward_kernels.cuh"

namespace fastgat {
namespace cuda {

// Row `slot` of an (E, H, C) tensor by CSR slot, or for slot E + i (row i's self loop) row i of
// its (num_loops, H, C) loop part; nullptr where that tensor is absent.
template <typename P>
__device__ __forceinline__ P* slot_row(P* edges, P* loops, const Item& it, int64_t slot) {
  if (slot < it.num_slots) {
    return edges != nullptr ? edges + (slot * it.heads + it.head) * it.channels : nullptr;
  }
  return loops != nullptr ? loops + ((slot - it.num_slots) * it.heads + it.head) * it.channels
                          : nullptr;
}

// GATv2's score and value (docs/design.md §10): the value is xl_j (values).
template <typename T_>
struct Gatv2Rule : SourceValue<T_> {
  using T = T_;
  using A = acc_type<T>;
  static constexpr int VEC = vec_width<T>();
  static constexpr int kMaxRegisters = 255;  // no budget beyond ptxas's own
  const T* xr;      // (N_dst, H, C)
  const T* att;     // (H, C)
  const T* e;       // (E, H, C) by CSR slot, or nullptr
  const T* e_loop;  // (num_loops, H, C), or nullptr
  A slope;

  // This lane's tile-0 channels of xr_i and att, read once per item; kept in T, as
  // load_pack's rows (half the registers for 16-bit types).
  struct Row {
    Pack<T, VEC> xr;
    Pack<T, VEC> att;
  };
  struct Entry {};

  __device__ __forceinline__ const T* xr_row(const Item& it) const {
    return xr + (it.i * it.heads + it.head) * it.channels;
  }
  __device__ __forceinline__ const T* att_row(const Item& it) const {
    return att + static_cast<int64_t>(it.head) * it.channels;
  }
  template <typename Index>
  __device__ __forceinline__ const T* xl_row(const Item& it, Index j) const {
    return this->values + (static_cast<int64_t>(j) * it.heads + it.head) * it.channels;
  }
  // e_ij of `slot` (slot E + i: row i's self loop), or nullptr without edge values.
  __device__ __forceinline__ const T* edge_row(const Item& it, int64_t slot) const {
    return slot_row(e, e_loop, it, slot);
  }

  template <bool ALIGNED>
  __device__ __forceinline__ Row row(const Item& it) const {
    Row r;
    load_pack<ALIGNED>(xr_row(it), it.c_first, it.channels, r.xr);
    load_pack<ALIGNED>(att_row(it), it.c_first, it.channels, r.att);
    return r;
  }
  __device__ __forceinline__ Entry entry(const Item&, int64_t, bool) const { return {}; }

  // u[0..VEC) = (x + y) + e_ij at channels c .. c + VEC: x = xl_j read from `x_row`, y = xr_i
  // at c given (or the other way round, the same bits); zeros past C.
  template <bool ALIGNED>
  __device__ __forceinline__ void u_at(const T* x_row, const Pack<T, VEC>& y, const T* e_ij,
                                       int64_t c, int64_t channels, A (&u)[VEC]) const {
    load<ALIGNED>(x_row, c, channels, u);
#pragma unroll
    for (int v = 0; v < VEC; ++v) u[v] += static_cast<A>(y.get(v));
    if (e_ij != nullptr) {
      A ev[VEC];
      load<ALIGNED>(e_ij, c, channels, ev);
#pragma unroll
      for (int v = 0; v < VEC; ++v) u[v] += ev[v];
    }
  }

  // This lane's share of z_ij: sum over its channels of every tile of att . LeakyReLU(u)
  // (tile 0 from the Row; padding past C has att = 0).
  template <bool ALIGNED, typename Index>
  __device__ __forceinline__ A score_part(const Item& it, const Row& r, Index j,
                                          int64_t slot) const {
    const T* xl_j = xl_row(it, j);
    const T* e_ij = edge_row(it, slot);
    A u[VEC], z = A(0);
    u_at<ALIGNED>(xl_j, r.xr, e_ij, it.c_first, it.channels, u);
#pragma unroll
    for (int v = 0; v < VEC; ++v) z += static_cast<A>(r.att.get(v)) * leaky_relu(u[v], slope);
    for (int64_t c = it.c_first + it.stride; c < it.channels; c += it.stride) {
      Pack<T, VEC> xr_c, att_c;
      load_pack<ALIGNED>(xr_row(it), c, it.channels, xr_c);
      load_pack<ALIGNED>(att_row(it), c, it.channels, att_c);
      u_at<ALIGNED>(xl_j, xr_c, e_ij, c, it.channels, u);
#pragma unroll
      for (int v = 0; v < VEC; ++v) z += static_cast<A>(att_c.get(v)) * leaky_relu(u[v], slope);
    }
    return z;
  }

  template <bool ALIGNED, typename Index>
  __device__ __forceinline__ A logit(const Group& g, const Item& it, const Row& r, Index j,
                                     int64_t slot, const Entry&, bool valid, int n) const {
    const A z = group_logits<A>(g, n, j, slot, [&](Index j_e, int64_t slot_e) {
      return score_part<ALIGNED>(it, r, j_e, slot_e);
    });
    return valid ? z : minus_infinity<A>();
  }
};

template <typename T, typename Index>
struct Gatv2BackwardArgs {
  using A = acc_type<T>;
  Gatv2Rule<T> rule;
  const T* dout;
  const T* out;
  const A* lse;
  const Index* rowptr;
  const Index* col;
  const Index* colptr;
  const Index* csc_row;
  const Index* csc_eid;
  A* dz;         // (E + num_loops, H) by slot: written by the CSR pass, read by the CSC pass
  A* w;          // (E + num_loops, H) by slot: alpha keep, likewise
  A* datt_rows;  // (N_dst, H, C): row i's share of datt
  T* dxl;
  T* dxr;
  T* de;       // nullptr without e
  T* de_loop;  // nullptr without e_loop
  int64_t num_src, num_dst, num_slots, num_loops, channels, tiles;
  int heads, group_size;
  Dropout dropout;
};

// The Item of this lane's group in a grid of a group per (row, head, tile) over `rows` rows
// (destinations or sources); i = -1 past the end.
template <int VEC, typename T, typename Index>
__device__ __forceinline__ Item gatv2_item(const Group& g, const Gatv2BackwardArgs<T, Index>& a,
                                           int64_t rows) {
  const int64_t per_row = a.heads * a.tiles, index = g.index();
  if (index >= rows * per_row) return Item{-1};
  return make_item<VEC>(g, index / per_row, static_cast<int>(index % per_row / a.tiles),
                        a.heads, index % a.tiles, a.channels, a.num_slots);
}

// g(u) = (u > 0 ? 1 : slope), the derivative of LeakyReLU branching on u (any slope).
template <typename A>
__device__ __forceinline__ A leaky_relu_grad(A u, A slope) {
  return u > A(0) ? A(1) : slope;
}

// A group per (destination i, head, tile): dz and w per slot, dxr_i, de, row i's datt share.
template <bool ALIGNED, typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kOneBlock)
    gatv2_csr_kernel(const Gatv2BackwardArgs<T, Index> a) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const Group g(a.group_size);
  const Item it = gatv2_item<VEC>(g, a, a.num_dst);
  if (it.i < 0) return;
  const Gatv2Rule<T>& rule = a.rule;
  const int64_t i = it.i, channels = it.channels, stride = it.stride, c_first = it.c_first;
  const int head = it.head, heads = it.heads;
  const int64_t row_head = i * heads + head;
  const A slope = rule.slope;

  const typename Gatv2Rule<T>::Row row = rule.template row<ALIGNED>(it);
  const T* dout_i = a.dout + row_head * channels;
  A dout_first[VEC];
  load<ALIGNED>(dout_i, c_first, channels, dout_first);
  const A D = g.sum(lane_dot<ALIGNED>(dout_first, dout_i, a.out + row_head * channels, c_first,
                                      stride, channels));
  const A lse = a.lse[row_head];
  // This tile's xr_i and att (tile 0 is the Row's).
  Pack<T, VEC> xr_own, att_own;
  load_pack<ALIGNED>(rule.xr_row(it), it.c0, channels, xr_own);
  load_pack<ALIGNED>(rule.att_row(it), it.c0, channels, att_own);

  const int64_t row_begin = a.rowptr[i];
  const int64_t degree = static_cast<int64_t>(a.rowptr[i + 1]) - row_begin;
  const int64_t entries = degree + (i < a.num_loops);
  const uint64_t seed = a.dropout.seed_value();
  A dxr[VEC], datt[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) dxr[v] = datt[v] = A(0);
  for (int64_t base = 0; base < entries; base += g.size) {
    // Lane k holds entry base + k (q == degree: the self loop, slot E + i).
    const int64_t q = base + g.lane;
    const bool valid = q < entries;
    const int n = static_cast<int>(std::min<int64_t>(g.size, entries - base));
    Index j = 0;
    int64_t slot = 0;
    if (valid) {
      slot = q < degree ? row_begin + q : a.num_slots + i;
      j = q < degree ? a.col[slot] : static_cast<Index>(i);
    }
    A z = A(0), dalpha = A(0);
    for (int e = 0; e < n; ++e) {
      const Index j_e = g.broadcast(j, e);
      const int64_t slot_e = g.broadcast(slot, e);
      const A z_e = g.sum(rule.template score_part<ALIGNED>(it, row, j_e, slot_e));
      const A dot_e = g.sum(lane_dot<ALIGNED>(dout_first, dout_i, rule.xl_row(it, j_e), c_first,
                                              stride, channels));
      if (g.lane == e) {
        z = z_e;
        dalpha = dot_e;
      }
    }
    A dz = A(0);
    if (valid) {
      const A alpha = weight_of(z, lse);
      const A keep = a.dropout.template keep<A>(seed, slot, heads, head);
      dz = alpha * (keep * dalpha - D);
      if (it.c0 == c_first) {  // tile 0: one writer per entry
        a.dz[slot * heads + head] = dz;
        a.w[slot * heads + head] = alpha * keep;
      }
    }
    // du on this tile per entry: dxr_i, de_ij and the datt share.
    for (int e = 0; e < n; ++e) {
      const Index j_e = g.broadcast(j, e);
      const int64_t slot_e = g.broadcast(slot, e);
      const A dz_e = g.broadcast(dz, e);
      const T* e_ij = rule.edge_row(it, slot_e);
      A u[VEC], du[VEC];
      rule.template u_at<ALIGNED>(rule.xl_row(it, j_e), xr_own, e_ij, it.c0, channels, u);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        du[v] = dz_e * static_cast<A>(att_own.get(v)) * leaky_relu_grad(u[v], slope);
        dxr[v] += du[v];
        datt[v] += dz_e * leaky_relu(u[v], slope);
      }
      T* de_ij = slot_row(a.de, a.de_loop, it, slot_e);
      if (de_ij != nullptr) store<ALIGNED>(de_ij, it.c0, channels, du, A(1));
    }
  }
  store<ALIGNED>(a.dxr + row_head * channels, it.c0, channels, dxr, A(1));
  store<false>(a.datt_rows + row_head * channels, it.c0, channels, datt, A(1));
}

// A group per (source j, head, tile): dxl_j = sum over j's out-edges (then its loop) of
// w dout_i + dz att . g(u), reading the CSR pass's dz and w per slot.
template <bool ALIGNED, typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kOneBlock)
    gatv2_csc_kernel(const Gatv2BackwardArgs<T, Index> a) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const Group g(a.group_size);
  // Source j as the Item's row: its self loop is slot E + j, as row j's, so edge_row reads it.
  const Item it = gatv2_item<VEC>(g, a, a.num_src);
  if (it.i < 0) return;
  const Gatv2Rule<T>& rule = a.rule;
  const int64_t j = it.i, channels = it.channels, c0 = it.c0;
  const int head = it.head, heads = it.heads;
  const A slope = rule.slope;
  const int64_t col_head = j * heads + head;

  Pack<T, VEC> xl_j, att_own;
  load_pack<ALIGNED>(rule.values + col_head * channels, c0, channels, xl_j);
  load_pack<ALIGNED>(rule.att_row(it), c0, channels, att_own);
  const int64_t col_begin = a.colptr[j];
  const int64_t degree = static_cast<int64_t>(a.colptr[j + 1]) - col_begin;
  const int64_t entries = degree + (j < a.num_loops);
  A dxl[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) dxl[v] = A(0);
  for (int64_t base = 0; base < entries; base += g.size) {
    // Lane k holds out-edge base + k (q == degree: the self loop j -> j, slot E + j).
    const int64_t q = base + g.lane;
    const int n = static_cast<int>(std::min<int64_t>(g.size, entries - base));
    Index i = 0;
    int64_t slot = 0;
    A dz = A(0), w = A(0);
    if (q < entries) {
      i = q < degree ? a.csc_row[col_begin + q] : static_cast<Index>(j);
      slot = q < degree ? static_cast<int64_t>(a.csc_eid[col_begin + q]) : a.num_slots + j;
      dz = a.dz[slot * heads + head];
      w = a.w[slot * heads + head];
    }
    for (int e = 0; e < n; ++e) {
      const int64_t row_head = static_cast<int64_t>(g.broadcast(i, e)) * heads + head;
      const int64_t slot_e = g.broadcast(slot, e);
      const A dz_e = g.broadcast(dz, e), w_e = g.broadcast(w, e);
      // u = (xr_i + xl_j) + e_ij: the CSR pass's (xl_j + xr_i) + e_ij, bit for bit.
      A dout_i[VEC], u[VEC];
      rule.template u_at<ALIGNED>(rule.xr + row_head * channels, xl_j, rule.edge_row(it, slot_e),
                                  c0, channels, u);
      load<ALIGNED>(a.dout + row_head * channels, c0, channels, dout_i);
#pragma unroll
      for (int v = 0; v < VEC; ++v)
        dxl[v] += w_e * dout_i[v] +
                  dz_e * static_cast<A>(att_own.get(v)) * leaky_relu_grad(u[v], slope);
    }
  }
  store<ALIGNED>(a.dxl + col_head * channels, c0, channels, dxl, A(1));
}

// out[c] = sum of rows[r][c] over r in [chunk * rows_per_chunk, ...) of each chunk, rows in
// order: a thread per (chunk, column). Chunks are fixed by shapes, so the sum of every stage
// and of the whole is bitwise reproducible.
template <typename A, typename O>
__global__ void sum_rows_kernel(const A* __restrict__ rows, int64_t num_rows, int64_t width,
                                int64_t rows_per_chunk, int64_t chunks, O* __restrict__ out) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= chunks * width) return;
  const int64_t chunk = index / width, c = index % width;
  const int64_t end = std::min(num_rows, (chunk + 1) * rows_per_chunk);
  A total = A(0);
  for (int64_t r = chunk * rows_per_chunk; r < end; ++r) total += rows[r * width + c];
  out[index] = static_cast<O>(total);
}

}  // namespace cuda
}  // namespace fastgat
