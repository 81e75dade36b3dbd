// Shared definitions of the fused HG-PSO update: the per-element math (host and device), the
// launch metadata, and the CUDA launcher's entry point. Deliberately free of any PyTorch
// header so that the .cu translation unit compiles in seconds.
//
// Per element, in float32 whatever the storage dtype, in the order of
// hgpso.functional.hgpso_update_ (so results agree to rounding):
//   v <- w*v;  v <- v + c1*(r1*(p - x));  v <- v + c2*(r2*(g - x));  v <- v + (-lr)*grad;
//   v <- clamp(v, -vmax, vmax) (NaN stays NaN);  x <- x + v
//
// Random numbering: the tensors of one call are laid end to end, each starting at a multiple
// of 8: tensor k starts at base_k = sum_{j<k} 8*ceil(n_j/8), so element i of tensor k is
// element e = base_k + i of the call. Its (r1, r2) come from Philox4x32-10 block e/2 (see
// philox.h). The stream depends only on (seed, offset, the list of tensor sizes), never on
// the launch configuration or the dtype, so the CPU and CUDA implementations agree exactly.
#pragma once

#include <stdint.h>

#include "philox.h"

namespace hgpso {

constexpr int kMaxTensorsPerLaunch = 24;  // keeps the by-value kernel argument < 4 KiB
constexpr int64_t kBaseAlign = 8;
constexpr int kThreads = 256;  // threads per block
constexpr int kUnroll = 2;     // 16-byte vectors per thread per block

// Elements one block covers: kThreads * kUnroll vectors of 16 bytes.
HGPSO_HD constexpr int64_t tile_elements(int elem_size) {
  return static_cast<int64_t>(kThreads) * kUnroll * (16 / elem_size);
}

struct Hyper {
  float lr;  // 0 when there is no gradient term
  float inertia;
  float cognitive;
  float social;
  float max_velocity;  // used when clamp != 0
  int32_t clamp;
  uint32_t key0, key1;  // seed
  uint32_t off0, off1;  // offset
};

struct TensorMeta {
  void* x;
  void* v;
  const void* p;
  const void* g;     // shape (row,), broadcast over particles
  const void* grad;  // null when the launch has no gradient term
  const void* r1;    // null unless the randoms are given
  const void* r2;
  int64_t numel;       // N * row
  int64_t row;         // elements per particle
  uint64_t base;       // random-stream base, multiple of kBaseAlign
  int64_t tile_begin;  // first block of this tensor in the launch
  int32_t vec_ok;      // every pointer 16-byte aligned: vector loads allowed
  int32_t g_vec_ok;    // row % vector width == 0 and g aligned
};

struct LaunchMeta {
  TensorMeta t[kMaxTensorsPerLaunch];
  int32_t count;
  int64_t total_tiles;
};

enum class DType : int32_t { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

// The update of one element, in float32.
HGPSO_HD void update_element(float& x, float& v, float p, float g, float grad, float r1, float r2,
                             const Hyper& h, bool with_grad) {
  float vv = h.inertia * v;
  vv = vv + h.cognitive * (r1 * (p - x));
  vv = vv + h.social * (r2 * (g - x));
  if (with_grad) {
    vv = vv + (-h.lr) * grad;
  }
  if (h.clamp) {
    vv = vv < -h.max_velocity ? -h.max_velocity : vv;  // comparisons keep NaN as NaN,
    vv = vv > h.max_velocity ? h.max_velocity : vv;    // like torch.clamp
  }
  v = vv;
  x = x + vv;
}

// (r1, r2) of element e of the call (the scalar path; the vector path draws whole blocks).
HGPSO_HD void element_randoms(uint64_t e, const Hyper& h, float* r1, float* r2) {
  const Philox4 b = philox_pair_block(e >> 1, h.off0, h.off1, h.key0, h.key1);
  const bool odd = (e & 1u) != 0;  // a select, not a dynamic index (no local memory on GPUs)
  *r1 = uniform01(odd ? b.w[2] : b.w[0]);
  *r2 = uniform01(odd ? b.w[3] : b.w[1]);
}

// Defined in hgpso_update_kernel.cu; returns a cudaError_t as int (0 = success).
int launch_fused_update(const LaunchMeta& meta, const Hyper& h, DType dtype, bool given_randoms,
                        bool with_grad, void* stream);
// cudaGetErrorString, so the C++ side need not include the CUDA runtime header.
const char* cuda_error_string(int err);

}  // namespace hgpso
