// CPU kernel of the fused Yosinski et al. regularisation step (in place): one pass for
// the per-pixel norm and contribution of the updated image, per-sample percentiles by
// ATen quantile, one pass that writes the image. Parallel over samples x rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../kernels/regularize.h"
#include "../ops_common.h"

namespace interp_ext {
namespace {

void regularize_step_cpu(at::Tensor& x, const at::Tensor& grad, double lr, double decay, double grad_pct,
                         double norm_pct, double contrib_pct) {
  check_regularize_args(x, grad, lr, decay, grad_pct, norm_pct, contrib_pct);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.numel() == 0) return;
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor xc = x.to(compute).contiguous();
  const at::Tensor gc = grad.to(compute).contiguous();
  const at::Tensor tg = percentile_per_sample(gc.abs().view({N, -1}), grad_pct);
  const bool clip_pixels = norm_pct > 0 || contrib_pct > 0;
  AT_DISPATCH_FLOATING_TYPES(compute, "regularize_step_cpu", [&] {
    scalar_t* xp = xc.mutable_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* tgp = tg.const_data_ptr<scalar_t>();
    const scalar_t lr_ = static_cast<scalar_t>(lr), decay_ = static_cast<scalar_t>(decay);
    at::Tensor keep;
    if (clip_pixels) {
      at::Tensor norms = at::empty({N, HW}, xc.options()), contrib = at::empty({N, HW}, xc.options());
      scalar_t* np_ = norms.mutable_data_ptr<scalar_t>();
      scalar_t* cp = contrib.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, N * HW, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t n = e / HW, pix = e % HW;
          scalar_t sq = 0, ct = 0;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t i = (n * C + c) * HW + pix;
            const scalar_t v = regularized_value(xp[i], gp[i], tgp[n], lr_, decay_);
            sq += v * v;
            ct += std::abs(v * gp[i]);
          }
          np_[e] = std::sqrt(sq);
          cp[e] = ct;
        }
      });
      keep = (norms >= percentile_per_sample(norms, norm_pct).unsqueeze(1)) &
             (contrib >= percentile_per_sample(contrib, contrib_pct).unsqueeze(1));
      keep = keep.contiguous();
    }
    const bool* kp = clip_pixels ? keep.const_data_ptr<bool>() : nullptr;
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C;
        scalar_t* dst = xp + plane * HW;
        const scalar_t* g = gp + plane * HW;
        for (int64_t pix = 0; pix < HW; ++pix) {
          const scalar_t v = regularized_value(dst[pix], g[pix], tgp[n], lr_, decay_);
          dst[pix] = (kp == nullptr || kp[n * HW + pix]) ? v : scalar_t(0);
        }
      }
    });
  });
  x.copy_(xc);
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) { m.impl("regularize_step_", &regularize_step_cpu); }

}  // namespace interp_ext
