// CPU kernels of the total-variation regulariser: per-sample values (a sum per plane,
// accumulated in float64 row by row) and the gradient (each pixel gathers its own and
// its left and upper neighbours' terms: no scatter), row by row with loops along the
// row that vectorise.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../kernels/tv.h"
#include "../ops_common.h"
#include "vectorize.h"

namespace interp_ext {
namespace {

// Row i of a plane: dx (0 in the last column), dy (0 on the last row), as loops along
// the row that vectorise.
template <typename T>
inline void row_differences(const T* p, int64_t H, int64_t W, int64_t i, T* dx, T* dy) {
  const T* r = p + i * W;
#pragma omp simd
  for (int64_t j = 0; j < W - 1; ++j) dx[j] = r[j + 1] - r[j];
  dx[W - 1] = T(0);
  if (i + 1 < H) {
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) dy[j] = r[j + W] - r[j];
  } else {
    std::fill(dy, dy + W, T(0));
  }
}

template <typename T>
INTERP_EXT_CLONES double tv_plane(const T* p, int64_t H, int64_t W, T beta, T* dx, T* dy) {
  double total = 0;
  for (int64_t i = 0; i < H; ++i) {
    row_differences(p, H, W, i, dx, dy);
    T s = 0;
    if (beta == T(2)) {
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < W; ++j) s += dx[j] * dx[j] + dy[j] * dy[j];
    } else {
      for (int64_t j = 0; j < W; ++j) s += tv_term(dx[j], dy[j], beta);
    }
    total += s;
  }
  return total;
}

// grad[i][j] = g * (-(a[i][j] + b[i][j]) + a[i][j-1] + b[i-1][j]) with a = slope * dx,
// b = slope * dy: the pixel's own term and its left and upper neighbours' (tv.h).
template <typename T>
INTERP_EXT_CLONES void tv_plane_backward(const T* p, T* out, int64_t H, int64_t W, T beta, T g, T* dx, T* dy,
                                         T* b_prev) {
  std::fill(b_prev, b_prev + W, T(0));
  for (int64_t i = 0; i < H; ++i) {
    row_differences(p, H, W, i, dx, dy);
    for (int64_t j = 0; j < W; ++j) {  // dx, dy become a, b in place
      const T slope = tv_slope(dx[j], dy[j], beta);
      dx[j] *= slope;
      dy[j] *= slope;
    }
    T* o = out + i * W;
    o[0] = g * (-(dx[0] + dy[0]) + b_prev[0]);
#pragma omp simd
    for (int64_t j = 1; j < W; ++j) o[j] = g * (-(dx[j] + dy[j]) + dx[j - 1] + b_prev[j]);
    std::copy(dy, dy + W, b_prev);
  }
}

at::Tensor total_variation_cpu(const at::Tensor& x, double beta) {
  check_total_variation_args("total_variation", x, beta);
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = x.to(compute).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (xc.numel() == 0) return at::zeros({N}, x.options());  // (plane sums of (2^16, 2^14, 0, 1) would be 8 GB)
  std::vector<double> plane_sums(N * C, 0.0);
  {
    AT_DISPATCH_FLOATING_TYPES(compute, "total_variation_cpu", [&] {
      const scalar_t* base = xc.const_data_ptr<scalar_t>();
      at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> dx(W), dy(W);
        for (int64_t p = begin; p < end; ++p)
          plane_sums[p] = tv_plane<scalar_t>(base + p * H * W, H, W, static_cast<scalar_t>(beta), dx.data(), dy.data());
      });
    });
  }
  at::Tensor out = at::empty({N}, x.options().dtype(at::kDouble));
  double* op = out.mutable_data_ptr<double>();
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += plane_sums[n * C + c];
    op[n] = s;
  }
  return out.to(x.scalar_type());
}

at::Tensor total_variation_backward_cpu(const at::Tensor& grad, const at::Tensor& x, double beta) {
  check_total_variation_backward_args(grad, x, beta);
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = x.to(compute).contiguous(), gc = grad.to(compute).contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(compute, "total_variation_backward_cpu", [&] {
      const scalar_t* base = xc.const_data_ptr<scalar_t>();
      const scalar_t* g = gc.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, x.size(0) * C, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> dx(W), dy(W), b_prev(W);
        for (int64_t p = begin; p < end; ++p)
          tv_plane_backward<scalar_t>(base + p * H * W, o + p * H * W, H, W, static_cast<scalar_t>(beta), g[p / C],
                                      dx.data(), dy.data(), b_prev.data());
      });
    });
  }
  return out.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) {
  m.impl("total_variation", &total_variation_cpu);
  m.impl("total_variation_backward", &total_variation_backward_cpu);
}

}  // namespace interp_ext
