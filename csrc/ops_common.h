// Host-side declarations shared by the CPU and CUDA translation units.
#pragma once

#include <ATen/ATen.h>
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

// Output buffer for an out= kernel: `out` itself when the kernel can write it
// directly, else a contiguous temporary that the caller copies back.
inline at::Tensor writable_view_of(const at::Tensor& out) {
  return out.is_contiguous() ? out : at::empty_like(out, at::MemoryFormat::Contiguous);
}

inline at::Tensor saliency_output(const at::Tensor& grad) {
  return at::empty({grad.size(0), grad.size(2), grad.size(3)}, grad.options());
}

}  // namespace interp_ext
