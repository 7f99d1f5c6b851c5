// Device-agnostic math of the Yosinski et al. regularised gradient-ascent step, applied
// in place between gradient steps: ascend along the gradient with its small entries
// zeroed, decay (L2), then zero the pixels whose norm over channels, or whose
// contribution sum_c |x * grad|, is below a per-sample percentile.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace interp_ext {

struct RegularizeParams {
  double lr;     // step size of the ascent
  double decay;  // L2 decay: x *= (1 - decay)
};

// The pixel value after the ascent and the decay, before any clipping.
template <typename T>
C10_HOST_DEVICE inline T regularized_value(T x, T g, T grad_threshold, T lr, T decay) {
  const T step = (g >= grad_threshold || -g >= grad_threshold) ? g : T(0);
  return (x + lr * step) * (T(1) - decay);
}

}  // namespace interp_ext
