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

namespace interp_ext {
namespace {

template <typename T>
std::vector<LinearTap<T>> taps_for(int64_t in_size, int64_t out_size) {
  std::vector<LinearTap<T>> taps(out_size);
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  for (int64_t i = 0; i < out_size; ++i) taps[i] = linear_tap<T>(i, in_size, scale);
  return taps;
}

// The weighted sum over channels for one sample, into `cam` (h*w values).
template <typename scalar_t, typename acc_t>
void accumulate_channels(const scalar_t* A, const scalar_t* G, const acc_t* given, int64_t channels, int64_t hw,
                         CamVariant v, acc_t* cam) {
  std::fill(cam, cam + hw, acc_t(0));
  for (int64_t k = 0; k < channels; ++k) {
    const scalar_t* a = A + k * hw;
    const scalar_t* g = G ? G + k * hw : nullptr;
    if (is_elementwise(v)) {
      for (int64_t p = 0; p < hw; ++p) cam[p] += elementwise_weight<acc_t>(v, g[p]) * acc_t(a[p]);
      continue;
    }
    acc_t wk = 0;
    if (v == CamVariant::Given) {
      wk = given[k];
    } else if (v == CamVariant::GradCAM) {
      for (int64_t p = 0; p < hw; ++p) wk += acc_t(g[p]);
      wk /= acc_t(hw);
    } else {
      acc_t sum_a = 0, sum_ga = 0;
      for (int64_t p = 0; p < hw; ++p) {
        sum_a += acc_t(a[p]);
        sum_ga += acc_t(g[p]) * acc_t(a[p]);
      }
      if (v == CamVariant::XGradCAM) {
        wk = safe_ratio(sum_ga, sum_a);
      } else {  // Grad-CAM++: the plane is still in cache for this second look at g
        for (int64_t p = 0; p < hw; ++p) wk += gradcampp_term<acc_t>(acc_t(g[p]), sum_a);
      }
    }
    for (int64_t p = 0; p < hw; ++p) cam[p] += wk * acc_t(a[p]);
  }
}

template <typename scalar_t>
at::Tensor cam_reduce_cpu(const at::Tensor& A, const at::Tensor& G, const at::Tensor& given, CamVariant v,
                          bool relu, int64_t H, int64_t W, bool normalize) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3), hw = h * w;
  at::Tensor out = at::empty({N, 1, H, W}, A.options());
  if (N == 0) return out;
  const bool resize = (H != h || W != w);
  const auto ytaps = taps_for<acc_t>(h, H);
  const auto xtaps = taps_for<acc_t>(w, W);
  const scalar_t* ap = A.const_data_ptr<scalar_t>();
  const scalar_t* gp = G.defined() ? G.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* wp = given.defined() ? given.const_data_ptr<acc_t>() : nullptr;
  scalar_t* op = out.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> cam(hw), up(resize ? H * W : 0);
    for (int64_t n = begin; n < end; ++n) {
      accumulate_channels<scalar_t, acc_t>(ap + n * K * hw, gp ? gp + n * K * hw : nullptr, wp ? wp + n * K : nullptr,
                                           K, hw, v, cam.data());
      if (relu)
        for (auto& c : cam) c = c > acc_t(0) ? c : acc_t(0);
      acc_t* final_map = cam.data();
      if (resize) {
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) up[y * W + x] = bilinear<acc_t>(cam.data(), w, ytaps[y], xtaps[x]);
        final_map = up.data();
      }
      const int64_t size = H * W;
      scalar_t* dst = op + n * size;
      if (normalize) {
        acc_t lo = std::numeric_limits<acc_t>::infinity(), hi = -lo;
        for (int64_t i = 0; i < size; ++i) {
          lo = std::min(lo, final_map[i]);
          hi = std::max(hi, final_map[i]);
        }
        for (int64_t i = 0; i < size; ++i) dst[i] = scalar_t(min_max_normalized<acc_t>(final_map[i], lo, hi - lo));
      } else {
        for (int64_t i = 0; i < size; ++i) dst[i] = scalar_t(final_map[i]);
      }
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
