// Attention dropout's counter-based RNG (fastgat/dropout.py states the rule): the first word of
// Philox4x32-10 keyed by the 64-bit seed, counter = the 64-bit index slot * H + head. The same
// word triton.language.randint returns, so every backend drops the same weights for one seed.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTGAT_HD __host__ __device__ __forceinline__
#else
#define FASTGAT_HD inline
#endif

namespace fastgat {

// Ten Philox rounds on counters (c0, c1, 0, 0), returning word0. U32 is uint32_t for one draw,
// or (on the CPU) a GCC vector of 8 lanes for eight independent draws at once; widen / narrow
// convert to and from the 64-bit products, every other operation is lane-wise.
FASTGAT_HD uint64_t widen(uint32_t x) { return x; }
FASTGAT_HD uint32_t narrow(uint64_t x) { return static_cast<uint32_t>(x); }
#if !defined(__CUDACC__) && defined(__GNUC__)
using u32x8 = uint32_t __attribute__((vector_size(32)));
using u64x8 = uint64_t __attribute__((vector_size(64)));
// Inlined where they are used: -Wpsabi's note on passing vectors by value does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
[[gnu::always_inline]] inline u64x8 widen(u32x8 x) { return __builtin_convertvector(x, u64x8); }
[[gnu::always_inline]] inline u32x8 narrow(u64x8 x) { return __builtin_convertvector(x, u32x8); }
#endif

template <typename U32>
FASTGAT_HD U32 philox_rounds(uint64_t seed, U32 c0, U32 c1) {
  U32 c2 = c0 ^ c0, c3 = c0 ^ c0;  // zeros of the lane type
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const auto p0 = widen(c0) * 0xD2511F53u;
    const auto p2 = widen(c2) * 0xCD9E8D57u;
    const U32 n0 = narrow(p2 >> 32) ^ c1 ^ k0;
    const U32 n2 = narrow(p0 >> 32) ^ c3 ^ k1;
    c1 = narrow(p2);
    c3 = narrow(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}
#if !defined(__CUDACC__) && defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

FASTGAT_HD uint32_t philox_word0(uint64_t seed, uint64_t index) {
  return philox_rounds(seed, static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32));
}

// Threshold on the draw's top 31 bits: fastgat.dropout.threshold(p) = int(p * 2^31).
FASTGAT_HD uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(p * 2147483648.0); }

// 0 for a dropped weight, 1 / (1 - p) for a kept one.
FASTGAT_HD float dropout_scale(uint64_t seed, uint64_t index, uint32_t threshold, float inv_keep) {
  return (philox_word0(seed, index) >> 1) >= threshold ? inv_keep : 0.0f;
}

}  // namespace fastgat
