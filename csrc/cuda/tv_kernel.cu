// CUDA kernels of the total-variation regulariser: per-(plane, chunk) block sums in the
// accumulation type, summed per sample by ATen (no atomics), and the gradient as one
// thread per pixel gathering its own and its left and upper neighbours' terms.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../kernels/tv.h"
#include "../ops_common.h"
#include "launch.h"

namespace interp_ext {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void tv_partial_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ partial, int64_t planes,
                                  int64_t H, int64_t W, int64_t chunk, acc_t beta) {
  __shared__ acc_t warp_sums[kThreads / 32];
  const int64_t HW = H * W;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < HW ? begin + chunk : HW;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {  // gridDim.y is capped at 65535
    const scalar_t* p = x + plane * HW;
    acc_t s = 0;
    for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
      acc_t dx, dy;
      tv_differences(p, H, W, e / W, e % W, dx, dy);
      s += tv_term(dx, dy, beta);
    }
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffff, s, off);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
      s = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : acc_t(0);
      for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffff, s, off);
      if (threadIdx.x == 0) partial[plane * gridDim.x + blockIdx.x] = s;
    }
    __syncthreads();  // warp_sums is reused by the next plane
  }
}

template <typename scalar_t, typename acc_t>
__global__ void tv_backward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                                   scalar_t* __restrict__ out, int64_t C, int64_t H, int64_t W, acc_t beta,
                                   int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t plane = e / (H * W), r = e % (H * W), i = r / W, j = r % W;
    const acc_t g = tv_gradient<acc_t>(x + plane * H * W, H, W, i, j, beta);
    out[e] = static_cast<scalar_t>(static_cast<acc_t>(grad[plane / C]) * g);
  }
}

at::Tensor total_variation_cuda(const at::Tensor& x, double beta) {
  check_total_variation_args("total_variation", x, beta);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (xc.numel() == 0) return at::zeros({N}, x.options());
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "total_variation_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t chunk = std::max<int64_t>(kThreads * 8, (HW + 63) / 64);
    const int64_t chunks = (HW + chunk - 1) / chunk;
    at::Tensor partial = at::empty({N * C, chunks}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    tv_partial_kernel<scalar_t, acc_t><<<dim3(chunks, grid_yz(N * C)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), N * C, x.size(2), x.size(3), chunk,
        static_cast<acc_t>(beta));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    result = partial.view({N, -1}).sum(1).to(x.scalar_type());
  });
  return result;
}

at::Tensor total_variation_backward_cuda(const at::Tensor& grad, const at::Tensor& x, double beta) {
  check_total_variation_backward_args(grad, x, beta);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), gc = grad.to(x.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(xc);
  if (out.numel() == 0) return out;
  const int64_t blocks = blocks_for(out.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "total_variation_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    tv_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), x.size(1),
        x.size(2), x.size(3), static_cast<acc_t>(beta), out.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) {
  m.impl("total_variation", &total_variation_cuda);
  m.impl("total_variation_backward", &total_variation_backward_cuda);
}

}  // namespace interp_ext
