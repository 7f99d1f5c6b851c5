// CUDA kernel of patch_splice (the read boxes of incremental occlusion): one thread per
// output element, grid-stride, each element written once from the padding value, the
// patch or the map, by the same row geometry as the CPU kernel (kernels/patch_splice.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../kernels/patch_splice.h"
#include "../patch_splice.h"
#include "launch.h"

namespace interp_ext {
namespace {

template <typename scalar_t>
__global__ void patch_splice_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ sample,
                                    const int64_t* __restrict__ origin, const scalar_t* __restrict__ patch,
                                    const int64_t* __restrict__ patch_origin, scalar_t* __restrict__ out, int64_t C,
                                    int64_t H, int64_t W, int64_t h, int64_t w, int64_t ph, int64_t pw, scalar_t pad,
                                    int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t j = e % w, i = (e / w) % h, plane = e / (w * h);
    const int64_t k = plane / C, c = plane % C;
    const int64_t y = origin[2 * k] + i, ox = origin[2 * k + 1];
    if (y < 0 || y >= H) {
      out[e] = pad;
      continue;
    }
    const int64_t py = patch ? patch_origin[2 * k] : 0, px = patch ? patch_origin[2 * k + 1] : 0;
    const SpliceRow r = splice_row(ox, w, W, patch && y >= py && y < py + ph, px, pw);
    switch (splice_source(r, j)) {
      case SpliceSource::Pad:
        out[e] = pad;
        break;
      case SpliceSource::Patch:
        out[e] = patch[(plane * ph + (y - py)) * pw + (ox + j - px)];
        break;
      default:
        out[e] = src[((sample[k] * C + c) * H + y) * W + (ox + j)];
    }
  }
}

void patch_splice_into(const at::Tensor& src, const at::Tensor& sample, const at::Tensor& origin, double pad_value,
                       const c10::optional<at::Tensor>& patch, const c10::optional<at::Tensor>& patch_origin,
                       at::Tensor& dst) {
  const c10::cuda::CUDAGuard guard(src.device());
  if (dst.numel() == 0) return;
  const at::Tensor src_ = src.contiguous(), sample_ = sample.contiguous(), origin_ = origin.contiguous();
  at::Tensor patch_, porigin_;
  if (patch.has_value()) {
    patch_ = patch->contiguous();
    porigin_ = patch_origin->contiguous();
  }
  const bool has_patch = patch.has_value();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src_.scalar_type(), "patch_splice_cuda", [&] {
    patch_splice_kernel<scalar_t><<<blocks_for(dst.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        src_.const_data_ptr<scalar_t>(), sample_.const_data_ptr<int64_t>(), origin_.const_data_ptr<int64_t>(),
        has_patch ? patch_.const_data_ptr<scalar_t>() : nullptr,
        has_patch ? porigin_.const_data_ptr<int64_t>() : nullptr, dst.mutable_data_ptr<scalar_t>(), src_.size(1),
        src_.size(2), src_.size(3), dst.size(2), dst.size(3), has_patch ? patch_.size(2) : 0,
        has_patch ? patch_.size(3) : 0, static_cast<scalar_t>(pad_value), dst.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) {
  m.impl("patch_splice", &patch_splice_functional<&patch_splice_into>);
  m.impl("patch_splice.out", &patch_splice_out<&patch_splice_into>);
}

}  // namespace interp_ext
