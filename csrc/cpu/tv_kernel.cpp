// CPU kernels of the total-variation regulariser: per-sample values (a sum per plane,
// accumulated in float64) and the gradient (each pixel gathers its own and its left and
// upper neighbours' terms: no scatter).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../kernels/tv.h"
#include "../ops_common.h"

namespace interp_ext {
namespace {

at::Tensor total_variation_cpu(const at::Tensor& x, double beta) {
  check_total_variation_args("total_variation", x, beta);
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = x.to(compute).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  std::vector<double> plane_sums(N * C, 0.0);
  if (xc.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(compute, "total_variation_cpu", [&] {
      const scalar_t* base = xc.const_data_ptr<scalar_t>();
      const scalar_t b = static_cast<scalar_t>(beta);
      at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const scalar_t* plane = base + p * H * W;
          double s = 0;
          for (int64_t i = 0; i < H; ++i)
            for (int64_t j = 0; j < W; ++j) {
              scalar_t dx, dy;
              tv_differences(plane, H, W, i, j, dx, dy);
              s += tv_term(dx, dy, b);
            }
          plane_sums[p] = s;
        }
      });
    });
  }
  at::Tensor out = at::empty({N}, x.options().dtype(compute));
  AT_DISPATCH_FLOATING_TYPES(compute, "total_variation_cpu_sum", [&] {
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += plane_sums[n * C + c];
      out.mutable_data_ptr<scalar_t>()[n] = static_cast<scalar_t>(s);
    }
  });
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
      const scalar_t b = static_cast<scalar_t>(beta);
      at::parallel_for(0, x.size(0) * C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const scalar_t* plane = base + p * H * W;
          const scalar_t gn = g[p / C];
          for (int64_t i = 0; i < H; ++i)
            for (int64_t j = 0; j < W; ++j) o[p * H * W + i * W + j] = gn * tv_gradient(plane, H, W, i, j, b);
        }
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
