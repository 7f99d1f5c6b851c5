// CUDA kernel of the fused Yosinski et al. regularisation step (in place): a per-pixel
// pass for the norm and contribution of the updated image, per-sample percentiles by
// ATen quantile on the device (no host round trip), then one pass writing the image.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../kernels/regularize.h"
#include "../ops_common.h"
#include "launch.h"

namespace interp_ext {
namespace {

// Per-row p-th percentile of a (N, M) tensor (0 where p == 0: nothing is clipped), on the
// device, by ATen's quantile (linear interpolation).
at::Tensor percentile_per_sample(const at::Tensor& values, double pct) {
  if (pct <= 0 || values.size(1) == 0) return at::zeros({values.size(0)}, values.options());
  return at::quantile(values, pct / 100.0, 1);
}

template <typename scalar_t, typename acc_t>
__global__ void pixel_stats_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                   const acc_t* __restrict__ tg, acc_t* __restrict__ norms, acc_t* __restrict__ contrib,
                                   int64_t C, int64_t HW, acc_t lr, acc_t decay, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t n = e / HW, pix = e % HW;
    acc_t sq = 0, ct = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = (n * C + c) * HW + pix;
      const acc_t gi = static_cast<acc_t>(g[i]);
      const acc_t v = regularized_value(static_cast<acc_t>(x[i]), gi, tg[n], lr, decay);
      sq += v * v;
      ct += fabs(v * gi);
    }
    norms[e] = sqrt(sq);
    contrib[e] = ct;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void regularize_write_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                        const acc_t* __restrict__ tg, const bool* __restrict__ keep, int64_t C,
                                        int64_t HW, acc_t lr, acc_t decay, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t n = i / (C * HW), pix = i % HW;
    const acc_t v = regularized_value(static_cast<acc_t>(x[i]), static_cast<acc_t>(g[i]), tg[n], lr, decay);
    x[i] = (keep == nullptr || keep[n * HW + pix]) ? static_cast<scalar_t>(v) : scalar_t(0);
  }
}

void regularize_step_cuda(at::Tensor& x, const at::Tensor& grad, double lr, double decay, double grad_pct,
                          double norm_pct, double contrib_pct) {
  check_regularize_args(x, grad, lr, decay, grad_pct, norm_pct, contrib_pct);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const at::Tensor gc = grad.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "regularize_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = xc.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor tg = percentile_per_sample(gc.abs().view({N, -1}).to(acc_options.dtype()), grad_pct).contiguous();
    at::Tensor keep;
    if (norm_pct > 0 || contrib_pct > 0) {
      at::Tensor norms = at::empty({N, HW}, acc_options), contrib = at::empty({N, HW}, acc_options);
      pixel_stats_kernel<scalar_t, acc_t><<<blocks_for(N * HW), kThreads, 0, stream>>>(
          xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), tg.const_data_ptr<acc_t>(),
          norms.mutable_data_ptr<acc_t>(), contrib.mutable_data_ptr<acc_t>(), C, HW, static_cast<acc_t>(lr),
          static_cast<acc_t>(decay), N * HW);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      keep = ((norms >= percentile_per_sample(norms, norm_pct).unsqueeze(1)) &
              (contrib >= percentile_per_sample(contrib, contrib_pct).unsqueeze(1)))
                 .contiguous();
    }
    regularize_write_kernel<scalar_t, acc_t><<<blocks_for(xc.numel()), kThreads, 0, stream>>>(
        xc.mutable_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), tg.const_data_ptr<acc_t>(),
        keep.defined() ? keep.const_data_ptr<bool>() : nullptr, C, HW, static_cast<acc_t>(lr),
        static_cast<acc_t>(decay), xc.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!xc.is_same(x)) x.copy_(xc);
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) { m.impl("regularize_step_", &regularize_step_cuda); }

}  // namespace interp_ext
