// The fused HG-PSO update kernel: one pass over every element, reading x, v, p, g (broadcast
// over particles), grad (and r1, r2 in the given-randoms mode) and writing v and x. The
// random coefficients come from a stateless Philox4x32-10 (philox.h), so nothing but the
// (seed, offset) pair is needed to reproduce a step. See hgpso_update.h for the math and for
// how elements are numbered, hgpso_update_kernel.cuh for the kernel body and its layouts.
//
// No PyTorch header on purpose: this file compiles in seconds.
#include <cuda_runtime.h>

#include "hgpso_update_kernel.cuh"

namespace hgpso {
namespace {

template <typename T, bool kGiven, bool kGrad>
__global__ void __launch_bounds__(kThreads)
    fused_update_kernel(const __grid_constant__ LaunchMeta meta, const __grid_constant__ Hyper h) {
  kernel::kernel_body<T, kGiven, kGrad>(meta, h, blockIdx.x, threadIdx.x);
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
