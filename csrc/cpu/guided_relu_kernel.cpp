// CPU kernels: guided / deconvnet rectifier backward and the saliency reduction.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../kernels/guided_relu.h"
#include "../ops_common.h"
#include "vectorize.h"

namespace interp_ext {
namespace {

constexpr int64_t kElementwiseGrain = 1 << 15;
constexpr int64_t kPixelBlock = 1024;  // pixels kept hot in L1 while looping over channels

// ---- guided backward: one flat contiguous span per task -------------------------------

template <typename T>
inline void guided_span_generic(const T* g, const T* x, T* out, int64_t n, float upper,
                                RectifierRule rule) {
  if (rule == RectifierRule::Deconvnet) {
    for (int64_t i = 0; i < n; ++i) out[i] = T(deconvnet_grad<float>(g[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = T(guided_grad<float>(g[i], x[i], upper));
  }
}

#define INTERP_EXT_GUIDED_SPAN(T)                                                              \
  INTERP_EXT_CLONES void guided_span(const T* g, const T* x, T* out, int64_t n, T upper,     \
                                     RectifierRule rule) {                                     \
    if (rule == RectifierRule::Deconvnet) {                                                    \
      for (int64_t i = 0; i < n; ++i) out[i] = deconvnet_grad<T>(g[i]);                        \
    } else {                                                                                   \
      for (int64_t i = 0; i < n; ++i) out[i] = guided_grad<T>(g[i], x[i], upper);              \
    }                                                                                          \
  }
INTERP_EXT_GUIDED_SPAN(float)
INTERP_EXT_GUIDED_SPAN(double)
#undef INTERP_EXT_GUIDED_SPAN

// Reduced-precision types: compare in float (exact: the result is g or 0).
void guided_span(const c10::Half* g, const c10::Half* x, c10::Half* out, int64_t n, float upper,
                 RectifierRule rule) {
  guided_span_generic(g, x, out, n, upper, rule);
}
void guided_span(const c10::BFloat16* g, const c10::BFloat16* x, c10::BFloat16* out, int64_t n,
                 float upper, RectifierRule rule) {
  guided_span_generic(g, x, out, n, upper, rule);
}

// ---- saliency: out[p] = max_c |g[c, p]| over a run of pixels of one sample --------------

template <typename T, typename Acc>
inline void saliency_span_generic(const T* g, int64_t channels, int64_t plane, T* out, int64_t len) {
  for (int64_t b = 0; b < len; b += kPixelBlock) {
    const int64_t m = std::min(kPixelBlock, len - b);
    Acc acc[kPixelBlock];
    for (int64_t p = 0; p < m; ++p) acc[p] = Acc(0);
    for (int64_t c = 0; c < channels; ++c) {
      const T* row = g + c * plane + b;
      for (int64_t p = 0; p < m; ++p) acc[p] = abs_max<Acc>(acc[p], Acc(row[p]));
    }
    for (int64_t p = 0; p < m; ++p) out[b + p] = T(acc[p]);
  }
}

#define INTERP_EXT_SALIENCY_SPAN(T)                                                            \
  INTERP_EXT_CLONES void saliency_span(const T* g, int64_t channels, int64_t plane, T* out,    \
                                       int64_t len) {                                          \
    saliency_span_generic<T, T>(g, channels, plane, out, len);                                 \
  }
INTERP_EXT_SALIENCY_SPAN(float)
INTERP_EXT_SALIENCY_SPAN(double)
#undef INTERP_EXT_SALIENCY_SPAN

void saliency_span(const c10::Half* g, int64_t channels, int64_t plane, c10::Half* out, int64_t len) {
  saliency_span_generic<c10::Half, float>(g, channels, plane, out, len);
}
void saliency_span(const c10::BFloat16* g, int64_t channels, int64_t plane, c10::BFloat16* out,
                   int64_t len) {
  saliency_span_generic<c10::BFloat16, float>(g, channels, plane, out, len);
}

}  // namespace

void guided_relu_backward_out_cpu(const at::Tensor& grad_output, const at::Tensor& x,
                                  c10::optional<double> upper, c10::string_view rule, at::Tensor& out) {
  const GuidedBackwardArgs a = prepare_guided_backward(grad_output, x, upper, rule, out);
  if (a.g.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.g.scalar_type(), "guided_relu_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = a.g.const_data_ptr<scalar_t>();
    const scalar_t* xp = a.x.const_data_ptr<scalar_t>();
    scalar_t* op = a.dst.mutable_data_ptr<scalar_t>();
    const opmath_t u = upper_bound_in<scalar_t, opmath_t>(a.upper);
    at::parallel_for(0, a.g.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
      guided_span(gp + begin, xp + begin, op + begin, end - begin, u, a.rule);
    });
  });
  a.finish();
}

at::Tensor guided_relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x,
                                    c10::optional<double> upper, c10::string_view rule) {
  check_guided_backward_args(grad_output, x);
  at::Tensor out = at::empty_like(grad_output);  // its layout when dense (channels-last stays), else contiguous
  guided_relu_backward_out_cpu(grad_output, x, upper, rule, out);
  return out;
}

at::Tensor saliency_reduce_cpu(const at::Tensor& grad) {
  check_saliency_args(grad);
  at::Tensor out = saliency_output(grad);
  if (out.numel() == 0) return out;
  const at::Tensor g_ = grad.contiguous();
  const int64_t channels = g_.size(1);
  const int64_t plane = g_.size(2) * g_.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g_.scalar_type(), "saliency_reduce_cpu", [&] {
    const scalar_t* gp = g_.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(kPixelBlock, kElementwiseGrain / channels);
    at::parallel_for(0, out.numel(), grain, [&](int64_t begin, int64_t end) {
      // A task's range may cross sample boundaries: split it per sample.
      for (int64_t i = begin; i < end;) {
        const int64_t n = i / plane, p = i % plane;
        const int64_t len = std::min(end - i, plane - p);
        saliency_span(gp + n * channels * plane + p, channels, plane, op + i, len);
        i += len;
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) {
  m.impl("guided_relu", &guided_relu_forward);
  m.impl("guided_relu_backward", &guided_relu_backward_cpu);
  m.impl("guided_relu_backward.out", &guided_relu_backward_out_cpu);
  m.impl("saliency_reduce", &saliency_reduce_cpu);
}

}  // namespace interp_ext
