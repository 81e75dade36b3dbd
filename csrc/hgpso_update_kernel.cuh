// The body of the fused HG-PSO kernel, as device functions that also compile for the host
// (HGPSO_DEV is `__device__ __forceinline__` under nvcc and plain `inline` elsewhere), so the
// exact kernel code can be emulated on a CPU (csrc/testing/emulate_kernel.cpp) where no GPU
// is available. No PyTorch header.
//
// Layout of a launch: up to kMaxTensorsPerLaunch tensors; block b belongs to the tensor k with
// t[k].tile_begin <= b < t[k+1].tile_begin. Two layouts per tensor (chosen by plan_launches in
// hgpso_update.h):
// * column (aligned tensors whose particle length is a multiple of the vector width and at
//   least one block wide): a block covers tile_columns() columns of kRowsPerBlock particles;
//   each thread loads its g vector once and walks down the particles, so g is read from
//   memory about once instead of once per particle;
// * linear (everything else): a block covers tile_elements() consecutive elements; each
//   thread handles kUnroll 16-byte vectors, interleaved across the block so that a warp's
//   loads are contiguous. Misaligned tensors and the ragged end use scalar loads.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "hgpso_update.h"

#if defined(__CUDACC__)
#define HGPSO_DEV __device__ __forceinline__
#else
#define HGPSO_DEV inline
#endif

namespace hgpso {
namespace kernel {

template <typename T>
struct Conv;
template <>
struct Conv<float> {
  static HGPSO_DEV float load(float a) { return a; }
  static HGPSO_DEV float store(float a) { return a; }
};
template <>
struct Conv<__half> {
  static HGPSO_DEV float load(__half a) { return __half2float(a); }
  static HGPSO_DEV __half store(float a) { return __float2half_rn(a); }
};
template <>
struct Conv<__nv_bfloat16> {
  static HGPSO_DEV float load(__nv_bfloat16 a) { return __bfloat162float(a); }
  static HGPSO_DEV __nv_bfloat16 store(float a) { return __float2bfloat16_rn(a); }
};

template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T e[kSize];
};

// 16-byte loads and stores through Vec<T> itself (an aggregate of T may alias T; punning
// through an unrelated type such as uint4 would break strict aliasing, and did on the host).
template <typename T>
HGPSO_DEV void load_vec(const void* base, int64_t i, float* out) {
  const Vec<T> v = *reinterpret_cast<const Vec<T>*>(static_cast<const T*>(base) + i);
#pragma unroll
  for (int u = 0; u < Vec<T>::kSize; ++u) out[u] = Conv<T>::load(v.e[u]);
}

template <typename T>
HGPSO_DEV void store_vec(void* base, int64_t i, const float* in) {
  Vec<T> v;
#pragma unroll
  for (int u = 0; u < Vec<T>::kSize; ++u) v.e[u] = Conv<T>::store(in[u]);
  *reinterpret_cast<Vec<T>*>(static_cast<T*>(base) + i) = v;
}

template <typename T>
HGPSO_DEV float load1(const void* base, int64_t i) {
  return Conv<T>::load(static_cast<const T*>(base)[i]);
}

// i mod row, in 32 bits when both fit (the usual case; 64-bit division is slow on GPUs)
HGPSO_DEV int64_t mod_row(int64_t i, int64_t row) {
  if (((static_cast<uint64_t>(i) | static_cast<uint64_t>(row)) >> 32) == 0) {
    return static_cast<int64_t>(static_cast<uint32_t>(i) % static_cast<uint32_t>(row));
  }
  return i % row;
}

// A full, aligned vector of elements [i, i + kSize), given the matching g values.
template <typename T, bool kGiven, bool kGrad>
HGPSO_DEV void vector_update(const TensorMeta& tm, int64_t i, const float* g,
                                              const Hyper& h) {
  constexpr int kV = Vec<T>::kSize;
  float x[kV], v[kV], p[kV], gr[kV], r1[kV], r2[kV];
  load_vec<T>(tm.x, i, x);
  load_vec<T>(tm.v, i, v);
  load_vec<T>(tm.p, i, p);
  if (kGrad) load_vec<T>(tm.grad, i, gr);
  if (kGiven) {
    load_vec<T>(tm.r1, i, r1);
    load_vec<T>(tm.r2, i, r2);
  } else {
    const uint64_t q0 = (tm.base + static_cast<uint64_t>(i)) >> 1;  // base + i is even
#pragma unroll
    for (int q = 0; q < kV / 2; ++q) {
      const Philox4 b = philox_pair_block(q0 + q, h.off0, h.off1, h.key0, h.key1);
      r1[2 * q] = uniform01(b.w[0]);
      r2[2 * q] = uniform01(b.w[1]);
      r1[2 * q + 1] = uniform01(b.w[2]);
      r2[2 * q + 1] = uniform01(b.w[3]);
    }
  }
#pragma unroll
  for (int u = 0; u < kV; ++u) {
    update_element(x[u], v[u], p[u], g[u], kGrad ? gr[u] : 0.0f, r1[u], r2[u], h, kGrad);
  }
  store_vec<T>(tm.v, i, v);
  store_vec<T>(tm.x, i, x);
}

// Linear layout: a full, aligned vector of elements [i, i + kSize) of the flattened tensor.
template <typename T, bool kGiven, bool kGrad>
HGPSO_DEV void vector_chunk(const TensorMeta& tm, int64_t i, const Hyper& h) {
  constexpr int kV = Vec<T>::kSize;
  float g[kV];
  int64_t j = mod_row(i, tm.row);
  if (tm.g_vec_ok) {
    load_vec<T>(tm.g, j, g);  // row % kV == 0, so j is a multiple of kV
  } else {
#pragma unroll
    for (int u = 0; u < kV; ++u) {
      g[u] = load1<T>(tm.g, j);
      if (++j == tm.row) j = 0;
    }
  }
  vector_update<T, kGiven, kGrad>(tm, i, g, h);
}

// Elements [i, i + count), one at a time (misaligned tensors and the ragged end).
template <typename T, bool kGiven, bool kGrad>
HGPSO_DEV void scalar_chunk(const TensorMeta& tm, int64_t i, int count,
                                             const Hyper& h) {
  int64_t j = mod_row(i, tm.row);
  for (int u = 0; u < count; ++u, ++i) {
    float x = load1<T>(tm.x, i);
    float v = load1<T>(tm.v, i);
    const float p = load1<T>(tm.p, i);
    const float g = load1<T>(tm.g, j);
    if (++j == tm.row) j = 0;
    const float gr = kGrad ? load1<T>(tm.grad, i) : 0.0f;
    float r1, r2;
    if (kGiven) {
      r1 = load1<T>(tm.r1, i);
      r2 = load1<T>(tm.r2, i);
    } else {
      element_randoms(tm.base + static_cast<uint64_t>(i), h, &r1, &r2);
    }
    update_element(x, v, p, g, gr, r1, r2, h, kGrad);
    static_cast<T*>(tm.v)[i] = Conv<T>::store(v);
    static_cast<T*>(tm.x)[i] = Conv<T>::store(x);
  }
}

// What one thread of one block does. The __global__ kernel calls it with its block and thread
// indices; threads never communicate, so a host loop over blocks and threads runs the very
// same code (csrc/testing/emulate_kernel.cpp).
template <typename T, bool kGiven, bool kGrad>
HGPSO_DEV void kernel_body(const LaunchMeta& meta, const Hyper& h, int64_t tile,
                           int64_t thread) {
  constexpr int kV = Vec<T>::kSize;
  int k = 0;
  while (k + 1 < meta.count && meta.t[k + 1].tile_begin <= tile) ++k;
  const TensorMeta& tm = meta.t[k];
  const int64_t local = tile - tm.tile_begin;
  if (tm.col_tiles > 0) {
    // column layout (aligned, row % kV == 0): one g vector, kRowsPerBlock particles
    const int64_t col_tile = local % tm.col_tiles;
    const int64_t j = (col_tile * kThreads + thread) * kV;
    if (j >= tm.row) return;
    float g[kV];
    load_vec<T>(tm.g, j, g);
    const int64_t n_particles = tm.numel / tm.row;
    const int64_t n0 = (local / tm.col_tiles) * kRowsPerBlock;
    const int64_t n1 = n0 + kRowsPerBlock < n_particles ? n0 + kRowsPerBlock : n_particles;
    for (int64_t n = n0; n < n1; ++n) {
      vector_update<T, kGiven, kGrad>(tm, n * tm.row + j, g, h);
    }
    return;
  }
  const int64_t start = local * tile_elements(sizeof(T));
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = start + (static_cast<int64_t>(u) * kThreads + thread) * kV;
    if (i >= tm.numel) return;
    const int64_t left = tm.numel - i;
    if (tm.vec_ok && left >= kV) {
      vector_chunk<T, kGiven, kGrad>(tm, i, h);
    } else {
      scalar_chunk<T, kGiven, kGrad>(tm, i, left < kV ? static_cast<int>(left) : kV, h);
    }
  }
}

}  // namespace kernel
}  // namespace hgpso
