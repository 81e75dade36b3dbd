// CPU emulation of the fused HG-PSO CUDA kernel, for testing without a GPU.
//
// Compiled by a host C++ compiler (no nvcc, no PyTorch): it includes the kernel body from
// hgpso_update_kernel.cuh (HGPSO_DEV = inline off nvcc), plans launches with the same
// plan_launches as the CUDA entry point, and runs every thread of every block in a loop.
// Threads of the kernel never communicate, so this executes exactly the kernel's index
// arithmetic, layouts (column / linear), vector and scalar paths and random numbering; only
// the hardware (memory system, FMA contraction choices of ptxas) differs.
//
//   g++ -std=c++17 -O2 -shared -fPIC -I<csrc> -I<cuda>/include emulate_kernel.cpp -o emu.so
//
// tests/kernels/test_kernels_emulated.py builds it and drives it through ctypes.
#include <stdint.h>

#include <vector>

#include "../hgpso_update_kernel.cuh"

namespace {

using hgpso::Hyper;
using hgpso::LaunchMeta;
using hgpso::TensorArgs;

template <typename T, bool kGiven, bool kGrad>
void run(const LaunchMeta& meta, const Hyper& h) {
  for (int64_t b = 0; b < meta.total_tiles; ++b) {
    for (int64_t t = 0; t < hgpso::kThreads; ++t) {
      hgpso::kernel::kernel_body<T, kGiven, kGrad>(meta, h, b, t);
    }
  }
}

template <typename T>
void run_typed(const LaunchMeta& meta, const Hyper& h, bool given, bool grad) {
  if (given) {
    if (grad) {
      run<T, true, true>(meta, h);
    } else {
      run<T, true, false>(meta, h);
    }
  } else {
    if (grad) {
      run<T, false, true>(meta, h);
    } else {
      run<T, false, false>(meta, h);
    }
  }
}

}  // namespace

extern "C" {

// All tensors share `dtype` (0 float32, 1 float16, 2 bfloat16). Pointer arrays have `count`
// entries; grad/r1/r2 may be null arrays. Returns the number of launches, or -1 - k when
// tensor k is too large. `layouts_out[k]` receives 1 for the column layout, 0 for linear.
int64_t hgpso_emulate_update(int dtype, int64_t count, void** x, void** v, void** p, void** g,
                             void** grad, void** r1, void** r2, const int64_t* numel,
                             const int64_t* n_particles, int64_t seed, int64_t offset, double lr,
                             double inertia, double cognitive, double social, int clamp,
                             double max_velocity, int64_t* layouts_out) {
  const bool with_grad = grad != nullptr && lr != 0.0;
  const bool given = r1 != nullptr;
  const Hyper h = hgpso::make_hyper(seed, offset, with_grad ? lr : 0.0, inertia, cognitive,
                                    social, clamp != 0, max_velocity);
  std::vector<TensorArgs> args(count);
  uint64_t base = 0;
  for (int64_t k = 0; k < count; ++k) {
    TensorArgs& a = args[k];
    a.x = x[k];
    a.v = v[k];
    a.p = p[k];
    a.g = g[k];
    a.grad = with_grad ? grad[k] : nullptr;
    a.r1 = given ? r1[k] : nullptr;
    a.r2 = given ? r2[k] : nullptr;
    a.numel = numel[k];
    a.n_particles = n_particles[k];
    a.base = base;
    base += hgpso::round_up_base(numel[k]);
  }
  const int elem_size = dtype == 0 ? 4 : 2;
  int64_t launches = 0;
  const int64_t too_large =
      hgpso::plan_launches(args.data(), count, elem_size, [&](const LaunchMeta& meta) {
        ++launches;
        for (int i = 0; i < meta.count; ++i) {
          for (int64_t k = 0; k < count; ++k) {
            if (args[k].x == meta.t[i].x) layouts_out[k] = meta.t[i].col_tiles > 0 ? 1 : 0;
          }
        }
        switch (dtype) {
          case 1:
            run_typed<__half>(meta, h, given, with_grad);
            break;
          case 2:
            run_typed<__nv_bfloat16>(meta, h, given, with_grad);
            break;
          default:
            run_typed<float>(meta, h, given, with_grad);
        }
      });
  return too_large >= 0 ? -1 - too_large : launches;
}

}  // extern "C"
