// The fused HG-PSO update kernel: one pass over every element, reading x, v, p, g (broadcast
// over particles), grad (and r1, r2 in the given-randoms mode) and writing v and x. The
// random coefficients come from a stateless Philox4x32-10 (philox.h), so nothing but the
// (seed, offset) pair is needed to reproduce a step. See hgpso_update.h for the math and for
// how elements are numbered.
//
// Layout of a launch: up to kMaxTensorsPerLaunch tensors; block b belongs to the tensor k with
// t[k].tile_begin <= b < t[k+1].tile_begin and covers tile_elements() consecutive elements
// of it; each thread handles kUnroll 16-byte vectors, interleaved across the block so that a
// warp's loads are contiguous. Misaligned tensors and the ragged end use scalar loads.
//
// No PyTorch header on purpose: this file compiles in seconds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "hgpso_update.h"

namespace hgpso {
namespace {

template <typename T>
struct Conv;
template <>
struct Conv<float> {
  static __device__ __forceinline__ float load(float a) { return a; }
  static __device__ __forceinline__ float store(float a) { return a; }
};
template <>
struct Conv<__half> {
  static __device__ __forceinline__ float load(__half a) { return __half2float(a); }
  static __device__ __forceinline__ __half store(float a) { return __float2half_rn(a); }
};
template <>
struct Conv<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 a) { return __bfloat162float(a); }
  static __device__ __forceinline__ __nv_bfloat16 store(float a) { return __float2bfloat16_rn(a); }
};

template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T e[kSize];
};

template <typename T>
__device__ __forceinline__ void load_vec(const void* base, int64_t i, float* out) {
  Vec<T> v;
  *reinterpret_cast<uint4*>(&v) = *reinterpret_cast<const uint4*>(static_cast<const T*>(base) + i);
#pragma unroll
  for (int u = 0; u < Vec<T>::kSize; ++u) out[u] = Conv<T>::load(v.e[u]);
}

template <typename T>
__device__ __forceinline__ void store_vec(void* base, int64_t i, const float* in) {
  Vec<T> v;
#pragma unroll
  for (int u = 0; u < Vec<T>::kSize; ++u) v.e[u] = Conv<T>::store(in[u]);
  *reinterpret_cast<uint4*>(static_cast<T*>(base) + i) = *reinterpret_cast<const uint4*>(&v);
}

template <typename T>
__device__ __forceinline__ float load1(const void* base, int64_t i) {
  return Conv<T>::load(static_cast<const T*>(base)[i]);
}

// i mod row, in 32 bits when both fit (the usual case; 64-bit division is slow on GPUs)
__device__ __forceinline__ int64_t mod_row(int64_t i, int64_t row) {
  if (((static_cast<uint64_t>(i) | static_cast<uint64_t>(row)) >> 32) == 0) {
    return static_cast<int64_t>(static_cast<uint32_t>(i) % static_cast<uint32_t>(row));
  }
  return i % row;
}

// A full, aligned vector of elements [i, i + kSize).
template <typename T, bool kGiven, bool kGrad>
__device__ __forceinline__ void vector_chunk(const TensorMeta& tm, int64_t i, const Hyper& h) {
  constexpr int kV = Vec<T>::kSize;
  float x[kV], v[kV], p[kV], g[kV], gr[kV], r1[kV], r2[kV];
  load_vec<T>(tm.x, i, x);
  load_vec<T>(tm.v, i, v);
  load_vec<T>(tm.p, i, p);
  if (kGrad) load_vec<T>(tm.grad, i, gr);
  if (kGiven) {
    load_vec<T>(tm.r1, i, r1);
    load_vec<T>(tm.r2, i, r2);
  }
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
  if (!kGiven) {
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

// Elements [i, i + count), one at a time (misaligned tensors and the ragged end).
template <typename T, bool kGiven, bool kGrad>
__device__ __forceinline__ void scalar_chunk(const TensorMeta& tm, int64_t i, int count,
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

template <typename T, bool kGiven, bool kGrad>
__global__ void __launch_bounds__(kThreads)
    fused_update_kernel(const __grid_constant__ LaunchMeta meta, const __grid_constant__ Hyper h) {
  constexpr int kV = Vec<T>::kSize;
  const int64_t tile = blockIdx.x;
  int k = 0;
  while (k + 1 < meta.count && meta.t[k + 1].tile_begin <= tile) ++k;
  const TensorMeta& tm = meta.t[k];
  const int64_t start = (tile - tm.tile_begin) * tile_elements(sizeof(T));
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = start + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * kV;
    if (i >= tm.numel) return;
    const int64_t left = tm.numel - i;
    if (tm.vec_ok && left >= kV) {
      vector_chunk<T, kGiven, kGrad>(tm, i, h);
    } else {
      scalar_chunk<T, kGiven, kGrad>(tm, i, left < kV ? static_cast<int>(left) : kV, h);
    }
  }
}

template <typename T>
cudaError_t launch_typed(const LaunchMeta& meta, const Hyper& h, bool given, bool grad,
                         cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(meta.total_tiles));
  const dim3 block(kThreads);
  if (given) {
    if (grad) {
      fused_update_kernel<T, true, true><<<grid, block, 0, stream>>>(meta, h);
    } else {
      fused_update_kernel<T, true, false><<<grid, block, 0, stream>>>(meta, h);
    }
  } else {
    if (grad) {
      fused_update_kernel<T, false, true><<<grid, block, 0, stream>>>(meta, h);
    } else {
      fused_update_kernel<T, false, false><<<grid, block, 0, stream>>>(meta, h);
    }
  }
  return cudaGetLastError();
}

}  // namespace

int launch_fused_update(const LaunchMeta& meta, const Hyper& h, DType dtype, bool given_randoms,
                        bool with_grad, void* stream) {
  if (meta.count == 0 || meta.total_tiles == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      return static_cast<int>(launch_typed<float>(meta, h, given_randoms, with_grad, s));
    case DType::kHalf:
      return static_cast<int>(launch_typed<__half>(meta, h, given_randoms, with_grad, s));
    case DType::kBFloat16:
      return static_cast<int>(launch_typed<__nv_bfloat16>(meta, h, given_randoms, with_grad, s));
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

const char* cuda_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}

}  // namespace hgpso
