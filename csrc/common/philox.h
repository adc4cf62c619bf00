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

FASTGAT_HD uint32_t philox_word0(uint64_t seed, uint64_t index) {
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p2 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p2 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p2);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// Threshold on the draw's top 31 bits: fastgat.dropout.threshold(p) = int(p * 2^31).
FASTGAT_HD uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(p * 2147483648.0); }

// 0 for a dropped weight, 1 / (1 - p) for a kept one.
FASTGAT_HD float dropout_scale(uint64_t seed, uint64_t index, uint32_t threshold, float inv_keep) {
  return (philox_word0(seed, index) >> 1) >= threshold ? inv_keep : 0.0f;
}

}  // namespace fastgat
