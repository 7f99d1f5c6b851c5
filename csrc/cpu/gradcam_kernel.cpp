// CPU kernels of the class-activation-map reduction: one task per sample, one pass over
// each channel's activations (and gradients), then ReLU, bilinear resize and min-max
// normalisation fused on a per-task buffer.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../kernels/gradcam.h"
#include "../ops_common.h"
#include "vectorize.h"

namespace interp_ext {
namespace {

template <typename T>
std::vector<LinearTap<T>> taps_for(int64_t in_size, int64_t out_size) {
  std::vector<LinearTap<T>> taps(out_size);
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  for (int64_t i = 0; i < out_size; ++i) taps[i] = linear_tap<T>(i, in_size, scale);
  return taps;
}

// ---- vectorisable spans (T: stored type, Acc: accumulation type) -------------------------
// Inlined into the multi-versioned per-sample functions below, so they are compiled for
// each vector unit without a call per channel (channels are often only 7x7).

template <typename T, typename Acc>
inline Acc span_sum(const T* x, int64_t n) {
  Acc s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += Acc(x[i]);
  return s;
}

template <typename T, typename Acc>
inline void span_sum_and_dot(const T* a, const T* g, int64_t n, Acc& sum_a, Acc& sum_ga) {
  Acc sa = 0, sga = 0;
#pragma omp simd reduction(+ : sa, sga)
  for (int64_t i = 0; i < n; ++i) {
    sa += Acc(a[i]);
    sga += Acc(g[i]) * Acc(a[i]);
  }
  sum_a = sa;
  sum_ga = sga;
}

template <typename T, typename Acc>
inline Acc span_gradcampp(const T* g, int64_t n, Acc sum_a) {
  Acc s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += gradcampp_term<Acc>(Acc(g[i]), sum_a);
  return s;
}

template <typename T, typename Acc>
inline void span_axpy(Acc w, const T* a, Acc* cam, int64_t n) {
  for (int64_t i = 0; i < n; ++i) cam[i] += w * Acc(a[i]);
}

template <typename T, typename Acc>
inline void span_elementwise(CamVariant v, const T* g, const T* a, Acc* cam, int64_t n) {
  if (v == CamVariant::LayerCAM) {
    for (int64_t i = 0; i < n; ++i) cam[i] += elementwise_weight<Acc>(CamVariant::LayerCAM, Acc(g[i])) * Acc(a[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) cam[i] += Acc(g[i]) * Acc(a[i]);
  }
}

// out = r0 + t (r1 - r0) along a row, tracking the row's min and max.
template <typename Acc>
inline void span_lerp(const Acc* r0, const Acc* r1, Acc t, Acc* out, int64_t n, Acc& lo, Acc& hi) {
  Acc l = lo, h = hi;
  for (int64_t i = 0; i < n; ++i) {
    const Acc v = r0[i] + t * (r1[i] - r0[i]);
    out[i] = v;
    l = v < l ? v : l;
    h = v > h ? v : h;
  }
  lo = l;
  hi = h;
}

template <typename T, typename Acc>
inline void span_store(const Acc* src, T* dst, int64_t n, bool normalize, Acc lo, Acc span) {
  if (normalize) {
    for (int64_t i = 0; i < n; ++i) dst[i] = T(min_max_normalized<Acc>(src[i], lo, span));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = T(src[i]);
  }
}

// The weighted sum over channels for one sample, into `cam` (h*w values): one pass over
// each channel plane (Grad-CAM++ looks at a plane twice while it is still in cache).
template <typename scalar_t, typename acc_t>
INTERP_EXT_CLONES void accumulate_channels(const scalar_t* A, const scalar_t* G, const acc_t* given, int64_t channels, int64_t hw,
                         CamVariant v, acc_t* cam) {
  std::fill(cam, cam + hw, acc_t(0));
  for (int64_t k = 0; k < channels; ++k) {
    const scalar_t* a = A + k * hw;
    const scalar_t* g = G ? G + k * hw : nullptr;
    if (is_elementwise(v)) {
      span_elementwise<scalar_t, acc_t>(v, g, a, cam, hw);
      continue;
    }
    acc_t wk = 0;
    if (v == CamVariant::Given) {
      wk = given[k];
    } else if (v == CamVariant::GradCAM) {
      wk = span_sum<scalar_t, acc_t>(g, hw) / acc_t(hw);
    } else {
      acc_t sum_a, sum_ga;
      span_sum_and_dot<scalar_t, acc_t>(a, g, hw, sum_a, sum_ga);
      wk = v == CamVariant::XGradCAM ? safe_ratio(sum_ga, sum_a) : span_gradcampp<scalar_t, acc_t>(g, hw, sum_a);
    }
    span_axpy<scalar_t, acc_t>(wk, a, cam, hw);
  }
}

// ReLU'd map (h x w) -> resized (H x W) -> normalised, written in the output dtype.
// Separable: gather along x once per source row, then each output row is a vectorised
// lerp of two of those rows (an identity resize runs the same code, exactly).
template <typename scalar_t, typename acc_t>
INTERP_EXT_CLONES void resize_and_store(const acc_t* cam, int64_t h, int64_t w, const LinearTap<acc_t>* ytaps,
                                        const LinearTap<acc_t>* xtaps, int64_t H, int64_t W, bool normalize,
                                        acc_t* rows, acc_t* up, scalar_t* dst) {
  for (int64_t y = 0; y < h; ++y) {
    const acc_t* r = cam + y * w;
    for (int64_t x = 0; x < W; ++x) rows[y * W + x] = r[xtaps[x].i0] + xtaps[x].l1 * (r[xtaps[x].i1] - r[xtaps[x].i0]);
  }
  acc_t lo = std::numeric_limits<acc_t>::infinity(), hi = -lo;
  for (int64_t y = 0; y < H; ++y)
    span_lerp<acc_t>(rows + ytaps[y].i0 * W, rows + ytaps[y].i1 * W, ytaps[y].l1, up + y * W, W, lo, hi);
  span_store<scalar_t, acc_t>(up, dst, H * W, normalize, lo, hi - lo);
}

template <typename scalar_t>
at::Tensor cam_reduce_cpu(const at::Tensor& A, const at::Tensor& G, const at::Tensor& given, CamVariant v,
                          bool relu, int64_t H, int64_t W, bool normalize) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3), hw = h * w;
  at::Tensor out = at::empty({N, 1, H, W}, A.options());
  if (N == 0) return out;
  const auto ytaps = taps_for<acc_t>(h, H);
  const auto xtaps = taps_for<acc_t>(w, W);
  const scalar_t* ap = A.const_data_ptr<scalar_t>();
  const scalar_t* gp = G.defined() ? G.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* wp = given.defined() ? given.const_data_ptr<acc_t>() : nullptr;
  scalar_t* op = out.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    // per task: the h x w map, its rows resized along x (h x W), the H x W result
    std::vector<acc_t> cam(hw), rows(h * W), up(H * W);
    for (int64_t n = begin; n < end; ++n) {
      accumulate_channels<scalar_t, acc_t>(ap + n * K * hw, gp ? gp + n * K * hw : nullptr, wp ? wp + n * K : nullptr,
                                           K, hw, v, cam.data());
      if (relu)
        for (auto& c : cam) c = c > acc_t(0) ? c : acc_t(0);
      resize_and_store<scalar_t, acc_t>(cam.data(), h, w, ytaps.data(), xtaps.data(), H, W, normalize, rows.data(),
                                        up.data(), op + n * H * W);
    }
  });
  return out;
}

at::Tensor gradcam_cpu(const at::Tensor& activations, const at::Tensor& gradients, c10::string_view variant,
                       bool relu, at::OptionalIntArrayRef output_size, bool normalize) {
  check_gradcam_args(activations, gradients);
  const CamVariant v = parse_cam_variant("gradcam", variant);
  const auto [H, W] = cam_output_size("gradcam", activations, output_size);
  const at::Tensor A = activations.contiguous(), G = gradients.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "gradcam_cpu", [&] {
    out = cam_reduce_cpu<scalar_t>(A, G, at::Tensor(), v, relu, H, W, normalize);
  });
  return out;
}

at::Tensor cam_cpu(const at::Tensor& features, const at::Tensor& fc_weight, const at::Tensor& class_idx, bool relu,
                   at::OptionalIntArrayRef output_size, bool normalize) {
  check_cam_args(features, fc_weight, class_idx);
  const auto [H, W] = cam_output_size("cam", features, output_size);
  const at::Tensor A = features.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "cam_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // (N, K) per-sample channel weights in the accumulation type
    const at::Tensor given = fc_weight.index_select(0, class_idx).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    out = cam_reduce_cpu<scalar_t>(A, at::Tensor(), given, CamVariant::Given, relu, H, W, normalize);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) {
  m.impl("gradcam", &gradcam_cpu);
  m.impl("cam", &cam_cpu);
}

}  // namespace interp_ext
