// Device-agnostic math of the class-activation-map reduction (Grad-CAM family and CAM),
// shared by the CPU and CUDA kernels.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace interp_ext {

enum class CamVariant : int {
  GradCAM = 0,          // w_k = mean_ij G_kij
  GradCAMPlusPlus = 1,  // w_k = sum_ij relu(G_kij) alpha_kij
  XGradCAM = 2,         // w_k = sum_ij G_kij A_kij / sum_ij A_kij
  LayerCAM = 3,         // map = sum_k relu(G_k) * A_k   (element-wise)
  HiResCAM = 4,         // map = sum_k G_k * A_k         (element-wise)
  Given = 5,            // CAM: w_k supplied (the classifier's weights)
};

C10_HOST_DEVICE inline bool is_elementwise(CamVariant v) {
  return v == CamVariant::LayerCAM || v == CamVariant::HiResCAM;
}

// Grad-CAM++: relu(g) * alpha with alpha = g^2 / (2 g^2 + sum_a g^3); 0 where the
// denominator vanishes. `sum_a` is the channel's activation sum. Written without
// branches or conditional division (a 0/1 factor and a safe denominator instead), so
// the CPU reduction over a channel vectorises; GCC keeps a conditional division
// scalar (it could trap). Same values as the conditional form for finite gradients.
template <typename T>
C10_HOST_DEVICE inline T gradcampp_term(T g, T sum_a) {
  const T g2 = g * g;
  const T denom = T(2) * g2 + sum_a * g2 * g;
  const T positive = g > T(0) ? g : T(0);
  const T zero = static_cast<T>(denom == T(0));
  return positive * g2 * (T(1) - zero) / (denom + zero);
}

template <typename T>
C10_HOST_DEVICE inline T safe_ratio(T num, T den) {
  return den != T(0) ? num / den : T(0);
}

// Per-element weight of the element-wise variants.
template <typename T>
C10_HOST_DEVICE inline T elementwise_weight(CamVariant v, T g) {
  return (v == CamVariant::LayerCAM && !(g > T(0))) ? T(0) : g;
}

// One output coordinate of bilinear resizing with align_corners=False, exactly as
// F.interpolate computes it: source = scale * (dst + 0.5) - 0.5, clamped at 0.
template <typename T>
struct LinearTap {
  int64_t i0, i1;
  T l1;  // weight of i1 (i0 gets 1 - l1)
};

template <typename T>
C10_HOST_DEVICE inline LinearTap<T> linear_tap(int64_t dst, int64_t in_size, T scale) {
  T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  LinearTap<T> t;
  // clamped as ATen's upsample does: past 2^24 float rounding can put src at in_size
  t.i0 = static_cast<int64_t>(src);
  if (t.i0 > in_size - 1) t.i0 = in_size - 1;
  t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
  t.l1 = src - static_cast<T>(t.i0);
  if (t.l1 < T(0)) t.l1 = T(0);
  if (t.l1 > T(1)) t.l1 = T(1);
  return t;
}

// Written as lerps (a + t (b - a)) so that equal neighbours give exactly their value:
// a constant map stays exactly constant when resized, and normalises to zeros rather
// than to rounding noise stretched to [0, 1].
template <typename T>
C10_HOST_DEVICE inline T bilinear(const T* plane, int64_t width, const LinearTap<T>& y, const LinearTap<T>& x) {
  const T* r0 = plane + y.i0 * width;
  const T* r1 = plane + y.i1 * width;
  const T top = r0[x.i0] + x.l1 * (r0[x.i1] - r0[x.i0]);
  const T bottom = r1[x.i0] + x.l1 * (r1[x.i1] - r1[x.i0]);
  return top + y.l1 * (bottom - top);
}

// Min-max normalisation to [0, 1]; a constant map (span 0) becomes 0, not NaN.
template <typename T>
C10_HOST_DEVICE inline T min_max_normalized(T v, T lo, T span) {
  return span > T(0) ? (v - lo) / span : T(0);
}

}  // namespace interp_ext
