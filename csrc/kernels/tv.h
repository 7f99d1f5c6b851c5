// Device-agnostic math of the total-variation regulariser (Mahendran & Vedaldi):
//   TV(x) = sum_{c,i,j} ((x[i,j+1] - x[i,j])^2 + (x[i+1,j] - x[i,j])^2)^(beta / 2),
// with the differences that would leave the image taken as 0 (so beta = 2 is the sum of
// all squared forward differences).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace interp_ext {

// Forward differences at (i, j) of a plane stored as S, computed in T.
template <typename T, typename S>
C10_HOST_DEVICE inline void tv_differences(const S* p, int64_t H, int64_t W, int64_t i, int64_t j, T& dx, T& dy) {
  const T v = static_cast<T>(p[i * W + j]);
  dx = j + 1 < W ? static_cast<T>(p[i * W + j + 1]) - v : T(0);
  dy = i + 1 < H ? static_cast<T>(p[(i + 1) * W + j]) - v : T(0);
}

template <typename T>
C10_HOST_DEVICE inline T tv_pow(T a, T b) {
#ifdef __CUDA_ARCH__
  return pow(a, b);
#else
  return std::pow(a, b);
#endif
}

template <typename T>
C10_HOST_DEVICE inline T tv_term(T dx, T dy, T beta) {
  const T s = dx * dx + dy * dy;
  return beta == T(2) ? s : (s > T(0) ? tv_pow(s, beta / 2) : T(0));
}

// d term / d s, times 2 (the factor of d s / d dx = 2 dx): beta s^(beta/2 - 1); 0 where s
// = 0 (for beta < 2 the derivative is unbounded there; 0 is a subgradient).
template <typename T>
C10_HOST_DEVICE inline T tv_slope(T dx, T dy, T beta) {
  const T s = dx * dx + dy * dy;
  if (beta == T(2)) return T(2);
  return s > T(0) ? beta * tv_pow(s, beta / 2 - 1) : T(0);
}

// d TV / d x[i, j] for one plane: the pixel's own term and its left and upper neighbours'.
template <typename T, typename S>
C10_HOST_DEVICE inline T tv_gradient(const S* p, int64_t H, int64_t W, int64_t i, int64_t j, T beta) {
  T dx, dy;
  tv_differences(p, H, W, i, j, dx, dy);
  T g = -tv_slope(dx, dy, beta) * (dx + dy);
  if (j > 0) {
    tv_differences(p, H, W, i, j - 1, dx, dy);
    g += tv_slope(dx, dy, beta) * dx;
  }
  if (i > 0) {
    tv_differences(p, H, W, i - 1, j, dx, dy);
    g += tv_slope(dx, dy, beta) * dy;
  }
  return g;
}

}  // namespace interp_ext
