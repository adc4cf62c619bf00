// Fused GAT backward on CUDA (docs/design.md §2): one gather of the E x H x C stream, no
// atomics, bitwise deterministic.
//
//   dot kernel, a lane group per (destination i, head):  D_i = <dout_i, out_i>.
//   CSC pass, a lane group per (source j, head, channel tile), over the out-edges i of j:
//     dz = alpha (keep <dout_i, h_j> - D_i) * (z > 0 ? 1 : slope), written per CSR slot (and
//     to dt / dt_loop); ds_j = sum dz; dh_j = sum alpha keep dout_i.
//   row-sum kernel, a lane group per (destination i, head):  dd_i = sum of dz over row i.
// alpha = exp(LeakyReLU(z) - lse_i) with z = s_j + d_i + t_ij; the self loop of node i < num_loops
// is the last entry of row i (and of column i), with dropout slot E + i and score t_loop[i].
// Each edge's <dout_i, h_j> spans all C channels: a group loops over the channel tiles, so for
// C beyond one tile (32 vectors: 128 float, 256 half) the CSC pass repeats that dot per tile.
// Columns longer than the split length (as in the forward, from shapes alone) are cut into
// chunks that write partial (dh, ds); csc_merge_kernel adds a column's partials in order.
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
struct BackwardArgs {
  using A = acc_type<T>;
  const T* dout;
  const T* out;
  const A* lse;
  const T* h;
  ScoreArray<const T> s;
  ScoreArray<const T> d;
  ScoreArray<const T> t;       // absent without edge scores
  ScoreArray<const T> t_loop;  // absent without loop scores
  const Index* rowptr;
  const Index* col;
  const Index* colptr;
  const Index* csc_row;
  const Index* csc_eid;
  A* D;        // (N_dst, H): written by dot_kernel, read by the CSC pass
  A* dz;       // (E, H): dz per CSR slot, written by the CSC pass, summed per row for dd
  A* dz_loop;  // (num_loops, H): dz of the self loops
  A* part_dh;                // (chunks, H, C) partial dh of split columns
  A* part_ds;                // (chunks, H)
  const int64_t* chunk_ptr;  // (N_src + 1) first chunk of each column; nullptr: nothing splits
  int64_t split_len;
  T* dh;
  ScoreArray<T> ds;
  ScoreArray<T> dd;
  ScoreArray<T> dt;       // absent without edge scores
  ScoreArray<T> dt_loop;  // absent without loop scores
  int64_t num_src, num_dst, num_slots, num_loops, channels, tiles;
  int heads, group_size;
  A slope;
  Dropout dropout;
};

// D_i = <dout_i, out_i> per (row, head): the softmax's Jacobian term, a dense product.
template <bool ALIGNED, typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kMinBlocks) dot_kernel(const BackwardArgs<T, Index> a) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const Group g(a.group_size);
  const int64_t row_head = g.index();
  if (row_head >= a.num_dst * a.heads) return;
  const int64_t channels = a.channels, stride = static_cast<int64_t>(g.size) * VEC;
  const int64_t c0 = static_cast<int64_t>(g.lane) * VEC;
  const T* dout_i = a.dout + row_head * channels;
  A dout_first[VEC];
  load<ALIGNED>(dout_i, c0, channels, dout_first);
  const A D = g.sum(lane_dot<ALIGNED>(dout_first, dout_i, a.out + row_head * channels, c0, stride,
                                      channels));
  if (g.lane == 0) a.D[row_head] = D;
}

// Lanes per (row, head) of row_sum_kernel: rows are short on average, hubs are strided.
constexpr int kRowSumLanes = 8;

// dd_i = sum of dz over row i's slots and its self loop, in a fixed order (lane strides, then
// a shuffle tree): deterministic.
template <typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    row_sum_kernel(const BackwardArgs<T, Index> a) {
  using A = acc_type<T>;
  const Group g(kRowSumLanes);
  const int64_t row_head = g.index();
  if (row_head >= a.num_dst * a.heads) return;
  const int heads = a.heads;
  const int64_t i = row_head / heads;
  const int head = static_cast<int>(row_head % heads);
  const int64_t row_end = a.rowptr[i + 1];
  A dd = A(0);
  for (int64_t k = a.rowptr[i] + g.lane; k < row_end; k += g.size) dd += a.dz[k * heads + head];
  if (g.lane == 0 && i < a.num_loops) dd += a.dz_loop[row_head];
  dd = g.sum(dd);
  if (g.lane == 0) a.dd.store(row_head, dd);
}

// One work item of the CSC pass: out-edges [begin, end) of source j for one head and channel
// tile; chunk >= 0 for a piece of a split column (writes a partial dh, ds), -1 for a whole one.
template <bool ALIGNED, typename T, typename Index>
__device__ __forceinline__ void csc_item(const BackwardArgs<T, Index>& a, const Group& g,
                                         int64_t j, int head, int64_t tile, int64_t begin,
                                         int64_t end, int64_t chunk) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const int heads = a.heads;
  const int64_t col_head = j * heads + head;
  const int64_t channels = a.channels, stride = static_cast<int64_t>(g.size) * VEC;
  const int64_t c_own = tile * stride + static_cast<int64_t>(g.lane) * VEC;  // this group's tile
  const int64_t c0 = static_cast<int64_t>(g.lane) * VEC;                     // tile 0
  const T* h_j = a.h + col_head * channels;

  A h_first[VEC];
  load<ALIGNED>(h_j, c0, channels, h_first);
  const int64_t col_begin = a.colptr[j];
  const int64_t degree = static_cast<int64_t>(a.colptr[j + 1]) - col_begin;
  const A s_j = a.s[col_head];
  const uint64_t seed = a.dropout.seed_value();
  A dh[VEC], ds = A(0);
#pragma unroll
  for (int v = 0; v < VEC; ++v) dh[v] = A(0);
  // Out-edges as 32-bit offsets q from begin (end - begin <= split_len < 2^31, see SplitPlan
  // in launch.h): q < csc is CSC entry first + q, q == csc the self loop j -> j.
  const int64_t first = col_begin + begin;
  const int count = static_cast<int>(end - begin);
  const int csc = static_cast<int>(std::min(degree - begin, end - begin));
  for (int base = 0; base < count; base += g.size) {
    const int q = base + g.lane;
    const bool valid = q < count;
    Index i = 0;
    int64_t slot = 0;
    A t_q = A(0), z = A(0), alpha = A(0), keep = A(0), D = A(0);
    if (valid && q < csc) {
      i = a.csc_row[first + q];
      slot = a.csc_eid[first + q];
      if (a.t.present()) t_q = a.t[slot * heads + head];
    } else if (valid) {
      i = static_cast<Index>(j);
      slot = a.num_slots + j;
      if (a.t_loop.present()) t_q = a.t_loop[col_head];
    }
    if (valid) {
      const int64_t row_head = static_cast<int64_t>(i) * heads + head;
      z = s_j + a.d[row_head] + t_q;
      alpha = weight_of(leaky_relu(z, a.slope), a.lse[row_head]);
      keep = a.dropout.template keep<A>(seed, slot, heads, head);
      D = a.D[row_head];
    }
    const A w = alpha * keep;

    // Per out-edge: <dout_i, h_j> over all channels, and dh_j += w dout_i on this group's tile.
    const int n = std::min(g.size, count - base);
    A my_dot = A(0);
    for (int e = 0; e < n; e += 4) {
      A part[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const Index dst = g.broadcast(i, (e + u) & (g.size - 1));
        const A weight = g.broadcast(w, (e + u) & (g.size - 1));
        part[u] = A(0);
        if (e + u < n) {
          const T* dout_i = a.dout + (static_cast<int64_t>(dst) * heads + head) * channels;
          part[u] = lane_dot<ALIGNED>(h_first, h_j, dout_i, c0, stride, channels);
          A x[VEC];
          load<ALIGNED>(dout_i, c_own, channels, x);
#pragma unroll
          for (int v = 0; v < VEC; ++v) dh[v] += weight * x[v];
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const A dot = g.sum(part[u]);
        if (g.lane == e + u) my_dot = dot;
      }
    }
    const A dz = alpha * (keep * my_dot - D) * (z > A(0) ? A(1) : a.slope);
    if (valid && tile == 0) {  // one writer per entry: lane k holds entry base + k
      if (q < csc) {
        const int64_t slot = a.csc_eid[first + q];  // reloaded: not held across the gather
        a.dz[slot * heads + head] = dz;
        if (a.dt.present()) a.dt.store(slot * heads + head, dz);
      } else {
        a.dz_loop[col_head] = dz;
        if (a.dt_loop.present()) a.dt_loop.store(col_head, dz);
      }
    }
    ds += g.sum(dz);
  }
  if (chunk < 0) {
    store<ALIGNED>(a.dh + col_head * channels, c_own, channels, dh, A(1));
    if (tile == 0 && g.lane == 0) a.ds.store(col_head, ds);
  } else {
    store<false>(a.part_dh + (chunk * heads + head) * channels, c_own, channels, dh, A(1));
    if (tile == 0 && g.lane == 0) a.part_ds[chunk * heads + head] = ds;
  }
}

// A group per (source, head, tile); columns that split are left to csc_chunk_kernel.
template <bool ALIGNED, typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kMinBlocks) csc_kernel(const BackwardArgs<T, Index> a) {
  const Group g(a.group_size);
  const int64_t per_col = a.heads * a.tiles;
  const int64_t item = g.index();
  if (item >= a.num_src * per_col) return;
  const int64_t j = item / per_col;
  const int64_t entries = static_cast<int64_t>(a.colptr[j + 1]) - a.colptr[j] + (j < a.num_loops);
  if (a.chunk_ptr != nullptr && entries > a.split_len) return;
  csc_item<ALIGNED>(a, g, j, static_cast<int>(item % per_col / a.tiles), item % a.tiles, 0,
                    entries, -1);
}

// A group per (chunk, head, tile) of split columns, striding over the chunk count read on the
// device (as forward_kernels.cuh's chunk_kernel).
template <bool ALIGNED, typename T, typename Index>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    csc_chunk_kernel(const BackwardArgs<T, Index> a) {
  const Group g(a.group_size);
  const int64_t per_col = a.heads * a.tiles;
  const int64_t items = a.chunk_ptr[a.num_src] * per_col;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kBlock / g.size);
  for (int64_t item = g.index(); item < items; item += stride) {
    const int64_t chunk = item / per_col;
    const int64_t j = row_of_chunk(a.chunk_ptr, a.num_src, chunk);
    const int64_t entries = static_cast<int64_t>(a.colptr[j + 1]) - a.colptr[j] + (j < a.num_loops);
    const int64_t begin = (chunk - a.chunk_ptr[j]) * a.split_len;
    csc_item<ALIGNED>(a, g, j, static_cast<int>(item % per_col / a.tiles), item % a.tiles,
                      begin, std::min(begin + a.split_len, entries), chunk);
  }
}

// A thread per (chunk, head, channel), striding over the chunk count on the device; the thread
// of a column's first chunk adds the column's partials in chunk order (deterministic).
template <typename T, typename Index>
__global__ void csc_merge_kernel(const BackwardArgs<T, Index> a) {
  using A = acc_type<T>;
  const int heads = a.heads;
  const int64_t channels = a.channels, width = std::max<int64_t>(channels, 1);
  const int64_t work = a.chunk_ptr[a.num_src] * heads * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < work;
       index += stride) {
    const int64_t c = index % width, chunk_head = index / width;
    const int64_t chunk = chunk_head / heads, head = chunk_head % heads;
    const int64_t j = row_of_chunk(a.chunk_ptr, a.num_src, chunk);
    const int64_t first = a.chunk_ptr[j], last = a.chunk_ptr[j + 1];
    if (chunk != first) continue;
    A dh = A(0), ds = A(0);
    for (int64_t q = first; q < last; ++q) {
      if (c < channels) dh += a.part_dh[(q * heads + head) * channels + c];
      ds += a.part_ds[q * heads + head];
    }
    const int64_t col_head = j * heads + head;
    if (c < channels) a.dh[col_head * channels + c] = static_cast<T>(dh);
    if (c == 0) a.ds.store(col_head, ds);
  }
}

// Dead CSR slots (dropped self loops, past rowptr[-1]) get a zero gradient (GAT's dt, `width`
// = H; GATv2's de, H * C): read on the device, so a fixed grid strides over the tail without a
// host sync.
template <typename T, typename Index>
__global__ void zero_dead_slots_kernel(const Index* __restrict__ rowptr, int64_t num_dst,
                                       int64_t num_slots, int width, T* __restrict__ dt) {
  const int64_t first = static_cast<int64_t>(rowptr[num_dst]) * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       k < num_slots * width; k += stride)
    dt[k] = T(0);
}

}  // namespace cuda
}  // namespace fastgat
