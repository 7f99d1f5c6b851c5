// CPU kernels of the separable filter (Gaussian blur) and its adjoint. Forward: per
// plane, per output row, the vertical taps accumulate into a row buffer (the loop runs
// along the row, taps outside), which is border-extended once and filtered by the
// horizontal taps: one pass over the plane, no padded copy. Backward: the exact adjoint,
// the horizontal transpose row by row (margins folded back onto the pixels they were
// read from) into a plane buffer, then the vertical transpose as a gather of rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../kernels/blur.h"
#include "../ops_common.h"
#include "vectorize.h"

namespace interp_ext {
namespace {

template <typename T>
inline void axpy(T* __restrict__ y, const T* __restrict__ x, T a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// One plane: out = H(V(in)).
template <typename T>
INTERP_EXT_CLONES void filter_plane(const T* in, T* out, int64_t H, int64_t W, const T* kh, int64_t KH, const T* kw,
                                    int64_t KW, BorderMode mode, T* row, T* padded) {
  const int64_t ph = (KH - 1) / 2, pw = (KW - 1) / 2;
  for (int64_t y = 0; y < H; ++y) {
    std::fill(row, row + W, T(0));
    for (int64_t t = 0; t < KH; ++t) {
      const int64_t m = border_index(y + t - ph, H, mode);
      if (m >= 0) axpy(row, in + m * W, kh[t], W);
    }
    for (int64_t j = 0; j < W + KW - 1; ++j) {
      const int64_t m = border_index(j - pw, W, mode);
      padded[j] = m >= 0 ? row[m] : T(0);
    }
    T* dst = out + y * W;
    std::fill(dst, dst + W, T(0));
    for (int64_t s = 0; s < KW; ++s) axpy(dst, padded + s, kw[s], W);
  }
}

// One plane: grad_in = V^T(H^T(grad_out)).
template <typename T>
INTERP_EXT_CLONES void filter_plane_adjoint(const T* g, T* out, int64_t H, int64_t W, const T* kh, int64_t KH,
                                            const T* kw, int64_t KW, BorderMode mode, const int32_t* h_offsets,
                                            const int32_t* h_pairs, T* plane, T* padded) {
  const int64_t pw = (KW - 1) / 2;
  for (int64_t y = 0; y < H; ++y) {
    std::fill(padded, padded + W + KW - 1, T(0));
    for (int64_t s = 0; s < KW; ++s) axpy(padded + s, g + y * W, kw[s], W);
    T* r = plane + y * W;
    std::copy(padded + pw, padded + pw + W, r);
    for (int64_t j = 0; j < W + KW - 1; ++j) {  // margins fold back onto the pixels they mirror
      if (j >= pw && j < pw + W) continue;
      const int64_t m = border_index(j - pw, W, mode);
      if (m >= 0) r[m] += padded[j];
    }
  }
  for (int64_t m = 0; m < H; ++m) {
    T* dst = out + m * W;
    std::fill(dst, dst + W, T(0));
    for (int32_t e = h_offsets[m]; e < h_offsets[m + 1]; ++e) axpy(dst, plane + h_pairs[2 * e] * W, kh[h_pairs[2 * e + 1]], W);
  }
}

// Runs `plane_fn(n, c, buffers...)` over all planes in parallel; float32 compute for
// reduced-precision inputs, float64 for float64.
template <typename Fn>
at::Tensor for_planes(const at::Tensor& x, Fn plane_fn) {
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = x.to(compute).contiguous();
  at::Tensor out = at::empty_like(xc);
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(compute, "separable_filter_cpu", [&] {
      const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
      at::parallel_for(0, x.size(0) * C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p)
          plane_fn(p / C, xc.const_data_ptr<scalar_t>() + p * HW, out.mutable_data_ptr<scalar_t>() + p * HW);
      });
    });
  }
  return out.scalar_type() == x.scalar_type() ? out : out.to(x.scalar_type());
}

at::Tensor separable_filter_cpu(const at::Tensor& x, const at::Tensor& taps_h, const at::Tensor& taps_w,
                                c10::string_view padding) {
  const BorderMode mode = check_separable_filter_args("separable_filter", x, taps_h, taps_w, padding);
  const int64_t H = x.size(2), W = x.size(3), KH = taps_h.size(1), KW = taps_w.size(1);
  const at::Tensor th = taps_h.contiguous(), tw = taps_w.contiguous();
  return for_planes(x, [&](int64_t n, const auto* in, auto* out) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
    std::vector<T> row(W), padded(W + KW - 1);
    const T* kh = th.const_data_ptr<T>() + (th.size(0) > 1 ? n : 0) * KH;
    const T* kw = tw.const_data_ptr<T>() + (tw.size(0) > 1 ? n : 0) * KW;
    filter_plane<T>(in, out, H, W, kh, KH, kw, KW, mode, row.data(), padded.data());
  });
}

at::Tensor separable_filter_backward_cpu(const at::Tensor& grad, const at::Tensor& taps_h, const at::Tensor& taps_w,
                                         c10::string_view padding) {
  const BorderMode mode = check_separable_filter_args("separable_filter_backward", grad, taps_h, taps_w, padding);
  const int64_t H = grad.size(2), W = grad.size(3), KH = taps_h.size(1), KW = taps_w.size(1);
  const at::Tensor th = taps_h.contiguous(), tw = taps_w.contiguous();
  std::vector<int32_t> h_offsets, h_pairs;
  adjoint_pairs(H, KH, mode, h_offsets, h_pairs);
  return for_planes(grad, [&](int64_t n, const auto* g, auto* out) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
    std::vector<T> plane(H * W), padded(W + KW - 1);
    const T* kh = th.const_data_ptr<T>() + (th.size(0) > 1 ? n : 0) * KH;
    const T* kw = tw.const_data_ptr<T>() + (tw.size(0) > 1 ? n : 0) * KW;
    filter_plane_adjoint<T>(g, out, H, W, kh, KH, kw, KW, mode, h_offsets.data(), h_pairs.data(), plane.data(),
                            padded.data());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) {
  m.impl("separable_filter", &separable_filter_cpu);
  m.impl("separable_filter_backward", &separable_filter_backward_cpu);
}

}  // namespace interp_ext
