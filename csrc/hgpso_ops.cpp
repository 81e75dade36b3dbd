// Registration of hgpso::fused_update_, its argument checks, the CUDA entry (which fills the
// launch metadata and calls the kernel in hgpso_update_kernel.cu) and a CPU implementation of
// the very same math and random stream (a slow, exact twin, used to check the stream and the
// element math without a GPU; the optimizer never routes CPU tensors here).
//
// Schema:
//   hgpso::fused_update_(Tensor(a!)[] positions, Tensor(b!)[] velocities, Tensor[] pbests,
//       Tensor[] gbests, Tensor[] grads, Tensor[] r1, Tensor[] r2, int seed, int offset,
//       float lr, float inertia, float cognitive, float social, float? max_velocity) -> ()
// An empty `grads` list means no gradient term; empty `r1`/`r2` lists mean in-kernel Philox
// randoms keyed by (seed, offset).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "hgpso_update.h"

namespace hgpso {
namespace {

using at::Tensor;
using at::TensorList;

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return DType::kHalf;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      return DType::kFloat;
  }
}

void check_like(const Tensor& t, const Tensor& x, const char* name, size_t k) {
  TORCH_CHECK(t.device() == x.device(), "hgpso::fused_update_: ", name, "[", k, "] is on ",
              t.device(), " but positions[", k, "] is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "hgpso::fused_update_: ", name, "[", k,
              "] has dtype ", t.scalar_type(), " but positions[", k, "] has ", x.scalar_type());
  TORCH_CHECK(t.sizes() == x.sizes(), "hgpso::fused_update_: ", name, "[", k, "] has shape ",
              t.sizes(), " but positions[", k, "] has ", x.sizes());
  TORCH_CHECK(t.is_contiguous(), "hgpso::fused_update_: ", name, "[", k,
              "] must be contiguous (the Python wrapper hgpso.kernels.fused_hgpso_update_ "
              "copies non-contiguous inputs)");
}

void check_inputs(TensorList positions, TensorList velocities, TensorList pbests,
                  TensorList gbests, TensorList grads, TensorList r1, TensorList r2) {
  const size_t n = positions.size();
  TORCH_CHECK(velocities.size() == n && pbests.size() == n && gbests.size() == n,
              "hgpso::fused_update_: positions, velocities, pbests and gbests must have the "
              "same length, got ",
              n, ", ", velocities.size(), ", ", pbests.size(), ", ", gbests.size());
  TORCH_CHECK(grads.empty() || grads.size() == n,
              "hgpso::fused_update_: grads must be empty or have ", n, " tensors, got ",
              grads.size());
  TORCH_CHECK(r1.size() == r2.size() && (r1.empty() || r1.size() == n),
              "hgpso::fused_update_: r1 and r2 must both be empty or both have ", n,
              " tensors, got ", r1.size(), " and ", r2.size());
  for (size_t k = 0; k < n; ++k) {
    const Tensor& x = positions[k];
    TORCH_CHECK(supported_dtype(x.scalar_type()),
                "hgpso::fused_update_: dtype must be float32, float16 or bfloat16, got ",
                x.scalar_type());
    TORCH_CHECK(x.dim() >= 1, "hgpso::fused_update_: positions[", k,
                "] must have a particle dimension");
    TORCH_CHECK(x.device() == positions[0].device(),
                "hgpso::fused_update_: all tensors must be on one device, got ", x.device(),
                " and ", positions[0].device());
    TORCH_CHECK(x.is_contiguous(), "hgpso::fused_update_: positions[", k,
                "] must be contiguous");
    check_like(velocities[k], x, "velocities", k);
    check_like(pbests[k], x, "pbests", k);
    if (!grads.empty()) check_like(grads[k], x, "grads", k);
    if (!r1.empty()) {
      check_like(r1[k], x, "r1", k);
      check_like(r2[k], x, "r2", k);
    }
    const Tensor& g = gbests[k];
    TORCH_CHECK(g.sizes() == x.sizes().slice(1), "hgpso::fused_update_: gbests[", k,
                "] must have the shape of one particle, ", x.sizes().slice(1), ", got ",
                g.sizes());
    TORCH_CHECK(g.device() == x.device() && g.scalar_type() == x.scalar_type() &&
                    g.is_contiguous(),
                "hgpso::fused_update_: gbests[", k,
                "] must be contiguous, with the device and dtype of positions[", k, "]");
  }
}

// ------------------------------------------------------------------------------- CPU twin
template <typename T>
void cpu_one(const Tensor& x_t, const Tensor& v_t, const Tensor& p_t, const Tensor& g_t,
             const Tensor* grad_t, const Tensor* r1_t, const Tensor* r2_t, uint64_t base,
             const Hyper& h) {
  const int64_t numel = x_t.numel();
  if (numel == 0) return;
  const int64_t row = numel / x_t.size(0);
  T* x = x_t.data_ptr<T>();
  T* v = v_t.data_ptr<T>();
  const T* p = p_t.const_data_ptr<T>();
  const T* g = g_t.const_data_ptr<T>();
  const T* gr = grad_t ? grad_t->const_data_ptr<T>() : nullptr;
  const T* r1 = r1_t ? r1_t->const_data_ptr<T>() : nullptr;
  const T* r2 = r2_t ? r2_t->const_data_ptr<T>() : nullptr;
  at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float xf = static_cast<float>(x[i]);
      float vf = static_cast<float>(v[i]);
      float a, b;
      if (r1) {
        a = static_cast<float>(r1[i]);
        b = static_cast<float>(r2[i]);
      } else {
        element_randoms(base + static_cast<uint64_t>(i), h, &a, &b);
      }
      update_element(xf, vf, static_cast<float>(p[i]), static_cast<float>(g[i % row]),
                     gr ? static_cast<float>(gr[i]) : 0.0f, a, b, h, gr != nullptr);
      v[i] = static_cast<T>(vf);
      x[i] = static_cast<T>(xf);
    }
  });
}

void fused_update_cpu(TensorList positions, TensorList velocities, TensorList pbests,
                      TensorList gbests, TensorList grads, TensorList r1, TensorList r2,
                      int64_t seed, int64_t offset, double lr, double inertia, double cognitive,
                      double social, std::optional<double> max_velocity) {
  check_inputs(positions, velocities, pbests, gbests, grads, r1, r2);
  const bool with_grad = !grads.empty() && lr != 0.0;
  const Hyper h = make_hyper(seed, offset, with_grad ? lr : 0.0, inertia, cognitive, social,
                             max_velocity.has_value(), max_velocity.value_or(0.0));
  uint64_t base = 0;
  for (size_t k = 0; k < positions.size(); ++k) {
    const Tensor* grad = with_grad ? &grads[k] : nullptr;
    const Tensor* a = r1.empty() ? nullptr : &r1[k];
    const Tensor* b = r2.empty() ? nullptr : &r2[k];
    switch (positions[k].scalar_type()) {
      case at::kHalf:
        cpu_one<c10::Half>(positions[k], velocities[k], pbests[k], gbests[k], grad, a, b, base,
                           h);
        break;
      case at::kBFloat16:
        cpu_one<c10::BFloat16>(positions[k], velocities[k], pbests[k], gbests[k], grad, a, b,
                               base, h);
        break;
      default:
        cpu_one<float>(positions[k], velocities[k], pbests[k], gbests[k], grad, a, b, base, h);
    }
    base += round_up_base(positions[k].numel());
  }
}

// ------------------------------------------------------------------------------------ CUDA
void fused_update_cuda(TensorList positions, TensorList velocities, TensorList pbests,
                       TensorList gbests, TensorList grads, TensorList r1, TensorList r2,
                       int64_t seed, int64_t offset, double lr, double inertia, double cognitive,
                       double social, std::optional<double> max_velocity) {
  check_inputs(positions, velocities, pbests, gbests, grads, r1, r2);
  if (positions.empty()) return;
  const bool with_grad = !grads.empty() && lr != 0.0;
  const bool given = !r1.empty();
  const Hyper h = make_hyper(seed, offset, with_grad ? lr : 0.0, inertia, cognitive, social,
                             max_velocity.has_value(), max_velocity.value_or(0.0));
  // raw arguments, with random-stream bases over the whole list whatever the dtypes
  std::vector<TensorArgs> args(positions.size());
  uint64_t base = 0;
  for (size_t k = 0; k < positions.size(); ++k) {
    TensorArgs& a = args[k];
    a.numel = positions[k].numel();
    a.n_particles = positions[k].size(0);
    a.base = base;
    base += round_up_base(a.numel);
    if (a.numel == 0) continue;
    a.x = positions[k].data_ptr();
    a.v = velocities[k].data_ptr();
    a.p = pbests[k].const_data_ptr();
    a.g = gbests[k].const_data_ptr();
    a.grad = with_grad ? grads[k].const_data_ptr() : nullptr;
    a.r1 = given ? r1[k].const_data_ptr() : nullptr;
    a.r2 = given ? r2[k].const_data_ptr() : nullptr;
  }
  const c10::cuda::CUDAGuard guard(positions[0].device());
  void* stream = c10::cuda::getCurrentCUDAStream().stream();

  // one sequence of launches per dtype present (a launch is typed)
  for (const at::ScalarType st : {at::kFloat, at::kHalf, at::kBFloat16}) {
    std::vector<TensorArgs> typed;
    std::vector<size_t> index;
    for (size_t k = 0; k < positions.size(); ++k) {
      if (positions[k].scalar_type() == st) {
        typed.push_back(args[k]);
        index.push_back(k);
      }
    }
    if (typed.empty()) continue;
    const DType dtype = to_dtype(st);
    const int64_t too_large = plan_launches(
        typed.data(), static_cast<int64_t>(typed.size()),
        static_cast<int>(c10::elementSize(st)), [&](const LaunchMeta& meta) {
          const int err = launch_fused_update(meta, h, dtype, given, with_grad, stream);
          TORCH_CHECK(err == 0, "hgpso::fused_update_: kernel launch failed: ",
                      cuda_error_string(err));
        });
    TORCH_CHECK(too_large < 0, "hgpso::fused_update_: tensor ",
                too_large < 0 ? 0 : index[too_large], " is too large for one launch");
  }
}

}  // namespace
}  // namespace hgpso

TORCH_LIBRARY(hgpso, m) {
  m.def(
      "fused_update_(Tensor(a!)[] positions, Tensor(b!)[] velocities, Tensor[] pbests, "
      "Tensor[] gbests, Tensor[] grads, Tensor[] r1, Tensor[] r2, int seed, int offset, "
      "float lr, float inertia, float cognitive, float social, float? max_velocity) -> ()");
}

TORCH_LIBRARY_IMPL(hgpso, CPU, m) { m.impl("fused_update_", &hgpso::fused_update_cpu); }

TORCH_LIBRARY_IMPL(hgpso, CUDA, m) { m.impl("fused_update_", &hgpso::fused_update_cuda); }
