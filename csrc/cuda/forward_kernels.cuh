// Fused GAT forward on CUDA (docs/design.md §2, §6): per destination row and head, one pass over the
// in-edges with an online softmax; writes only out (N_dst, H, C) and lse (N_dst, H).
//
// Entries of row i: its CSR slots rowptr[i] .. rowptr[i+1]), then its implicit self loop
// (i < num_loops: source i, dropout slot E + i, score t_loop[i]).
//
// Degree skew without a host sync: a lane group takes a whole row when the row has at most
// L entries, L = max(256, min(4 * average entries per row, entries / (8 * SMs))) from shapes
// alone (the second term gives a few huge rows work for every SM). Longer rows are cut into
// chunks of L, each chunk a work item of its own that writes a partial (out, lse) state; a
// merge kernel combines a row's chunks in chunk order (deterministic). When E + 1 <= L no row
// can split and only the row kernel runs. Otherwise which rows split is read on the device: a
// small kernel counts chunks per row, a device cumsum numbers them, and the partials are sized
// for ceil(2 (E + num_loops) / L) >= the true count (a row of n > L entries has
// ceil(n / L) < 2 n / L chunks). The chunk and merge kernels run on at most one wave of blocks
// and stride over the chunk count read on the device, so where nothing splits they exit at once.
// Kernels assume valid input (fastgat/graph.py builds it; csrc/common/checks.h checks shapes).
// Device code only, included by gat_cuda.cu (nvcc) and by csrc/emulated/gat_emulated.cpp (the
// host compiler with the SIMT emulator): the launch code lives in launch.h.
#pragma once
#include <algorithm>
#include <cstdint>

#include "gat_cuda.cuh"

namespace fastgat {
namespace cuda {

template <typename T, typename Index>
struct ForwardArgs {
  using A = at::opmath_type<T>;
  const T* h;
  const T* s;
  const T* d;
  const T* t;       // nullptr without edge scores
  const T* t_loop;  // nullptr without loop scores
  const Index* rowptr;
  const Index* col;
  T* out;
  A* lse;
  A* part_out;               // (chunks, H, C) partial outputs of split rows
  A* part_lse;               // (chunks, H)
  const int64_t* chunk_ptr;  // (N_dst + 1) first chunk of each row; nullptr: nothing splits
  int64_t num_dst, num_slots, num_loops, split_len, channels;
  int heads, group_size;
  int64_t tiles;
  A slope;
  Dropout dropout;
};

// One work item: entries [begin, end) of row i for one head and channel tile; chunk >= 0 for a
// piece of a split row (writes a partial), -1 for a whole row (writes out and lse).
template <bool ALIGNED, typename T, typename Index>
__device__ __forceinline__ void forward_item(const ForwardArgs<T, Index>& a, const Group& g,
                                             int64_t i, int head, int64_t tile, int64_t begin,
                                             int64_t end, int64_t chunk) {
  using A = at::opmath_type<T>;
  constexpr int VEC = vec_width<T>();
  const int heads = a.heads;
  const int64_t row_begin = a.rowptr[i];
  const int64_t degree = static_cast<int64_t>(a.rowptr[i + 1]) - row_begin;
  const A d_i = static_cast<A>(a.d[i * heads + head]);
  const uint64_t seed = a.dropout.seed_value();
  const int64_t c0 = tile * g.size * VEC + static_cast<int64_t>(g.lane) * VEC;

  // Entry q of the row: source j, dropout slot and edge score; q == degree is the self loop.
  auto fetch = [&](int64_t q, Index& j, int64_t& slot, A& t_q) {
    if (q < degree) {
      slot = row_begin + q;
      j = a.col[slot];
      t_q = a.t != nullptr ? static_cast<A>(a.t[slot * heads + head]) : A(0);
    } else {
      slot = a.num_slots + i;
      j = static_cast<Index>(i);
      t_q = a.t_loop != nullptr ? static_cast<A>(a.t_loop[i * heads + head]) : A(0);
    }
  };

  A m = minus_infinity<A>(), l = A(0), acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) acc[v] = A(0);

  // Lane k scores entry base + k; the next chunk's col and t are fetched before this chunk's
  // gather so their latency hides behind it.
  Index j = 0;
  int64_t slot = 0;
  A t_q = A(0);
  bool valid = begin + g.lane < end;
  if (valid) fetch(begin + g.lane, j, slot, t_q);
  for (int64_t base = begin; base < end; base += g.size) {
    A x = valid ? leaky_relu(static_cast<A>(a.s[static_cast<int64_t>(j) * heads + head]) + d_i + t_q,
                             a.slope)
                : minus_infinity<A>();
    const A keep = valid ? a.dropout.template keep<A>(seed, slot, heads, head) : A(0);
    const Index j_now = j;

    const int64_t next = base + g.size + g.lane;
    valid = next < end;
    if (valid) fetch(next, j, slot, t_q);

    const A m_new = g.max(m > x ? m : x);
    const A rescale = m == m_new ? A(1) : exp_(m - m_new);  // m = m_new = -inf: no NaN
    const A p = x == minus_infinity<A>() ? A(0) : exp_(x - m_new);
    l = l * rescale + g.sum(p);
    m = m_new;
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] *= rescale;

    // Gather: four source rows in flight per step, lanes across channels.
    const A w = p * keep;
    const int n = static_cast<int>(std::min<int64_t>(g.size, end - base));
    for (int e = 0; e < n; e += 4) {
      Index src[4];
      A weight[4];
      Pack<T, VEC> x_src[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        src[u] = g.broadcast(j_now, (e + u) & (g.size - 1));
        weight[u] = g.broadcast(w, (e + u) & (g.size - 1));
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (e + u < n) {
          load_pack<ALIGNED>(a.h + (static_cast<int64_t>(src[u]) * heads + head) * a.channels,
                             c0, a.channels, x_src[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (e + u < n) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[v] += weight[u] * static_cast<A>(x_src[u].v[v]);
        }
      }
    }
  }

  // l = 0 (no entry, or every score -inf): out = 0, lse = -inf.
  const A lse = l > A(0) ? m + log_(l) : minus_infinity<A>();
  const A scale = l > A(0) ? A(1) / l : A(0);
  if (chunk < 0) {
    store<ALIGNED>(a.out + (i * heads + head) * a.channels, c0, a.channels, acc, scale);
    if (tile == 0 && g.lane == 0) a.lse[i * heads + head] = lse;
  } else {
    store<false>(a.part_out + (chunk * heads + head) * a.channels, c0, a.channels, acc, scale);
    if (tile == 0 && g.lane == 0) a.part_lse[chunk * heads + head] = lse;
  }
}

// A group per (row, head, tile); rows that split are left to chunk_kernel.
template <bool ALIGNED, typename T, typename Index>
__global__ void __launch_bounds__(kBlock) row_kernel(const ForwardArgs<T, Index> a) {
  const Group g(a.group_size);
  const int64_t per_row = a.heads * a.tiles;
  const int64_t item = g.index();
  if (item >= a.num_dst * per_row) return;
  const int64_t i = item / per_row;
  const int64_t entries = static_cast<int64_t>(a.rowptr[i + 1]) - a.rowptr[i] + (i < a.num_loops);
  if (a.chunk_ptr != nullptr && entries > a.split_len) return;
  forward_item<ALIGNED>(a, g, i, static_cast<int>(item % per_row / a.tiles), item % a.tiles, 0,
                        entries, -1);
}

// A group per (chunk, head, tile), striding over the chunk count read on the device. A kernel
// of its own so that its loop state does not raise row_kernel's register count.
template <bool ALIGNED, typename T, typename Index>
__global__ void __launch_bounds__(kBlock) chunk_kernel(const ForwardArgs<T, Index> a) {
  const Group g(a.group_size);
  const int64_t per_row = a.heads * a.tiles;
  const int64_t items = a.chunk_ptr[a.num_dst] * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kBlock / g.size);
  for (int64_t item = g.index(); item < items; item += stride) {
    const int64_t chunk = item / per_row;
    const int64_t i = row_of_chunk(a.chunk_ptr, a.num_dst, chunk);
    const int64_t entries = static_cast<int64_t>(a.rowptr[i + 1]) - a.rowptr[i] + (i < a.num_loops);
    const int64_t begin = (chunk - a.chunk_ptr[i]) * a.split_len;
    forward_item<ALIGNED>(a, g, i, static_cast<int>(item % per_row / a.tiles), item % a.tiles,
                          begin, std::min(begin + a.split_len, entries), chunk);
  }
}

// A thread per (chunk, head, channel), striding over the chunk count on the device; the
// thread of a row's first chunk merges the row's chunks in order: out = sum_c out_c
// exp(lse_c - lse), lse = logsumexp_c lse_c. Chunks with lse_c = -inf (l = 0) weigh 0, and a
// row without a finite score keeps out = 0, lse = -inf.
template <typename T>
__global__ void merge_kernel(const at::opmath_type<T>* __restrict__ part_out,
                             const at::opmath_type<T>* __restrict__ part_lse,
                             const int64_t* __restrict__ chunk_ptr, int64_t num_dst, int heads,
                             int64_t channels, T* __restrict__ out,
                             at::opmath_type<T>* __restrict__ lse) {
  using A = at::opmath_type<T>;
  const int64_t width = std::max<int64_t>(channels, 1);
  const int64_t work = chunk_ptr[num_dst] * heads * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < work;
       index += stride) {
    const int64_t c = index % width, chunk_head = index / width;
    const int64_t chunk = chunk_head / heads, head = chunk_head % heads;
    const int64_t i = row_of_chunk(chunk_ptr, num_dst, chunk);
    const int64_t first = chunk_ptr[i], last = chunk_ptr[i + 1];
    if (chunk != first) continue;
    A m = minus_infinity<A>();
    for (int64_t q = first; q < last; ++q) {
      const A lse_q = part_lse[q * heads + head];
      m = lse_q > m ? lse_q : m;
    }
    A l = A(0), acc = A(0);
    for (int64_t q = first; q < last; ++q) {
      const A lse_q = part_lse[q * heads + head];
      const A weight = lse_q == minus_infinity<A>() ? A(0) : exp_(lse_q - m);
      l += weight;
      if (c < channels) acc += weight * part_out[(q * heads + head) * channels + c];
    }
    const int64_t row_head = i * heads + head;
    if (c < channels) out[row_head * channels + c] = static_cast<T>(l > A(0) ? acc / l : A(0));
    if (c == 0) lse[row_head] = l > A(0) ? m + log_(l) : minus_infinity<A>();
  }
}

}  // namespace cuda
}  // namespace fastgat
