// Device-agnostic per-element math for the guided / deconvnet rectifier backward.
// Included by the CPU and the CUDA kernels so both run the same arithmetic.
#pragma once

#include <c10/macros/Macros.h>

namespace interp_ext {

// How the backward pass of a rectifier treats the incoming gradient.
enum class RectifierRule : int {
  // Springenberg et al.: pass g only where the unit was on its linear part
  // (0 < x < upper) and g itself is positive.
  Guided = 0,
  // Zeiler & Fergus deconvnet: rectify the gradient, ignore the forward input.
  Deconvnet = 1,
};

// `x` may be the forward input or the forward output of relu / clamp(0, upper):
// both give the same mask, so callers may save whichever is cheaper to keep.
// `!(g <= 0)` rather than `g > 0` lets a NaN gradient through where the unit is
// active, so NaNs are reported rather than silently zeroed.
template <typename T>
C10_HOST_DEVICE inline T guided_grad(T g, T x, T upper) {
  const bool keep = (x > T(0)) & (x < upper) & !(g <= T(0));
  return keep ? g : T(0);
}

// The bound the backward compares x with, in the compute type opmath_t: `upper` as
// the forward's clamp produced it in scalar_t (ATen clamps in opmath_t, then rounds to
// scalar_t). A saturated unit holds exactly this value, so `x < bound` is false for it
// even when scalar_t cannot hold `upper` (bfloat16 3.3 -> 3.296875 < 3.3).
template <typename scalar_t, typename opmath_t>
inline opmath_t upper_bound_in(double upper) {
  return static_cast<opmath_t>(static_cast<scalar_t>(static_cast<opmath_t>(upper)));
}

template <typename T>
C10_HOST_DEVICE inline T deconvnet_grad(T g) {
  return !(g <= T(0)) ? g : T(0);
}

// max(|v|, m) that propagates NaN from v, as torch.amax does.
template <typename T>
C10_HOST_DEVICE inline T abs_max(T m, T v) {
  const T a = v < T(0) ? -v : v;
  return (a > m || a != a) ? a : m;
}

}  // namespace interp_ext
