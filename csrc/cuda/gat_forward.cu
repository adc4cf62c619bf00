// Fused GAT forward on CUDA (DESIGN §2, §4): per destination row and head, one pass over the
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
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/checks.h"
#include "gat_cuda.cuh"

namespace fastgat {
namespace cuda {
namespace {

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

// chunk_ptr[i + 1] = chunks of row i if it splits (more than L entries), else 0.
template <typename Index>
__global__ void count_chunks_kernel(const Index* __restrict__ rowptr, int64_t num_dst,
                                    int64_t num_loops, int64_t split_len,
                                    int64_t* __restrict__ counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i == 0) counts[0] = 0;
  if (i >= num_dst) return;
  const int64_t entries = static_cast<int64_t>(rowptr[i + 1]) - rowptr[i] + (i < num_loops);
  counts[i + 1] = entries > split_len ? (entries + split_len - 1) / split_len : 0;
}

// Row i of a split row's chunk: the r with chunk_ptr[r] <= chunk < chunk_ptr[r + 1].
__device__ __forceinline__ int64_t row_of_chunk(const int64_t* __restrict__ chunk_ptr,
                                                int64_t num_dst, int64_t chunk) {
  int64_t lo = 0, hi = num_dst;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (chunk_ptr[mid] <= chunk) lo = mid; else hi = mid;
  }
  return lo;
}

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
      A weight[4], x_src[4][VEC];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        src[u] = g.broadcast(j_now, (e + u) & (g.size - 1));
        weight[u] = g.broadcast(w, (e + u) & (g.size - 1));
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (e + u < n) {
          load<ALIGNED>(a.h + (static_cast<int64_t>(src[u]) * heads + head) * a.channels, c0,
                        a.channels, x_src[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (e + u < n) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[v] += weight[u] * x_src[u][v];
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

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

constexpr int64_t kWave = 2048 / kBlock;  // blocks per SM at full occupancy

int64_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = ceil_div(work, per_block);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "fastgat: graph too large for one "
              "launch (", blocks, " blocks)");
  return blocks;
}

template <typename T, typename Index>
void launch_forward(const at::Tensor& h, const at::Tensor& s, const at::Tensor& d,
                    const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& t_loop,
                    const at::Tensor& rowptr, const at::Tensor& col, int64_t num_loops,
                    double negative_slope, double dropout, const c10::optional<at::Tensor>& seed,
                    at::Tensor& out, at::Tensor& lse) {
  using A = at::opmath_type<T>;
  constexpr int VEC = vec_width<T>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  ForwardArgs<T, Index> a{};
  a.h = h.data_ptr<T>();
  a.s = s.data_ptr<T>();
  a.d = d.data_ptr<T>();
  a.t = t.has_value() ? t->data_ptr<T>() : nullptr;
  a.t_loop = t_loop.has_value() ? t_loop->data_ptr<T>() : nullptr;
  a.rowptr = rowptr.data_ptr<Index>();
  a.col = col.data_ptr<Index>();
  a.out = out.data_ptr<T>();
  a.lse = lse.data_ptr<A>();
  a.num_dst = out.size(0);
  a.num_slots = col.numel();
  a.num_loops = num_loops;
  a.channels = h.size(2);
  a.heads = static_cast<int>(h.size(1));
  a.group_size = group_size(a.channels, VEC);
  a.tiles = channel_tiles(a.channels, a.group_size, VEC);
  a.slope = static_cast<A>(negative_slope);
  a.dropout = Dropout{dropout > 0.0 ? seed->data_ptr<int64_t>() : nullptr,
                      dropout_threshold(dropout), 1.0 / (1.0 - dropout), dropout > 0.0};

  // Split length and chunk bound from shapes (see the file comment).
  const int64_t entries = a.num_slots + num_loops;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  a.split_len = std::max<int64_t>(
      256, std::min(4 * ceil_div(entries, a.num_dst), ceil_div(entries, 8 * sms)));
  const int64_t max_row_entries = a.num_slots + (num_loops > 0);
  const int64_t chunk_bound = max_row_entries > a.split_len ? ceil_div(2 * entries, a.split_len) : 0;
  at::Tensor chunk_ptr, part_out, part_lse;
  if (chunk_bound > 0) {
    at::Tensor counts = at::empty({a.num_dst + 1}, rowptr.options().dtype(at::kLong));
    count_chunks_kernel<Index><<<blocks_for(a.num_dst, kBlock), kBlock, 0, stream>>>(
        a.rowptr, a.num_dst, num_loops, a.split_len, counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chunk_ptr = counts.cumsum(0);
    const auto acc_options = out.options().dtype(lse.scalar_type());
    part_out = at::empty({chunk_bound, a.heads, a.channels}, acc_options);
    part_lse = at::empty({chunk_bound, a.heads}, acc_options);
    a.chunk_ptr = chunk_ptr.data_ptr<int64_t>();
    a.part_out = part_out.data_ptr<A>();
    a.part_lse = part_lse.data_ptr<A>();
  }

  const bool aligned = a.channels % VEC == 0 && reinterpret_cast<uintptr_t>(a.h) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  const int64_t per_block = kBlock / a.group_size;
  const int64_t row_blocks = blocks_for(a.num_dst * a.heads * a.tiles, per_block);
  if (aligned) {
    row_kernel<true><<<row_blocks, kBlock, 0, stream>>>(a);
  } else {
    row_kernel<false><<<row_blocks, kBlock, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (chunk_bound == 0) return;

  // Chunk groups and merge threads: at most one wave (kWave blocks per SM), striding over the
  // chunks that exist, so where nothing splits they exit at once.
  const int64_t wave = kWave * sms;
  const int64_t chunk_blocks =
      std::min(blocks_for(chunk_bound * a.heads * a.tiles, per_block), wave);
  if (aligned) {
    chunk_kernel<true><<<chunk_blocks, kBlock, 0, stream>>>(a);
  } else {
    chunk_kernel<false><<<chunk_blocks, kBlock, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t threads = chunk_bound * a.heads * std::max<int64_t>(a.channels, 1);
  merge_kernel<T><<<std::min(blocks_for(threads, kBlock), wave), kBlock, 0, stream>>>(
      a.part_out, a.part_lse, a.chunk_ptr, a.num_dst, a.heads, a.channels, a.out, a.lse);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> fused_forward_cuda(
    const at::Tensor& h, const at::Tensor& s, const at::Tensor& d,
    const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& t_loop,
    const at::Tensor& rowptr, const at::Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const c10::optional<at::Tensor>& seed) {
  check_forward_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed);
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t num_dst = rowptr.numel() - 1, heads = h.size(1), channels = h.size(2);
  const auto lse_dtype = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({num_dst, heads, channels}, h.options());
  at::Tensor lse = at::empty({num_dst, heads}, h.options().dtype(lse_dtype));
  if (num_dst == 0 || heads == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "fastgat_forward", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "fastgat_forward", [&] {
      launch_forward<scalar_t, index_t>(h, s, d, t, t_loop, rowptr, col, num_loops,
                                        negative_slope, dropout, seed, out, lse);
    });
  });
  return {out, lse};
}

}  // namespace
}  // namespace cuda
}  // namespace fastgat

TORCH_LIBRARY_IMPL(fastgat, CUDA, m) {
  m.impl("fused_forward", &fastgat::cuda::fused_forward_cuda);
}
