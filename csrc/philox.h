// Stateless Philox4x32-10 counter-based generator (Salmon et al., SC'11, "Parallel random
// numbers: as easy as 1, 2, 3"), written for both host and device so that the CUDA kernel
// and the CPU implementation of hgpso::fused_update_ draw exactly the same stream.
//
// No state is kept anywhere: a block of four 32-bit words is a pure function of a 128-bit
// counter and a 64-bit key. Known-answer vectors (Random123 kat_vectors):
//   ctr 0,0,0,0              key 0,0           -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8
//   ctr ffffffff x4          key ffffffff x2   -> 408f276d 41c83b0e a20bc7c6 6d5451fd
//   ctr 243f6a88 85a308d3 13198a2e 03707344 key a4093822 299f31d0
//                                              -> d16cfe09 94fdcceb 5001e420 24126ea1
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define HGPSO_HD __host__ __device__ __forceinline__
#else
#define HGPSO_HD inline
#endif

namespace hgpso {

struct Philox4 {
  uint32_t w[4];
};

HGPSO_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// Philox4x32 with 10 rounds.
HGPSO_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                               uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kM0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kM1, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// A 32-bit word to a float uniform on [0, 1): the top 24 bits times 2^-24 (exact).
HGPSO_HD float uniform01(uint32_t w) {
  return static_cast<float>(w >> 8) * 5.9604644775390625e-08f;
}

// The random pair of one element. Element e of the flattened call (see hgpso_update.h for
// how e is numbered) uses block q = e / 2 at counter (lo32(q), hi32(q), lo32(offset),
// hi32(offset)) with key (lo32(seed), hi32(seed)); the even element takes words 0 and 1 as
// (r1, r2), the odd one words 2 and 3.
HGPSO_HD Philox4 philox_pair_block(uint64_t q, uint32_t off0, uint32_t off1, uint32_t key0,
                                   uint32_t key1) {
  return philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(q >> 32), off0, off1,
                       key0, key1);
}

}  // namespace hgpso
