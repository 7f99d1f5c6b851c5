// CPU kernels of the separable filter (Gaussian blur) and its adjoint, both as weighted
// sums of rows (`weighted_rows`, accumulators in registers). Forward: per plane, per
// output row, the vertical taps sum the input rows they read into a row buffer, which is
// border-extended at its margins and filtered by the horizontal taps: one pass over the
// plane, no padded copy. Backward: the exact adjoint, the horizontal transpose row by row
// (a gather over a zero-extended row, margins folded back onto the pixels they were read
// from) into a plane buffer, then the vertical transpose as a gather of rows.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../kernels/blur.h"
#include "../ops_common.h"
#include "huge_pages.h"
#include "vectorize.h"

namespace interp_ext {
namespace {

// Calls f(j) for the positions of a padded row (W + KW - 1 long, the row at pw) that
// lie outside the row.
template <typename F>
inline void for_margins(int64_t W, int64_t KW, F f) {
  const int64_t pw = (KW - 1) / 2;
  for (int64_t j = 0; j < pw; ++j) f(j);
  for (int64_t j = pw + W; j < W + KW - 1; ++j) f(j);
}

// Row buffers of one worker: a padded row (W + KW - 1), and row pointers and weights
// for up to `taps` terms.
template <typename T>
struct RowBuffers {
  std::vector<T> padded, weights;
  std::vector<const T*> rows;
  RowBuffers(int64_t padded_len, int64_t taps) : padded(padded_len), weights(taps), rows(taps) {}
};

// One plane: out = H(V(in)).
template <typename T>
INTERP_EXT_CLONES void filter_plane(const T* in, T* out, int64_t H, int64_t W, const T* kh, int64_t KH, const T* kw,
                                    int64_t KW, BorderMode mode, RowBuffers<T>& buf) {
  const int64_t ph = (KH - 1) / 2, pw = (KW - 1) / 2;
  T* padded = buf.padded.data();
  const T** rows = buf.rows.data();
  for (int64_t y = 0; y < H; ++y) {
    int64_t n = 0;
    for (int64_t t = 0; t < KH; ++t) {
      const int64_t m = border_index(y + t - ph, H, mode);
      if (m < 0) continue;  // a zero row
      rows[n] = in + m * W;
      buf.weights[n++] = kh[t];
    }
    weighted_rows(padded + pw, rows, buf.weights.data(), n, W);
    for_margins(W, KW, [&](int64_t j) {
      const int64_t m = border_index(j - pw, W, mode);
      padded[j] = m >= 0 ? padded[pw + m] : T(0);
    });
    for (int64_t s = 0; s < KW; ++s) rows[s] = padded + s;
    weighted_rows(out + y * W, rows, kw, KW, W);
  }
}

// One plane: grad_in = V^T(H^T(grad_out)). `padded` is 2 (KW - 1) + W long: the
// zero-extended gradient row, then the W + KW - 1 transposed values.
template <typename T>
INTERP_EXT_CLONES void filter_plane_adjoint(const T* g, T* out, int64_t H, int64_t W, const T* kh, const T* kw,
                                            int64_t KW, BorderMode mode, const int32_t* h_offsets,
                                            const int32_t* h_pairs, T* plane, RowBuffers<T>& buf) {
  const int64_t pw = (KW - 1) / 2, wide = W + KW - 1;
  T* zext = buf.padded.data();  // KW - 1 zeros, the row, KW - 1 zeros
  T* padded = zext + W + 2 * (KW - 1);
  const T** rows = buf.rows.data();
  std::fill(zext, zext + KW - 1, T(0));
  std::fill(zext + KW - 1 + W, zext + W + 2 * (KW - 1), T(0));
  for (int64_t y = 0; y < H; ++y) {
    // padded[p] = sum_s kw[s] g[p - s]: the transpose of out[j] = sum_s kw[s] padded[j + s].
    std::copy(g + y * W, g + (y + 1) * W, zext + KW - 1);
    for (int64_t s = 0; s < KW; ++s) rows[s] = zext + KW - 1 - s;
    weighted_rows(padded, rows, kw, KW, wide);
    T* r = plane + y * W;
    std::copy(padded + pw, padded + pw + W, r);
    for_margins(W, KW, [&](int64_t j) {  // margins fold back onto the pixels they were read from
      const int64_t m = border_index(j - pw, W, mode);
      if (m >= 0) r[m] += padded[j];
    });
  }
  for (int64_t m = 0; m < H; ++m) {
    int64_t n = 0;
    for (int32_t e = h_offsets[m]; e < h_offsets[m + 1]; ++e, ++n) {
      rows[n] = plane + int64_t{h_pairs[2 * e]} * W;
      buf.weights[n] = kh[h_pairs[2 * e + 1]];
    }
    weighted_rows(out + m * W, rows, buf.weights.data(), n, W);
  }
}

// Runs `chunk(begin, end, in, out)` over the planes of x in parallel, writing `out`
// (x's shape and dtype, any layout): directly when out is contiguous, in the compute
// type (float64 for float64, else float32) and does not overlap x; else through a
// temporary copied into it (so out may even be x). Workers own their buffers.
template <typename Chunk>
void filter_into(const at::Tensor& x, at::Tensor& out, Chunk chunk) {
  if (out.numel() == 0) return;
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = x.to(compute).contiguous();
  const bool direct = out.is_contiguous() && out.scalar_type() == compute &&
                      at::get_overlap_status(out, xc) == at::MemOverlapStatus::No;
  at::Tensor dst = direct ? out : empty_prefer_huge_pages(x.sizes(), xc.options());
  AT_DISPATCH_FLOATING_TYPES(compute, "separable_filter_cpu", [&] {
    const int64_t HW = x.size(2) * x.size(3);
    at::parallel_for(0, x.size(0) * x.size(1), 1, [&](int64_t begin, int64_t end) {
      chunk(begin, end, xc.const_data_ptr<scalar_t>() + begin * HW, dst.mutable_data_ptr<scalar_t>() + begin * HW);
    });
  });
  if (!direct) out.copy_(dst);
}

// The taps of sample n: row n of a per-sample (N, k) tensor, else row 0.
template <typename T>
const T* taps_of(const at::Tensor& taps, int64_t n) {
  return taps.const_data_ptr<T>() + (taps.size(0) > 1 ? n : 0) * taps.size(1);
}

void separable_filter_out_cpu(const at::Tensor& x, const at::Tensor& taps_h, const at::Tensor& taps_w,
                              c10::string_view padding, at::Tensor& out) {
  const BorderMode mode = check_separable_filter_args("separable_filter", x, taps_h, taps_w, padding);
  check_out("separable_filter", out, x);
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), KH = taps_h.size(1), KW = taps_w.size(1);
  const at::Tensor th = taps_h.contiguous(), tw = taps_w.contiguous();
  filter_into(x, out, [&](int64_t begin, int64_t end, const auto* in, auto* dst) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
    RowBuffers<T> buf(W + KW - 1, std::max(KH, KW));
    for (int64_t p = begin; p < end; ++p, in += H * W, dst += H * W)
      filter_plane<T>(in, dst, H, W, taps_of<T>(th, p / C), KH, taps_of<T>(tw, p / C), KW, mode, buf);
  });
}

at::Tensor separable_filter_cpu(const at::Tensor& x, const at::Tensor& taps_h, const at::Tensor& taps_w,
                                c10::string_view padding) {
  at::Tensor out = empty_prefer_huge_pages(x.sizes(), x.options());
  separable_filter_out_cpu(x, taps_h, taps_w, padding, out);
  return out;
}

at::Tensor separable_filter_backward_cpu(const at::Tensor& grad, const at::Tensor& taps_h, const at::Tensor& taps_w,
                                         c10::string_view padding) {
  const BorderMode mode = check_separable_filter_args("separable_filter_backward", grad, taps_h, taps_w, padding);
  const int64_t C = grad.size(1), H = grad.size(2), W = grad.size(3), KH = taps_h.size(1), KW = taps_w.size(1);
  check_adjoint_size("separable_filter_backward", H, KH, "H");
  if (grad.numel() == 0) return at::empty_like(grad, at::MemoryFormat::Contiguous);
  const at::Tensor th = taps_h.contiguous(), tw = taps_w.contiguous();
  std::vector<int32_t> h_offsets, h_pairs;
  adjoint_pairs(H, KH, mode, h_offsets, h_pairs);
  int64_t most_terms = KW;  // rows a vertical-transpose output sums (many when the kernel wraps)
  for (int64_t m = 0; m < H; ++m) most_terms = std::max<int64_t>(most_terms, h_offsets[m + 1] - h_offsets[m]);
  at::Tensor out = empty_prefer_huge_pages(grad.sizes(), grad.options());
  filter_into(grad, out, [&](int64_t begin, int64_t end, const auto* g, auto* dst) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
    RowBuffers<T> buf(2 * (W + 2 * (KW - 1)), most_terms);
    std::vector<T> plane(H * W);
    for (int64_t p = begin; p < end; ++p, g += H * W, dst += H * W)
      filter_plane_adjoint<T>(g, dst, H, W, taps_of<T>(th, p / C), taps_of<T>(tw, p / C), KW, mode, h_offsets.data(),
                              h_pairs.data(), plane.data(), buf);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) {
  m.impl("separable_filter", &separable_filter_cpu);
  m.impl("separable_filter.out", &separable_filter_out_cpu);
  m.impl("separable_filter_backward", &separable_filter_backward_cpu);
}

}  // namespace interp_ext
