// Shared definitions of the fused HG-PSO update: the per-element math (host and device), the
// launch metadata and its planning (plan_launches, shared by the CUDA entry point and the CPU
// emulation in csrc/testing), and the CUDA launcher's entry point. Deliberately free of any
// PyTorch header so that the .cu translation unit compiles in seconds.
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
constexpr int kUnroll = 2;     // 16-byte vectors per thread per block (linear layout)
constexpr int kRowsPerBlock = 16;  // particles per block (column layout)

// Linear layout: elements one block covers, kThreads * kUnroll vectors of 16 bytes.
HGPSO_HD constexpr int64_t tile_elements(int elem_size) {
  return static_cast<int64_t>(kThreads) * kUnroll * (16 / elem_size);
}

// Column layout: columns (elements of a particle) one block covers, one vector per thread.
HGPSO_HD constexpr int64_t tile_columns(int elem_size) {
  return static_cast<int64_t>(kThreads) * (16 / elem_size);
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
  // > 0: column layout, block t covers columns [c, c + tile_columns) of particles
  // [r * kRowsPerBlock, (r + 1) * kRowsPerBlock) with c = (t % col_tiles) * tile_columns,
  // r = t / col_tiles, so each vector of g is loaded once per block and reused for
  // kRowsPerBlock particles (a large g does not fit in L2, and would otherwise be re-read
  // from memory for every particle). 0: linear layout over the flattened elements.
  int64_t col_tiles;
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

// ------------------------------------------------------------------ host-side planning
// Also compiled into the CPU emulation of the kernel (csrc/testing), hence in this header.

struct TensorArgs {  // one tensor of a call, as raw pointers (grad/r1/r2 null when unused)
  void* x;
  void* v;
  const void* p;
  const void* g;
  const void* grad;
  const void* r1;
  const void* r2;
  int64_t numel;
  int64_t n_particles;
  uint64_t base;  // random-stream base of this tensor (see the numbering above)
};

inline Hyper make_hyper(int64_t seed, int64_t offset, double lr, double inertia, double cognitive,
                        double social, bool clamp, double max_velocity) {
  Hyper h{};
  h.lr = static_cast<float>(lr);
  h.inertia = static_cast<float>(inertia);
  h.cognitive = static_cast<float>(cognitive);
  h.social = static_cast<float>(social);
  h.clamp = clamp ? 1 : 0;
  h.max_velocity = clamp ? static_cast<float>(max_velocity) : 0.0f;
  const auto s = static_cast<uint64_t>(seed);
  const auto o = static_cast<uint64_t>(offset);
  h.key0 = static_cast<uint32_t>(s);
  h.key1 = static_cast<uint32_t>(s >> 32);
  h.off0 = static_cast<uint32_t>(o);
  h.off1 = static_cast<uint32_t>(o >> 32);
  return h;
}

inline uint64_t round_up_base(int64_t numel) {
  return static_cast<uint64_t>((numel + kBaseAlign - 1) / kBaseAlign * kBaseAlign);
}

inline bool aligned16_or_null(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;  // null is aligned
}

// Fill LaunchMeta batches for tensors of one dtype (element size `elem_size`) and hand each to
// `launch`. Returns -1, or the index of a tensor too large for one launch.
template <typename Launch>
int64_t plan_launches(const TensorArgs* ts, int64_t count, int elem_size, Launch&& launch) {
  const int vec = 16 / elem_size;
  const int64_t tile = tile_elements(elem_size);
  const int64_t cols = tile_columns(elem_size);
  const int64_t max_tiles = 0x7fffffff;  // gridDim.x limit
  LaunchMeta meta{};
  for (int64_t k = 0; k < count; ++k) {
    const TensorArgs& a = ts[k];
    if (a.numel == 0) continue;
    const int64_t row = a.numel / a.n_particles;
    const bool g_vec_ok = row % vec == 0 && aligned16_or_null(a.g);
    const bool vec_ok = aligned16_or_null(a.x) && aligned16_or_null(a.v) &&
                        aligned16_or_null(a.p) && aligned16_or_null(a.grad) &&
                        aligned16_or_null(a.r1) && aligned16_or_null(a.r2);
    const bool column = vec_ok && g_vec_ok && row >= cols;
    const int64_t col_tiles = column ? (row + cols - 1) / cols : 0;
    const int64_t tiles = column
                              ? col_tiles * ((a.n_particles + kRowsPerBlock - 1) / kRowsPerBlock)
                              : (a.numel + tile - 1) / tile;
    if (tiles > max_tiles) return k;
    if (meta.count == kMaxTensorsPerLaunch || meta.total_tiles + tiles > max_tiles) {
      launch(static_cast<const LaunchMeta&>(meta));
      meta.count = 0;
      meta.total_tiles = 0;
    }
    TensorMeta& tm = meta.t[meta.count++];
    tm.x = a.x;
    tm.v = a.v;
    tm.p = a.p;
    tm.g = a.g;
    tm.grad = a.grad;
    tm.r1 = a.r1;
    tm.r2 = a.r2;
    tm.numel = a.numel;
    tm.row = row;
    tm.base = a.base;
    tm.tile_begin = meta.total_tiles;
    tm.col_tiles = col_tiles;
    tm.vec_ok = vec_ok ? 1 : 0;
    tm.g_vec_ok = g_vec_ok ? 1 : 0;
    meta.total_tiles += tiles;
  }
  if (meta.count > 0) launch(static_cast<const LaunchMeta&>(meta));
  return -1;
}

// Defined in hgpso_update_kernel.cu; returns a cudaError_t as int (0 = success).
int launch_fused_update(const LaunchMeta& meta, const Hyper& h, DType dtype, bool given_randoms,
                        bool with_grad, void* stream);
// cudaGetErrorString, so the C++ side need not include the CUDA runtime header.
const char* cuda_error_string(int err);

}  // namespace hgpso
