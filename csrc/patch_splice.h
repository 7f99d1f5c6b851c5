// Host-side argument checks of patch_splice (shared by the CPU and CUDA entry points and
// mirrored in interp_ext/_fake.py with the same messages).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <string>

#include "checks.h"
#include "kernels/patch_splice.h"

namespace interp_ext {

// Origins further than this from the map are refused: every coordinate sum stays far
// from int64 overflow, and no real map is that large.
constexpr int64_t kMaxSpliceOrigin = int64_t(1) << 40;

inline void check_origins(const char* op, const char* arg, const at::Tensor& origin, int64_t K,
                          const at::Tensor& src) {
  TORCH_CHECK(origin.scalar_type() == at::kLong && origin.dim() == 2 && origin.size(0) == K && origin.size(1) == 2,
              op, ": ", arg, " must be an int64 (K, 2) tensor of (row, column) with K = ", std::to_string(K),
              ", got ", origin.scalar_type(), " of shape ", shape_str(origin));
  TORCH_CHECK(origin.device() == src.device(), op, ": ", arg, " must be on src's device");
  if (origin.numel() > 0) {
    const auto [lo, hi] = at::aminmax(origin);
    const int64_t l = lo.item<int64_t>(), h = hi.item<int64_t>();
    TORCH_CHECK(l > -kMaxSpliceOrigin && h < kMaxSpliceOrigin, op, ": ", arg, " must lie within 2^40 of the map, got ",
                std::to_string(l), " to ", std::to_string(h));
  }
}

// src (N, C, H, W); sample (K,) in [0, N); origin (K, 2); size (h, w) >= 0; patch
// (K, C, ph, pw) with patch_origin (K, 2), both or neither.
inline void check_patch_splice_args(const at::Tensor& src, const at::Tensor& sample, const at::Tensor& origin,
                                    c10::IntArrayRef size, const c10::optional<at::Tensor>& patch,
                                    const c10::optional<at::Tensor>& patch_origin) {
  const char* op = "patch_splice";
  check_floating(op, "src", src);
  TORCH_CHECK(src.dim() == 4, op, ": src must be (N, C, H, W), got shape ", shape_str(src));
  TORCH_CHECK(sample.scalar_type() == at::kLong && sample.dim() == 1, op,
              ": sample must be an int64 (K,) tensor (the src image of each output), got ", sample.scalar_type(),
              " of shape ", shape_str(sample));
  TORCH_CHECK(sample.device() == src.device(), op, ": sample must be on src's device");
  const int64_t K = sample.size(0);
  if (K > 0) {
    const auto [lo, hi] = at::aminmax(sample);
    const int64_t l = lo.item<int64_t>(), h = hi.item<int64_t>();
    TORCH_CHECK(l >= 0 && h < src.size(0), op, ": sample ids must be in [0, ", std::to_string(src.size(0)),
                ") (src's batch), got ids from ", std::to_string(l), " to ", std::to_string(h));
  }
  check_origins(op, "origin", origin, K, src);
  TORCH_CHECK(size.size() == 2 && size[0] >= 0 && size[1] >= 0 && size[0] < kMaxSpliceOrigin &&
                  size[1] < kMaxSpliceOrigin,
              op, ": size must be two non-negative ints (h, w), got ", size);
  TORCH_CHECK(patch.has_value() == patch_origin.has_value(), op,
              ": patch and patch_origin must be given together");
  if (patch.has_value()) {
    const at::Tensor& p = *patch;
    TORCH_CHECK(p.scalar_type() == src.scalar_type() && p.device() == src.device(), op,
                ": patch must have src's dtype and device, got ", p.scalar_type(), " on ", p.device());
    TORCH_CHECK(p.dim() == 4 && p.size(0) == K && p.size(1) == src.size(1), op,
                ": patch must be (K, C, ph, pw) with K = ", std::to_string(K), " and C = ", std::to_string(src.size(1)),
                ", got shape ", shape_str(p));
    check_origins(op, "patch_origin", *patch_origin, K, src);
  }
}

inline at::Tensor patch_splice_output(const at::Tensor& src, const at::Tensor& sample, c10::IntArrayRef size) {
  int64_t planes = 0;
  TORCH_CHECK(!c10::mul_overflows(sample.size(0), src.size(1), &planes), "patch_splice: K * C overflows int64");
  return at::empty({sample.size(0), src.size(1), size[0], size[1]}, src.options());
}

// out of patch_splice: (K, C, h, w) with src's dtype and device, sharing no memory with
// the inputs. Returns where the kernel writes: out itself when contiguous, else a
// temporary the caller copies back.
inline at::Tensor patch_splice_destination(const at::Tensor& out, const at::Tensor& src, const at::Tensor& sample,
                                           c10::IntArrayRef size, const c10::optional<at::Tensor>& patch) {
  const char* op = "patch_splice";
  TORCH_CHECK(out.dim() == 4 && out.size(0) == sample.size(0) && out.size(1) == src.size(1) && out.size(2) == size[0] &&
                  out.size(3) == size[1],
              op, ": out must be (K, C, h, w) = (", std::to_string(sample.size(0)), ", ", std::to_string(src.size(1)),
              ", ", std::to_string(size[0]), ", ", std::to_string(size[1]), "), got ", shape_str(out));
  TORCH_CHECK(out.scalar_type() == src.scalar_type() && out.device() == src.device(), op,
              ": out must have src's dtype and device");
  at::assert_no_overlap(out, src);
  if (patch.has_value()) at::assert_no_overlap(out, *patch);
  return out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
}

// The two entry points of one device over its `_into` kernel (validated arguments, a
// contiguous destination of the output's shape): check, allocate or check `out`, write.
using PatchSpliceInto = void (*)(const at::Tensor& src, const at::Tensor& sample, const at::Tensor& origin,
                                 double pad_value, const c10::optional<at::Tensor>& patch,
                                 const c10::optional<at::Tensor>& patch_origin, at::Tensor& dst);

template <PatchSpliceInto into>
at::Tensor patch_splice_functional(const at::Tensor& src, const at::Tensor& sample, const at::Tensor& origin,
                                   c10::IntArrayRef size, double pad_value, const c10::optional<at::Tensor>& patch,
                                   const c10::optional<at::Tensor>& patch_origin) {
  check_patch_splice_args(src, sample, origin, size, patch, patch_origin);
  at::Tensor out = patch_splice_output(src, sample, size);
  into(src, sample, origin, pad_value, patch, patch_origin, out);
  return out;
}

template <PatchSpliceInto into>
void patch_splice_out(const at::Tensor& src, const at::Tensor& sample, const at::Tensor& origin, c10::IntArrayRef size,
                      double pad_value, const c10::optional<at::Tensor>& patch,
                      const c10::optional<at::Tensor>& patch_origin, at::Tensor& out) {
  check_patch_splice_args(src, sample, origin, size, patch, patch_origin);
  at::Tensor dst = patch_splice_destination(out, src, sample, size, patch);
  into(src, sample, origin, pad_value, patch, patch_origin, dst);
  if (!dst.is_same(out)) out.copy_(dst);
}

}  // namespace interp_ext
