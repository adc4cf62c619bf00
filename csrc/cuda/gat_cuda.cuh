// Device helpers shared by the fused CUDA kernels (forward_kernels.cuh, backward_kernels.cuh).
//
// Work unit: a *lane group* of G = 1..32 lanes (a power of two, from C) owns one (row, head)
// and spans a tile of G * VEC channels, each lane VEC consecutive channels read with one
// 16-byte load. Several groups share a warp when H * C is small; groups never straddle a warp,
// so shuffles name only the group's lanes. Accumulation is in A = acc_type<T>
// (float for half / bfloat16 / float, double for double).
#pragma once
#include "../common/accumulate.h"

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../common/philox.h"

namespace fastgat {
namespace cuda {

constexpr int kBlock = 256;  // threads per block, a multiple of 32
// Blocks per SM GAT's backward kernels are built for (__launch_bounds__(kBlock, kMinBlocks)):
// up to 128 registers a thread. Without a minimum, ptxas spilled csc kernels that need a little
// over 80 registers down to that occupancy step (benchmarks/RESULTS.md, ptxas section).
constexpr int kMinBlocks = 2;
// GATv2's and TransformerConv's backward kernels need up to 177 registers: they are built for
// one block (__launch_bounds__(kBlock, kOneBlock)), which stopped ptxas spilling them down to
// 128 or 80 registers.
constexpr int kOneBlock = 1;

// Elements per 16-byte vector.
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

// Lanes per group for `channels` channels, `vec` per lane: the smallest power of two that
// covers a row, at most a warp.
inline int group_size(int64_t channels, int vec) {
  int size = 1;
  while (size < 32 && static_cast<int64_t>(size) * vec < channels) size *= 2;
  return size;
}

// Channel tiles a row spans (at least one, so heads with C = 0 still get a group).
inline int64_t channel_tiles(int64_t channels, int size, int vec) {
  const int64_t tile = static_cast<int64_t>(size) * vec;
  return channels == 0 ? 1 : (channels + tile - 1) / tile;
}

struct Group {
  int size;       // lanes in the group
  int lane;       // this lane's rank in it
  unsigned mask;  // the group's lanes in the warp

  __device__ explicit Group(int size_) : size(size_) {
    const int warp_lane = static_cast<int>(threadIdx.x & 31);
    lane = warp_lane & (size - 1);
    mask = size == 32 ? 0xffffffffu : ((1u << size) - 1u) << (warp_lane - lane);
  }

  // Index of this lane's group in the grid (int64: N * H * tiles may pass 2^31).
  __device__ int64_t index() const {
    return static_cast<int64_t>(blockIdx.x) * (kBlock / size) + threadIdx.x / size;
  }

  template <typename V>
  __device__ V sum(V v) const {
    for (int offset = size >> 1; offset > 0; offset >>= 1)
      v += __shfl_xor_sync(mask, v, offset, size);
    return v;
  }

  template <typename V>
  __device__ V max(V v) const {
    for (int offset = size >> 1; offset > 0; offset >>= 1) {
      const V other = __shfl_xor_sync(mask, v, offset, size);
      v = other > v ? other : v;
    }
    return v;
  }

  template <typename V>
  __device__ V broadcast(V v, int src) const {
    return __shfl_sync(mask, v, src, size);
  }
};

// VEC elements of T in one 16-byte vector. 16-bit elements are held two to a 32-bit word:
// ptxas gives every 16-bit value a 32-bit register of its own, so a pack of 8 bfloat16 held as
// T would take 8 registers instead of 4. get(k) is element k; make(f) the pack of f(0..VEC).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  static constexpr bool kPaired = sizeof(T) == 2;
  using Word = std::conditional_t<kPaired, uint32_t, T>;
  Word w[kPaired ? VEC / 2 : VEC];

  __device__ __forceinline__ T get(int k) const {
    if constexpr (kPaired) {
      return T(static_cast<uint16_t>(w[k / 2] >> (16 * (k % 2))), T::from_bits());
    } else {
      return w[k];
    }
  }
  template <typename F>
  __device__ __forceinline__ static Pack make(const F& f) {
    Pack pack;
#pragma unroll
    for (int k = 0; k < (kPaired ? VEC / 2 : VEC); ++k) {
      if constexpr (kPaired) {
        const T lo = f(2 * k), hi = f(2 * k + 1);
        pack.w[k] = static_cast<uint32_t>(lo.x) | static_cast<uint32_t>(hi.x) << 16;
      } else {
        pack.w[k] = f(k);
      }
    }
    return pack;
  }
};

// pack = row[c0 .. c0 + VEC) in T, zeros past C. ALIGNED: C % VEC == 0 and row is 16-byte
// aligned, so a vector is wholly in range or wholly out and loads in one instruction. Kept in T
// until used: four 16-bit rows in flight then take half the registers they would as float.
template <bool ALIGNED, int VEC, typename T>
__device__ __forceinline__ void load_pack(const T* __restrict__ row, int64_t c0, int64_t channels,
                                          Pack<T, VEC>& pack) {
  if (ALIGNED) {
    pack = c0 < channels ? *reinterpret_cast<const Pack<T, VEC>*>(row + c0)
                         : Pack<T, VEC>::make([](int) { return T(0); });
  } else {
    pack = Pack<T, VEC>::make([&](int v) { return c0 + v < channels ? row[c0 + v] : T(0); });
  }
}
// x[0..VEC) = row[c0 .. c0 + VEC) as A, zeros past C (as load_pack).
template <bool ALIGNED, int VEC, typename T, typename A>
__device__ __forceinline__ void load(const T* __restrict__ row, int64_t c0, int64_t channels,
                                     A (&x)[VEC]) {
  Pack<T, VEC> pack;
  load_pack<ALIGNED>(row, c0, channels, pack);
#pragma unroll
  for (int v = 0; v < VEC; ++v) x[v] = static_cast<A>(pack.get(v));
}
// row[c0 .. c0 + VEC) = x * scale, skipping channels past C.
template <bool ALIGNED, int VEC, typename T, typename A>
__device__ __forceinline__ void store(T* __restrict__ row, int64_t c0, int64_t channels,
                                      const A (&x)[VEC], A scale) {
  if (ALIGNED) {
    if (c0 < channels) {
      *reinterpret_cast<Pack<T, VEC>*>(row + c0) =
          Pack<T, VEC>::make([&](int v) { return static_cast<T>(x[v] * scale); });
    }
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      if (c0 + v < channels) row[c0 + v] = static_cast<T>(x[v] * scale);
  }
}

// sum over this lane's channels, all tiles, of x[c] * row[c]; x_first holds tile 0 of x.
template <bool ALIGNED, int VEC, typename T, typename A>
__device__ __forceinline__ A lane_dot(const A (&x_first)[VEC], const T* x, const T* row,
                                      int64_t c0, int64_t stride, int64_t channels) {
  A y[VEC];
  load<ALIGNED>(row, c0, channels, y);
  A dot = A(0);
#pragma unroll
  for (int v = 0; v < VEC; ++v) dot += x_first[v] * y[v];
  for (int64_t c = c0 + stride; c < channels; c += stride) {
    A xs[VEC];
    load<ALIGNED>(x, c, channels, xs);
    load<ALIGNED>(row, c, channels, y);
#pragma unroll
    for (int v = 0; v < VEC; ++v) dot += xs[v] * y[v];
  }
  return dot;
}

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

template <typename A>
__device__ __forceinline__ A minus_infinity() {
  return -std::numeric_limits<A>::infinity();
}

template <typename A>
__device__ __forceinline__ A leaky_relu(A z, A slope) {
  return z > A(0) ? z : z * slope;
}

// Softmax weight exp(x - lse) of a score x; a score of -inf weighs 0 even in a row whose every
// score is -inf (lse = -inf), which the forward leaves empty (out = 0).
template <typename A>
__device__ __forceinline__ A weight_of(A x, A lse) {
  return x == minus_infinity<A>() ? A(0) : exp_(x - lse);
}

// Splitting long rows (the forward, over CSR rows) and long columns (the backward, over CSC
// columns) into chunks of split_len entries; entry counts include node i's self loop.
// chunk_ptr[i + 1] = chunks of row i if it splits (more than split_len entries), else 0.
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

// Dropout of fastgat/dropout.py: 0 or 1 / (1 - p) for weight `slot * H + head`; 1 without.
struct Dropout {
  const int64_t* seed;  // device tensor, read in the kernel: no host sync
  uint32_t threshold;
  double inv_keep;
  bool enabled;

  template <typename A>
  __device__ __forceinline__ A keep(uint64_t seed_value, int64_t slot, int heads, int head) const {
    if (!enabled) return A(1);
    const uint64_t index = static_cast<uint64_t>(slot) * heads + head;
    return static_cast<A>(dropout_scale(seed_value, index, threshold, 1.0f)) *
           static_cast<A>(inv_keep);
  }

  __device__ __forceinline__ uint64_t seed_value() const {
    return enabled ? static_cast<uint64_t>(*seed) : 0;
  }
};

// GAT's scores s, d, t, t_loop (Elem = const T) and their gradients (Elem = T): T, or float
// beside bfloat16 / float16 T (the op contract, docs/design.md §4), read and written in A.
// Which one is a field, uniform over a launch, not a template parameter: the kernels are
// compiled once per T whatever the score dtype.
template <typename Elem, typename Wide = std::conditional_t<std::is_const_v<Elem>, const float,
                                                              float>>
struct ScoreArray {
  using T = std::remove_const_t<Elem>;
  using A = acc_type<T>;
  static constexpr bool kMayWiden = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;
  Elem* narrow;  // scores of T, or nullptr
  Wide* wide;    // float scores beside 16-bit T, or nullptr

  __host__ __device__ bool present() const {
    if constexpr (kMayWiden) return narrow != nullptr || wide != nullptr;
    return narrow != nullptr;
  }
  __device__ __forceinline__ A operator[](int64_t k) const {
    if constexpr (kMayWiden) {
      if (wide != nullptr) return wide[k];
    }
    return static_cast<A>(narrow[k]);
  }
  __device__ __forceinline__ void store(int64_t k, A v) const {
    if constexpr (kMayWiden) {
      if (wide != nullptr) {
        wide[k] = v;
        return;
      }
    }
    narrow[k] = static_cast<T>(v);
  }
};

}  // namespace cuda
}  // namespace fastgat
