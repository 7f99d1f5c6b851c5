// Argument checks shared by the CPU and CUDA entry points (and mirrored in
// interp_ext/_fake.py with the same messages).
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Optional.h>
#include <c10/util/safe_numerics.h>

#include <initializer_list>

#include <cmath>
#include <cstdio>
#include <utility>
#include <limits>
#include <string>

#include "kernels/blur.h"
#include "kernels/gradcam.h"
#include "kernels/guided_relu.h"
#include "kernels/occlusion.h"

namespace interp_ext {

// Numbers in messages are formatted here with snprintf, never streamed: with the GPU
// machine's toolchain (torch 2.11), streaming an integer or a double into
// TORCH_CHECK's message segfaulted (the inlined std::num_put of our build against
// the loaded libstdc++); strings and names stream fine.
inline std::string num_str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// "[2, 3, 4]"
inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d > 0) s += ", ";
    s += std::to_string(t.size(d));
  }
  return s + "]";
}

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", arg,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              t.scalar_type());
}

inline RectifierRule parse_rule(const char* op, c10::string_view rule) {
  if (rule == "guided") return RectifierRule::Guided;
  if (rule == "deconvnet") return RectifierRule::Deconvnet;
  TORCH_CHECK(false, op, ": rule must be \"guided\" or \"deconvnet\", got \"", std::string(rule), "\"");
}

inline double parse_upper(const char* op, c10::optional<double> upper) {
  if (!upper.has_value()) return std::numeric_limits<double>::infinity();
  TORCH_CHECK(*upper > 0, op, ": upper must be positive (the rectifier clamps to [0, upper]), got ", num_str(*upper));
  return *upper;
}

inline void check_guided_backward_args(const at::Tensor& grad_output, const at::Tensor& x) {
  const char* op = "guided_relu_backward";
  check_floating(op, "grad_output", grad_output);
  check_floating(op, "x", x);
  TORCH_CHECK(grad_output.sizes() == x.sizes(), op, ": grad_output and x must have the same shape, got ",
              shape_str(grad_output), " and ", shape_str(x));
  TORCH_CHECK(grad_output.scalar_type() == x.scalar_type(), op,
              ": grad_output and x must have the same dtype, got ", grad_output.scalar_type(), " and ",
              x.scalar_type());
  TORCH_CHECK(grad_output.device() == x.device(), op, ": grad_output and x must be on the same device, got ",
              grad_output.device(), " and ", x.device());
}

inline void check_out(const char* op, const at::Tensor& out, const at::Tensor& like) {
  TORCH_CHECK(out.sizes() == like.sizes(), op, ": out must have shape ", shape_str(like), ", got ", shape_str(out));
  TORCH_CHECK(out.scalar_type() == like.scalar_type(), op, ": out must have dtype ", like.scalar_type(),
              ", got ", out.scalar_type());
  TORCH_CHECK(out.device() == like.device(), op, ": out must be on device ", like.device(), ", got ",
              out.device());
}

inline void check_saliency_args(const at::Tensor& grad) {
  const char* op = "saliency_reduce";
  check_floating(op, "grad", grad);
  TORCH_CHECK(grad.dim() == 4, op, ": grad must be 4-D (N, C, H, W), got shape ", shape_str(grad));
  TORCH_CHECK(grad.size(1) > 0, op, ": grad must have at least one channel, got shape ", shape_str(grad));
}

// ---- Grad-CAM family and CAM ------------------------------------------------------------

inline CamVariant parse_cam_variant(const char* op, c10::string_view variant) {
  if (variant == "gradcam") return CamVariant::GradCAM;
  if (variant == "gradcam++") return CamVariant::GradCAMPlusPlus;
  if (variant == "xgradcam") return CamVariant::XGradCAM;
  if (variant == "layercam") return CamVariant::LayerCAM;
  if (variant == "hirescam") return CamVariant::HiResCAM;
  TORCH_CHECK(false, op, ": variant must be one of \"gradcam\", \"gradcam++\", \"xgradcam\", \"layercam\", ",
              "\"hirescam\", got \"", std::string(variant), "\"");
}

inline void check_feature_map(const char* op, const char* arg, const at::Tensor& t) {
  check_floating(op, arg, t);
  TORCH_CHECK(t.dim() == 4, op, ": ", arg, " must be 4-D (N, K, h, w), got shape ", shape_str(t));
  TORCH_CHECK(t.size(2) > 0 && t.size(3) > 0, op, ": ", arg, " must have a non-empty spatial size, got shape ",
              shape_str(t));
}

// (H, W) of the result: output_size, or the feature map's own (h, w).
inline std::pair<int64_t, int64_t> cam_output_size(const char* op, const at::Tensor& features,
                                                   at::OptionalIntArrayRef output_size) {
  if (!output_size.has_value()) return {features.size(2), features.size(3)};
  const auto s = *output_size;
  TORCH_CHECK(s.size() == 2 && s[0] > 0 && s[1] > 0, op,
              ": output_size must be two positive ints (H, W), got ", s);
  return {s[0], s[1]};
}

inline void check_gradcam_args(const at::Tensor& activations, const at::Tensor& gradients) {
  const char* op = "gradcam";
  check_feature_map(op, "activations", activations);
  check_feature_map(op, "gradients", gradients);
  TORCH_CHECK(activations.sizes() == gradients.sizes(), op,
              ": activations and gradients must have the same shape, got ", shape_str(activations), " and ",
              shape_str(gradients));
  TORCH_CHECK(activations.scalar_type() == gradients.scalar_type(), op,
              ": activations and gradients must have the same dtype, got ", activations.scalar_type(), " and ",
              gradients.scalar_type());
  TORCH_CHECK(activations.device() == gradients.device(), op,
              ": activations and gradients must be on the same device, got ", activations.device(), " and ",
              gradients.device());
}

inline void check_cam_args(const at::Tensor& features, const at::Tensor& fc_weight, const at::Tensor& class_idx) {
  const char* op = "cam";
  check_feature_map(op, "features", features);
  check_floating(op, "fc_weight", fc_weight);
  TORCH_CHECK(fc_weight.dim() == 2 && fc_weight.size(1) == features.size(1), op,
              ": fc_weight must be (num_classes, K) with K = features.size(1) = ", std::to_string(features.size(1)),
              ", got shape ", shape_str(fc_weight));
  TORCH_CHECK(class_idx.scalar_type() == at::kLong, op, ": class_idx must be an int64 tensor, got ",
              class_idx.scalar_type());
  TORCH_CHECK(class_idx.dim() == 1 && class_idx.size(0) == features.size(0), op,
              ": class_idx must have one class per sample, shape (", std::to_string(features.size(0)), "), got ",
              shape_str(class_idx));
  TORCH_CHECK(fc_weight.device() == features.device() && class_idx.device() == features.device(), op,
              ": features, fc_weight and class_idx must be on the same device");
  if (class_idx.numel() > 0) {
    const int64_t lo = class_idx.min().item<int64_t>(), hi = class_idx.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < fc_weight.size(0), op, ": class_idx must be in [0, ",
                std::to_string(fc_weight.size(0)), "), got values from ", std::to_string(lo), " to ",
                std::to_string(hi));
  }
}

// ---- occlusion ---------------------------------------------------------------------------

// Validates window and stride against a (C, H, W) feature shape; returns the grid.
inline WindowGrid make_window_grid(const char* op, c10::IntArrayRef shape, c10::IntArrayRef window,
                                   c10::IntArrayRef stride) {
  TORCH_CHECK(shape.size() == 3, op, ": the feature shape must be (C, H, W), got ", std::to_string(shape.size()),
              " dims");
  TORCH_CHECK(window.size() == 3, op, ": window must have 3 values (C, H, W), got ", std::to_string(window.size()));
  TORCH_CHECK(stride.size() == 3, op, ": stride must have 3 values (C, H, W), got ", std::to_string(stride.size()));
  WindowGrid g;
  const char* names[3] = {"C", "H", "W"};
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(shape[d] > 0, op, ": the feature shape must be positive, got ", std::to_string(shape[d]), " for ",
                names[d]);
    TORCH_CHECK(window[d] > 0 && window[d] <= shape[d], op, ": window ", names[d], " = ", std::to_string(window[d]),
                " must be in [1, ", std::to_string(shape[d]), "] (the input size)");
    TORCH_CHECK(stride[d] > 0, op, ": stride ", names[d], " must be positive, got ", std::to_string(stride[d]));
    g.size[d] = shape[d];
    g.window[d] = window[d];
    g.stride[d] = stride[d];
    g.count[d] = window_count(shape[d], window[d], stride[d]);
  }
  int64_t total = 0;
  TORCH_CHECK(!c10::mul_overflows(g.count[0], g.count[1], &total) && !c10::mul_overflows(total, g.count[2], &total),
              op, ": the window grid ", std::to_string(g.count[0]), " x ", std::to_string(g.count[1]), " x ",
              std::to_string(g.count[2]), " has more windows than int64 can count");
  return g;
}

// Cannot overflow: make_window_grid checked the product.
inline int64_t total_windows(const WindowGrid& g) { return g.count[0] * g.count[1] * g.count[2]; }

// copies * N, checked: the batch size of a (copies * N, C, H, W) output.
inline int64_t copies_times_batch(const char* op, int64_t copies, const at::Tensor& x, const char* copies_name) {
  int64_t rows = 0;
  TORCH_CHECK(!c10::mul_overflows(copies, x.size(0), &rows), op, ": ", copies_name, " * N = ",
              std::to_string(copies), " * ", std::to_string(x.size(0)), " overflows int64");
  return rows;
}

// x (N, C, H, W) of a floating type and a baseline (1 or N, C, H, W) of its dtype and
// device: what the occluded and feature-subset batches are built from.
inline void check_image_and_baseline(const char* op, const at::Tensor& x, const at::Tensor& baseline) {
  check_floating(op, "x", x);
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK(baseline.scalar_type() == x.scalar_type() && baseline.device() == x.device(), op,
              ": baseline must have x's dtype and device");
  TORCH_CHECK(baseline.dim() == 4 && (baseline.size(0) == 1 || baseline.size(0) == x.size(0)) &&
                  baseline.size(1) == x.size(1) && baseline.size(2) == x.size(2) && baseline.size(3) == x.size(3),
              op, ": baseline must be (1 or N, C, H, W) = ", shape_str(x), ", got ", shape_str(baseline));
}

inline WindowGrid check_occlusion_batch_args(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                                             c10::IntArrayRef stride, int64_t start, int64_t count,
                                             const char* op = "occlusion_batch") {
  check_image_and_baseline(op, x, baseline);
  const WindowGrid g = make_window_grid(op, x.sizes().slice(1), window, stride);
  // count <= total - start: start + count could overflow int64 and pass
  const int64_t total = total_windows(g);
  TORCH_CHECK(start >= 0 && count >= 0 && start <= total && count <= total - start, op, ": windows start = ",
              std::to_string(start), ", count = ", std::to_string(count), " are out of range: there are ",
              std::to_string(total), " windows");
  return g;
}

// Per-image window lists: windows (count, N) int64, copy j of image n occludes windows[j, n].
inline WindowGrid check_occlusion_batch_at_args(const at::Tensor& x, const at::Tensor& baseline,
                                                c10::IntArrayRef window, c10::IntArrayRef stride,
                                                const at::Tensor& windows) {
  const char* op = "occlusion_batch_at";
  const WindowGrid g = check_occlusion_batch_args(x, baseline, window, stride, 0, 0, op);
  TORCH_CHECK(windows.scalar_type() == at::kLong && windows.dim() == 2 && windows.size(1) == x.size(0), op,
              ": windows must be an int64 (count, N) tensor with N = ", std::to_string(x.size(0)),
              " (one window per copy and image), got ", windows.scalar_type(), " of shape ", shape_str(windows));
  TORCH_CHECK(windows.device() == x.device(), op, ": windows must be on x's device");
  if (windows.numel() > 0) {
    const auto [lo, hi] = at::aminmax(windows);
    const int64_t l = lo.item<int64_t>(), h = hi.item<int64_t>();
    TORCH_CHECK(l >= 0 && h < total_windows(g), op, ": window ids must be in [0, ", std::to_string(total_windows(g)),
                "), got ids from ", std::to_string(l), " to ", std::to_string(h));
  }
  return g;
}

// out of a batch of copies of x, (copies * N, C, H, W) with x's dtype and device,
// contiguous, sharing no memory with the inputs (copy j would be built from data that
// copy i < j already overwrote); `copies` names the count in the message ("count", "B").
inline void check_copies_out(const char* op, const at::Tensor& out, const at::Tensor& x, int64_t copies,
                             const char* copies_name, std::initializer_list<const at::Tensor*> inputs) {
  const int64_t rows = copies_times_batch(op, copies, x, copies_name);
  TORCH_CHECK(out.dim() == 4 && out.size(0) == rows && out.size(1) == x.size(1) &&
                  out.size(2) == x.size(2) && out.size(3) == x.size(3),
              op, ": out must be (", copies_name, " * N, C, H, W) = (", std::to_string(rows), ", ",
              std::to_string(x.size(1)), ", ", std::to_string(x.size(2)), ", ", std::to_string(x.size(3)), "), got ",
              shape_str(out));
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.device() == x.device(), op,
              ": out must have x's dtype and device");
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  for (const at::Tensor* t : inputs) {
    // TooHard means a non-dense input, which the kernels read through a contiguous copy
    const at::MemOverlapStatus overlap = at::get_overlap_status(out, *t);
    TORCH_CHECK(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial, op,
                ": out must not share memory with the inputs (x, baseline or the index tensors)");
  }
}

inline WindowGrid check_occlusion_accumulate_args(const at::Tensor& diffs, c10::IntArrayRef shape,
                                                  c10::IntArrayRef window, c10::IntArrayRef stride) {
  const char* op = "occlusion_accumulate";
  check_floating(op, "diffs", diffs);
  const WindowGrid g = make_window_grid(op, shape, window, stride);
  TORCH_CHECK(diffs.dim() == 2 && diffs.size(1) == total_windows(g), op, ": diffs must be (N, ",
              std::to_string(total_windows(g)), ") (one score difference per window), got ", shape_str(diffs));
  return g;
}

// ---- feature subsets (Shapley sampling, feature ablation) ----------------------------------

// x (N, C, H, W), baseline (1 or N, C, H, W), feature_mask int64 (1 or N, 1 or C, H, W)
// with ids in [0, F), present bool (B, F). Checks the ids' range (one host sync).
inline void check_feature_batch_args(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& feature_mask,
                                     const at::Tensor& present) {
  const char* op = "feature_batch";
  check_image_and_baseline(op, x, baseline);
  TORCH_CHECK(feature_mask.scalar_type() == at::kLong, op, ": feature_mask must be an int64 tensor, got ",
              feature_mask.scalar_type());
  TORCH_CHECK(feature_mask.dim() == 4 && (feature_mask.size(0) == 1 || feature_mask.size(0) == x.size(0)) &&
                  (feature_mask.size(1) == 1 || feature_mask.size(1) == x.size(1)) &&
                  feature_mask.size(2) == x.size(2) && feature_mask.size(3) == x.size(3),
              op, ": feature_mask must be (1 or N, 1 or C, H, W) for x of shape ", shape_str(x), ", got ",
              shape_str(feature_mask));
  TORCH_CHECK(present.scalar_type() == at::kBool && present.dim() == 2, op,
              ": present must be a bool (B, F) tensor (which features each copy keeps), got ", present.scalar_type(),
              " of shape ", shape_str(present));
  TORCH_CHECK(feature_mask.device() == x.device() && present.device() == x.device(), op,
              ": feature_mask and present must be on x's device");
  if (feature_mask.numel() > 0) {
    const auto [lo, hi] = at::aminmax(feature_mask);
    const int64_t l = lo.item<int64_t>(), h = hi.item<int64_t>();
    TORCH_CHECK(l >= 0 && h < present.size(1), op, ": feature_mask ids must be in [0, F) = [0, ",
                std::to_string(present.size(1)), ") (F = present.size(1)), got ids from ", std::to_string(l), " to ",
                std::to_string(h));
  }
}


// ---- separable filter (Gaussian blur) ----------------------------------------------------

inline BorderMode parse_border(const char* op, c10::string_view padding) {
  if (padding == "reflect") return BorderMode::Reflect;
  if (padding == "replicate") return BorderMode::Replicate;
  if (padding == "zeros") return BorderMode::Zeros;
  TORCH_CHECK(false, op, ": padding must be \"reflect\", \"replicate\" or \"zeros\", got \"", std::string(padding),
              "\"");
}

// x (N, C, H, W); taps (1 or N, k) in the compute type (float64 for float64 x, else float32).
inline BorderMode check_separable_filter_args(const char* op, const at::Tensor& x, const at::Tensor& taps_h,
                                              const at::Tensor& taps_w, c10::string_view padding) {
  check_floating(op, "x", x);
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got shape ", shape_str(x));
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"taps_h", taps_h}, {"taps_w", taps_w}}) {
    TORCH_CHECK(t.dim() == 2 && (t.size(0) == 1 || t.size(0) == x.size(0)) && t.size(1) >= 1, op, ": ", name,
                " must be (1 or N, k) with N = ", std::to_string(x.size(0)), " and k >= 1, got ", shape_str(t));
    TORCH_CHECK(t.scalar_type() == compute, op, ": ", name, " must be ", compute, " for x of dtype ", x.scalar_type(),
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device");
    TORCH_CHECK(t.size(1) <= std::numeric_limits<int32_t>::max(), op, ": ", name, " has too many taps (",
                std::to_string(t.size(1)), ")");
  }
  return parse_border(op, padding);
}

// The adjoint's (output, tap) lists hold 2 int32 per pair, axis size x taps pairs.
inline void check_adjoint_size(const char* op, int64_t size, int64_t taps, const char* axis) {
  TORCH_CHECK(size <= std::numeric_limits<int32_t>::max() / 2 && taps <= (std::numeric_limits<int32_t>::max() / 2) / std::max<int64_t>(size, 1),
              op, ": ", axis, " x taps = ", std::to_string(size), " x ", std::to_string(taps),
              " is too large for the adjoint (at most 2^30 pairs per axis)");
}

// ---- total variation -----------------------------------------------------------------

inline void check_total_variation_args(const char* op, const at::Tensor& x, double beta) {
  check_floating(op, "x", x);
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK(beta > 0 && std::isfinite(beta), op, ": beta must be positive, got ", num_str(beta));
}

inline void check_total_variation_backward_args(const at::Tensor& grad, const at::Tensor& x, double beta) {
  const char* op = "total_variation_backward";
  check_total_variation_args(op, x, beta);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0), op, ": grad must be (N,) = (", std::to_string(x.size(0)),
              ",), got ", shape_str(grad));
  TORCH_CHECK(grad.device() == x.device(), op, ": grad must be on x's device");
  check_floating(op, "grad", grad);
}

// ---- Yosinski et al. regularisation step --------------------------------------------------

inline void check_regularize_args(const at::Tensor& x, const at::Tensor& grad, double lr, double decay,
                                  double grad_pct, double norm_pct, double contrib_pct) {
  const char* op = "regularize_step_";
  check_floating(op, "x", x);
  TORCH_CHECK(x.dim() == 4, op, ": x must be (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() && grad.device() == x.device(), op,
              ": grad must have x's shape, dtype and device, got ", shape_str(grad));
  const at::MemOverlapStatus overlap = at::get_overlap_status(x, grad);
  TORCH_CHECK(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial, op,
              ": grad must not share memory with x (x is written in place)");
  TORCH_CHECK(std::isfinite(lr), op, ": lr must be finite, got ", num_str(lr));
  TORCH_CHECK(decay >= 0 && decay < 1, op, ": decay must be in [0, 1), got ", num_str(decay));
  for (const auto& [name, v] : {std::pair<const char*, double>{"grad_percentile", grad_pct},
                                {"norm_percentile", norm_pct},
                                {"contribution_percentile", contrib_pct}}) {
    TORCH_CHECK(v >= 0 && v < 100, op, ": ", name, " must be in [0, 100), got ", num_str(v));
  }
}

}  // namespace interp_ext
