// Argument checks shared by the CPU and CUDA entry points (and mirrored in
// interp_ext/_fake.py with the same messages).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cstdio>
#include <limits>
#include <string>

#include "kernels/guided_relu.h"

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

}  // namespace interp_ext
