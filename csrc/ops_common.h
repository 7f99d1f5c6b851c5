// Host-side declarations shared by the CPU and CUDA translation units.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Optional.h>

#include "checks.h"

namespace interp_ext {

// Forward of the guided rectifier: relu(x), or clamp(x, 0, upper) when `upper` is
// given. The rule only matters for the backward; it is validated here so a bad
// rule fails before any work. Same code on every device: ATen's clamp is already
// a single memory-bound pass.
inline at::Tensor guided_relu_forward(const at::Tensor& x, c10::optional<double> upper,
                                      c10::string_view rule) {
  check_floating("guided_relu", "x", x);
  parse_rule("guided_relu", rule);
  if (!upper.has_value()) return at::relu(x);
  return at::clamp(x, 0.0, parse_upper("guided_relu", upper));
}

// Validated operands of guided_relu_backward.out that the element-wise kernels may read
// and write as flat arrays (shared by the CPU and CUDA kernels): g, x and dst are dense
// with one and the same layout: the inputs' own when they share one (channels-last
// activations stay channels-last: no copy in, none out), else contiguous copies. `dst`
// is `out` itself when it has that layout, else a temporary that `finish()` copies back.
struct GuidedBackwardArgs {
  at::Tensor g, x, dst, out;
  RectifierRule rule;
  double upper;

  void finish() const {
    if (!dst.is_same(out)) out.copy_(dst);
  }
};

inline GuidedBackwardArgs prepare_guided_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                                  c10::optional<double> upper, c10::string_view rule,
                                                  const at::Tensor& out) {
  const char* op = "guided_relu_backward";
  check_guided_backward_args(grad_output, x);
  check_out(op, out, grad_output);
  const RectifierRule r = parse_rule(op, rule);
  const double up = parse_upper(op, upper);
  at::assert_no_partial_overlap(out, grad_output);
  at::assert_no_partial_overlap(out, x);
  const bool shared_layout = grad_output.is_non_overlapping_and_dense() && grad_output.strides() == x.strides();
  const at::Tensor g = shared_layout ? grad_output : grad_output.contiguous();
  const at::Tensor xs = shared_layout ? x : x.contiguous();
  const bool direct = out.strides() == g.strides() && out.is_non_overlapping_and_dense();
  at::Tensor dst = direct ? out : at::empty_like(g);  // empty_like keeps g's dense layout
  return {g, xs, dst, out, r, up};
}

// The zero-padded inclusive summed-area table (N, cc+1, cy+1, cx+1), float64, of
// per-window scores (N, P): what the occlusion accumulation gathers from.
at::Tensor window_score_table(const at::Tensor& diffs, const WindowGrid& g);

// A batch of `copies` copies of x (N, C, H, W): (copies * N, C, H, W), copy-major.
inline at::Tensor copies_output(const char* op, const at::Tensor& x, int64_t copies, const char* copies_name) {
  return at::empty({copies_times_batch(op, copies, x, copies_name), x.size(1), x.size(2), x.size(3)}, x.options());
}

inline at::Tensor saliency_output(const at::Tensor& grad) {
  return at::empty({grad.size(0), grad.size(2), grad.size(3)}, grad.options());
}

}  // namespace interp_ext
