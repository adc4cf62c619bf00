// TransformerConv's fused CUDA kernels (docs/design.md §11), with z = scale <q_i, k_j + e_ij>,
// alpha = exp(z - lse_i), the value v_j + e_ij and no self loops (dropout slot = CSR slot, §7).
//
// Forward: TransformerRule on the skeleton of forward_kernels.cuh (online softmax, split rows,
// chunk merge); the score is a group reduction over all C channels.
//
// Backward: two passes over the graph, no atomics, bitwise deterministic.
//   CSR pass, a lane group per (destination i, head, channel tile), over the in-edges j of i:
//     D_i = <dout_i, out_i>; per edge recompute z and alpha, dalpha = keep <dout_i, v_j + e_ij>,
//     dz = scale alpha (dalpha - D_i) and w = keep alpha, stored per CSR slot (E x H scratch);
//     dq_i = sum dz (k_j + e_ij); de_ij = dz q_i + w dout_i.
//   CSC pass, a lane group per (source j, head, channel tile), over the out-edges i of j:
//     dk_j = sum dz q_i, dv_j = sum w dout_i, reading the stored dz and w (no dot formed twice).
// Both dots of an edge span all C channels: a group owning one tile of a wide row loops over the
// other tiles for them (as backward_kernels.cuh's CSC pass does). Rows and columns longer than
// the split length (launch.h's SplitPlan, from shapes alone) are cut into chunks that write
// partial dq (dk, dv); sum_chunks_kernel adds a row's partials in chunk order. Per-slot values
// (dz, w, de) are written once, by the item that holds the slot. Dead slots (past rowptr[-1])
// are skipped by the CSC pass and get de = 0 from zero_dead_slots_kernel.
//
// Kernels assume valid input (fastgat/graph.py builds it; csrc/common/checks.h checks shapes).
// Device code only, included by transformer_cuda.cu (nvcc) and by
// csrc/emulated/transformer_emulated.cpp (the SIMT emulator): the launch code lives in
// transformer_launch.h.
#pragma once
#include <algorithm>
#include <cstdint>

#include "backward_kernels.cuh"
#include "forward_kernels.cuh"
#include "gat_cuda.cuh"

namespace fastgat {
namespace cuda {

// The forward's rule (forward_kernels.cuh documents the interface): q, k, v (N, H, C) and e
// (E, H, C) by CSR slot or nullptr.
template <typename T_>
struct TransformerRule {
  using T = T_;
  using A = acc_type<T>;
  static constexpr int VEC = vec_width<T>();
  struct Value {
    Pack<T, VEC> v, e;  // e is zero without edge values
  };
  static constexpr int kMaxRegisters = 255;  // no budget beyond ptxas's own
  static constexpr bool kValueReadsSlot = true;
  const T* q;
  const T* k;
  const T* v;
  const T* e;  // nullptr without edge values
  A scale;

  struct Row {
    A q[VEC];  // this lane's tile-0 channels of q_i
  };
  struct Entry {};
  template <bool ALIGNED>
  __device__ __forceinline__ Row row(const Item& it) const {
    Row r;
    load<ALIGNED>(q + (it.i * it.heads + it.head) * it.channels, it.c_first, it.channels, r.q);
    return r;
  }
  __device__ __forceinline__ Entry entry(const Item&, int64_t, bool) const { return {}; }
  // scale (<q_i, k_j> + <q_i, e_ij>), each dot over every tile (the CPU rule's order).
  template <bool ALIGNED, typename Index>
  __device__ __forceinline__ A logit(const Group& g, const Item& it, const Row& r, Index j,
                                     int64_t slot, const Entry&, bool valid, int n) const {
    const T* q_i = q + (it.i * it.heads + it.head) * it.channels;
    const A z = group_logits<A>(g, n, j, slot, [&](Index src, int64_t src_slot) {
      A dot = lane_dot<ALIGNED>(r.q, q_i,
                                k + (static_cast<int64_t>(src) * it.heads + it.head) * it.channels,
                                it.c_first, it.stride, it.channels);
      if (e != nullptr) {
        dot += lane_dot<ALIGNED>(r.q, q_i, e + (src_slot * it.heads + it.head) * it.channels,
                                 it.c_first, it.stride, it.channels);
      }
      return dot;
    });
    return valid ? scale * z : minus_infinity<A>();
  }
  template <bool ALIGNED, typename Index>
  __device__ __forceinline__ void value(const Item& it, Index j, int64_t slot, Value& x) const {
    load_pack<ALIGNED>(v + (static_cast<int64_t>(j) * it.heads + it.head) * it.channels, it.c0,
                       it.channels, x.v);
    if (e != nullptr) {
      load_pack<ALIGNED>(e + (slot * it.heads + it.head) * it.channels, it.c0, it.channels, x.e);
    } else {
      x.e = Pack<T, VEC>::make([](int) { return T(0); });
    }
  }
  __device__ __forceinline__ static void accumulate(A (&acc)[VEC], A w, const Value& x) {
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
      acc[u] += w * (static_cast<A>(x.v.get(u)) + static_cast<A>(x.e.get(u)));
    }
  }
};

// CSR rows or CSC columns, and the chunks of the long ones (launch.h's SplitPlan).
template <typename Index>
struct Segments {
  const Index* ptr;          // (count + 1) rowptr or colptr
  int64_t count;             // N_dst or N_src
  const int64_t* chunk_ptr;  // (count + 1) first chunk of each; nullptr: nothing splits
  int64_t split_len;
};

template <typename T, typename Index>
struct TransformerBackwardArgs {
  using A = acc_type<T>;
  const T* dout;
  const T* out;
  const A* lse;
  const T* q;
  const T* k;
  const T* v;
  const T* e;  // nullptr without edge values
  const Index* col;
  const Index* csc_row;
  const Index* csc_eid;
  Segments<Index> rows;     // the CSR pass's items
  Segments<Index> columns;  // the CSC pass's items
  A* dz;                    // (E, H) per CSR slot, written by the CSR pass
  A* w;                     // (E, H) keep alpha per CSR slot
  A* part_dq;               // (row chunks, H, C) partial dq of split rows
  A* part_dk;               // (column chunks, H, C) partial dk of split columns
  A* part_dv;               // (column chunks, H, C)
  T* dq;
  T* dk;
  T* dv;
  T* de;  // nullptr without edge values
  int64_t channels, tiles;
  int heads, group_size;
  A scale;
  Dropout dropout;
};

// This lane's share, over all channel tiles, of <q_i, k_j + e> (dot_k) and <dout_i, v_j + e>
// (dot_v); key gets k_j + e on the group's own tile, whose q_i and dout_i are held in q_own and
// dout_own (other tiles are loaded).
template <bool ALIGNED, int VEC, typename T, typename A>
__device__ __forceinline__ void edge_dots(const T* q_i, const T* dout_i, const A (&q_own)[VEC],
                                          const A (&dout_own)[VEC], const T* k_j, const T* v_j,
                                          const T* e_ij, int64_t lane_c, int64_t stride,
                                          int64_t channels, int64_t tiles, int64_t tile,
                                          A& dot_k, A& dot_v, A (&key)[VEC]) {
  dot_k = A(0);
  dot_v = A(0);
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t c = t * stride + lane_c;
    A kx[VEC], vx[VEC];
    load<ALIGNED>(k_j, c, channels, kx);
    load<ALIGNED>(v_j, c, channels, vx);
    if (e_ij != nullptr) {
      A ex[VEC];
      load<ALIGNED>(e_ij, c, channels, ex);
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        kx[u] += ex[u];
        vx[u] += ex[u];
      }
    }
    if (t == tile) {
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        dot_k += q_own[u] * kx[u];
        dot_v += dout_own[u] * vx[u];
        key[u] = kx[u];
      }
    } else {
      A qx[VEC], dx[VEC];
      load<ALIGNED>(q_i, c, channels, qx);
      load<ALIGNED>(dout_i, c, channels, dx);
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        dot_k += qx[u] * kx[u];
        dot_v += dx[u] * vx[u];
      }
    }
  }
}

// One work item of the CSR pass: in-edges [begin, end) of destination i for one head and
// channel tile; chunk >= 0 for a piece of a split row (writes a partial dq), -1 for a whole row.
template <bool ALIGNED, typename T, typename Index>
__device__ __forceinline__ void csr_item(const TransformerBackwardArgs<T, Index>& a,
                                         const Group& g, int64_t i, int head, int64_t tile,
                                         int64_t begin, int64_t end, int64_t chunk) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const int heads = a.heads;
  const int64_t row_head = i * heads + head;
  const int64_t channels = a.channels, stride = static_cast<int64_t>(g.size) * VEC;
  const int64_t lane_c = static_cast<int64_t>(g.lane) * VEC;  // this lane's channels in tile 0
  const int64_t c_own = tile * stride + lane_c;               // ... in the group's tile
  const T* q_i = a.q + row_head * channels;
  const T* dout_i = a.dout + row_head * channels;

  A dout_first[VEC];
  load<ALIGNED>(dout_i, lane_c, channels, dout_first);
  const A D = g.sum(lane_dot<ALIGNED>(dout_first, dout_i, a.out + row_head * channels, lane_c,
                                      stride, channels));
  A q_own[VEC], dout_own[VEC], dq[VEC];
  load<ALIGNED>(q_i, c_own, channels, q_own);
  load<ALIGNED>(dout_i, c_own, channels, dout_own);
#pragma unroll
  for (int u = 0; u < VEC; ++u) dq[u] = A(0);
  const A lse = a.lse[row_head];
  const int64_t row_begin = a.rows.ptr[i];
  const uint64_t seed = a.dropout.seed_value();

  for (int64_t base = begin; base < end; base += g.size) {
    // Lane k fetches entry base + k's source and dropout factor; the group then takes the
    // entries four at a time, all lanes across channels.
    const int64_t my_slot = row_begin + base + g.lane;
    const bool valid = base + g.lane < end;
    Index j = 0;
    A keep = A(0);
    if (valid) {
      j = a.col[my_slot];
      keep = a.dropout.template keep<A>(seed, my_slot, heads, head);
    }
    const int n = static_cast<int>(std::min<int64_t>(g.size, end - base));
    A my_dz = A(0), my_w = A(0);
    for (int e = 0; e < n; e += 4) {
      A dot_k[4], dot_v[4], key[4][VEC];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const Index src = g.broadcast(j, (e + u) & (g.size - 1));
        dot_k[u] = dot_v[u] = A(0);
        if (e + u < n) {
          const int64_t src_head = static_cast<int64_t>(src) * heads + head;
          const int64_t slot = row_begin + base + e + u;
          edge_dots<ALIGNED>(q_i, dout_i, q_own, dout_own, a.k + src_head * channels,
                             a.v + src_head * channels,
                             a.e != nullptr ? a.e + (slot * heads + head) * channels : nullptr,
                             lane_c, stride, channels, a.tiles, tile, dot_k[u], dot_v[u], key[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const A z = a.scale * g.sum(dot_k[u]);
        const A dalpha = g.sum(dot_v[u]);
        const A keep_u = g.broadcast(keep, (e + u) & (g.size - 1));
        if (e + u < n) {
          const A alpha = weight_of(z, lse);
          const A dz = a.scale * alpha * (keep_u * dalpha - D);
          const A w = alpha * keep_u;
#pragma unroll
          for (int v = 0; v < VEC; ++v) dq[v] += dz * key[u][v];
          if (a.de != nullptr) {
            const int64_t slot = row_begin + base + e + u;
            A de[VEC];
#pragma unroll
            for (int v = 0; v < VEC; ++v) de[v] = dz * q_own[v] + w * dout_own[v];
            store<ALIGNED>(a.de + (slot * heads + head) * channels, c_own, channels, de, A(1));
          }
          if (g.lane == e + u) {
            my_dz = dz;
            my_w = w;
          }
        }
      }
    }
    if (valid && tile == 0) {  // one writer per slot: lane k holds entry base + k
      a.dz[my_slot * heads + head] = my_dz;
      a.w[my_slot * heads + head] = my_w;
    }
  }
  if (chunk < 0) {
    store<ALIGNED>(a.dq + row_head * channels, c_own, channels, dq, A(1));
  } else {
    store<false>(a.part_dq + (chunk * heads + head) * channels, c_own, channels, dq, A(1));
  }
}

// One work item of the CSC pass: out-edges [begin, end) of source j for one head and channel
// tile; chunk >= 0 for a piece of a split column (writes partial dk, dv), -1 for a whole one.
template <bool ALIGNED, typename T, typename Index>
__device__ __forceinline__ void csc_item(const TransformerBackwardArgs<T, Index>& a,
                                         const Group& g, int64_t j, int head, int64_t tile,
                                         int64_t begin, int64_t end, int64_t chunk) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const int heads = a.heads;
  const int64_t col_head = j * heads + head;
  const int64_t channels = a.channels;
  const int64_t c_own = (tile * g.size + g.lane) * static_cast<int64_t>(VEC);
  const int64_t col_begin = a.columns.ptr[j];
  const int64_t live = a.rows.ptr[a.rows.count];  // slots past it are dead: never written
  A dk[VEC], dv[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) dk[v] = dv[v] = A(0);
  for (int64_t base = begin; base < end; base += g.size) {
    // Lane k fetches out-edge base + k: its destination and the CSR pass's dz and w.
    Index i = 0;
    A dz = A(0), w = A(0);
    if (base + g.lane < end) {
      const int64_t slot = a.csc_eid[col_begin + base + g.lane];
      if (slot < live) {
        i = a.csc_row[col_begin + base + g.lane];
        dz = a.dz[slot * heads + head];
        w = a.w[slot * heads + head];
      }
    }
    const int n = static_cast<int>(std::min<int64_t>(g.size, end - base));
    for (int e = 0; e < n; e += 4) {
      Index dst[4];
      A dz_u[4], w_u[4];
      Pack<T, VEC> q_u[4], dout_u[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        dst[u] = g.broadcast(i, (e + u) & (g.size - 1));
        dz_u[u] = g.broadcast(dz, (e + u) & (g.size - 1));
        w_u[u] = g.broadcast(w, (e + u) & (g.size - 1));
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        // A zero coefficient adds nothing (and a dead slot has no destination to read).
        if (e + u < n && (dz_u[u] != A(0) || w_u[u] != A(0))) {
          const int64_t dst_head = static_cast<int64_t>(dst[u]) * heads + head;
          load_pack<ALIGNED>(a.q + dst_head * channels, c_own, channels, q_u[u]);
          load_pack<ALIGNED>(a.dout + dst_head * channels, c_own, channels, dout_u[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (e + u < n && (dz_u[u] != A(0) || w_u[u] != A(0))) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            dk[v] += dz_u[u] * static_cast<A>(q_u[u].get(v));
            dv[v] += w_u[u] * static_cast<A>(dout_u[u].get(v));
          }
        }
      }
    }
  }
  if (chunk < 0) {
    store<ALIGNED>(a.dk + col_head * channels, c_own, channels, dk, A(1));
    store<ALIGNED>(a.dv + col_head * channels, c_own, channels, dv, A(1));
  } else {
    store<false>(a.part_dk + (chunk * heads + head) * channels, c_own, channels, dk, A(1));
    store<false>(a.part_dv + (chunk * heads + head) * channels, c_own, channels, dv, A(1));
  }
}

template <bool ALIGNED, bool CSC, typename T, typename Index>
__device__ __forceinline__ void transformer_item(const TransformerBackwardArgs<T, Index>& a,
                                                 const Group& g, int64_t r, int head,
                                                 int64_t tile, int64_t begin, int64_t end,
                                                 int64_t chunk) {
  if constexpr (CSC) {
    csc_item<ALIGNED>(a, g, r, head, tile, begin, end, chunk);
  } else {
    csr_item<ALIGNED>(a, g, r, head, tile, begin, end, chunk);
  }
}

// The CSR pass (CSC = false) or the CSC pass (true): a group per (row, head, tile); rows that
// split are left to transformer_chunk_kernel.
template <bool ALIGNED, bool CSC, typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kOneBlock)
    transformer_row_kernel(const TransformerBackwardArgs<T, Index> a) {
  const Segments<Index>& s = CSC ? a.columns : a.rows;
  const Group g(a.group_size);
  const int64_t per_row = a.heads * a.tiles;
  const int64_t item = g.index();
  if (item >= s.count * per_row) return;
  const int64_t r = item / per_row;
  const int64_t entries = static_cast<int64_t>(s.ptr[r + 1]) - s.ptr[r];
  if (s.chunk_ptr != nullptr && entries > s.split_len) return;
  transformer_item<ALIGNED, CSC>(a, g, r, static_cast<int>(item % per_row / a.tiles),
                                 item % a.tiles, 0, entries, -1);
}

// A group per (chunk, head, tile) of split rows, striding over the chunk count read on the
// device (as forward_kernels.cuh's chunk_kernel).
template <bool ALIGNED, bool CSC, typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kOneBlock)
    transformer_chunk_kernel(const TransformerBackwardArgs<T, Index> a) {
  const Segments<Index>& s = CSC ? a.columns : a.rows;
  const Group g(a.group_size);
  const int64_t per_row = a.heads * a.tiles;
  const int64_t items = s.chunk_ptr[s.count] * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kBlock / g.size);
  for (int64_t item = g.index(); item < items; item += stride) {
    const int64_t chunk = item / per_row;
    const int64_t r = row_of_chunk(s.chunk_ptr, s.count, chunk);
    const int64_t entries = static_cast<int64_t>(s.ptr[r + 1]) - s.ptr[r];
    const int64_t begin = (chunk - s.chunk_ptr[r]) * s.split_len;
    transformer_item<ALIGNED, CSC>(a, g, r, static_cast<int>(item % per_row / a.tiles),
                                   item % a.tiles, begin, std::min(begin + s.split_len, entries),
                                   chunk);
  }
}

// out[r] = the sum of row r's partials part[chunk] (width values each) in chunk order, for the
// split rows r: a thread per (chunk, value), striding over the chunk count on the device; the
// thread of a row's first chunk adds (deterministic).
template <typename T>
__global__ void sum_chunks_kernel(const acc_type<T>* __restrict__ part,
                                  const int64_t* __restrict__ chunk_ptr, int64_t count,
                                  int64_t width, T* __restrict__ out) {
  using A = acc_type<T>;
  const int64_t work = chunk_ptr[count] * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < work;
       index += stride) {
    const int64_t c = index % width, chunk = index / width;
    const int64_t r = row_of_chunk(chunk_ptr, count, chunk);
    if (chunk != chunk_ptr[r]) continue;
    A sum = A(0);
    for (int64_t q = chunk; q < chunk_ptr[r + 1]; ++q) sum += part[q * width + c];
    out[r * width + c] = static_cast<T>(sum);
  }
}

}  // namespace cuda
}  // namespace fastgat
