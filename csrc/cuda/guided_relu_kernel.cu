// CUDA kernels: guided / deconvnet rectifier backward and the saliency reduction.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "../kernels/guided_relu.h"
#include "../ops_common.h"
#include "launch.h"

namespace interp_ext {
namespace {

// A 16-byte packet of VEC elements, loaded and stored with one instruction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Packet {
  T v[VEC];
};

template <typename scalar_t, RectifierRule Rule>
__device__ __forceinline__ scalar_t rectifier_grad(scalar_t g, scalar_t x, at::opmath_type<scalar_t> upper) {
  using opmath_t = at::opmath_type<scalar_t>;
  if constexpr (Rule == RectifierRule::Deconvnet) {
    return static_cast<scalar_t>(deconvnet_grad<opmath_t>(static_cast<opmath_t>(g)));
  } else {
    return static_cast<scalar_t>(
        guided_grad<opmath_t>(static_cast<opmath_t>(g), static_cast<opmath_t>(x), upper));
  }
}

template <typename scalar_t, int VEC, RectifierRule Rule>
__global__ void guided_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                       scalar_t* __restrict__ out, int64_t n,
                                       at::opmath_type<scalar_t> upper) {
  using P = Packet<scalar_t, VEC>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packets = n / VEC;
  for (int64_t i = tid; i < packets; i += stride) {
    const P gp = reinterpret_cast<const P*>(g)[i];
    P xp;
    if constexpr (Rule == RectifierRule::Guided) xp = reinterpret_cast<const P*>(x)[i];
    P op;
#pragma unroll
    for (int k = 0; k < VEC; ++k) op.v[k] = rectifier_grad<scalar_t, Rule>(gp.v[k], xp.v[k], upper);
    reinterpret_cast<P*>(out)[i] = op;
  }
  for (int64_t i = packets * VEC + tid; i < n; i += stride) {
    out[i] = rectifier_grad<scalar_t, Rule>(g[i], Rule == RectifierRule::Guided ? x[i] : g[i], upper);
  }
}

template <typename scalar_t, RectifierRule Rule>
void launch_guided_backward(const scalar_t* g, const scalar_t* x, scalar_t* out, int64_t n, double upper) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool aligned = [&] {
    for (const void* p : {static_cast<const void*>(g), static_cast<const void*>(x), static_cast<const void*>(out)})
      if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
    return true;
  }();
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto u = upper_bound_in<scalar_t, at::opmath_type<scalar_t>>(upper);
  if (aligned) {
    guided_backward_kernel<scalar_t, kVec, Rule><<<blocks_for(n / kVec + 1), kThreads, 0, stream>>>(g, x, out, n, u);
  } else {
    guided_backward_kernel<scalar_t, 1, Rule><<<blocks_for(n), kThreads, 0, stream>>>(g, x, out, n, u);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One thread per output pixel; adjacent threads read adjacent pixels of each channel.
template <typename scalar_t>
__global__ void saliency_reduce_kernel(const scalar_t* __restrict__ g, scalar_t* __restrict__ out,
                                       int64_t channels, int64_t plane, int64_t total) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / plane, p = i - n * plane;
    const scalar_t* src = g + n * channels * plane + p;
    opmath_t m = 0;
    for (int64_t c = 0; c < channels; ++c) m = abs_max<opmath_t>(m, static_cast<opmath_t>(src[c * plane]));
    out[i] = static_cast<scalar_t>(m);
  }
}

}  // namespace

void guided_relu_backward_out_cuda(const at::Tensor& grad_output, const at::Tensor& x,
                                   c10::optional<double> upper, c10::string_view rule, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const GuidedBackwardArgs a = prepare_guided_backward(grad_output, x, upper, rule, out);
  if (a.g.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.g.scalar_type(), "guided_relu_backward_cuda", [&] {
    const scalar_t* gp = a.g.const_data_ptr<scalar_t>();
    const scalar_t* xp = a.x.const_data_ptr<scalar_t>();
    scalar_t* op = a.dst.mutable_data_ptr<scalar_t>();
    if (a.rule == RectifierRule::Deconvnet) {
      launch_guided_backward<scalar_t, RectifierRule::Deconvnet>(gp, xp, op, a.g.numel(), a.upper);
    } else {
      launch_guided_backward<scalar_t, RectifierRule::Guided>(gp, xp, op, a.g.numel(), a.upper);
    }
  });
  a.finish();
}

at::Tensor guided_relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& x,
                                     c10::optional<double> upper, c10::string_view rule) {
  check_guided_backward_args(grad_output, x);
  at::Tensor out = at::empty_like(grad_output);  // its layout when dense (channels-last stays), else contiguous
  guided_relu_backward_out_cuda(grad_output, x, upper, rule, out);
  return out;
}

at::Tensor saliency_reduce_cuda(const at::Tensor& grad) {
  check_saliency_args(grad);
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor out = saliency_output(grad);
  if (out.numel() == 0) return out;
  const at::Tensor g_ = grad.contiguous();
  const int64_t channels = g_.size(1);
  const int64_t plane = g_.size(2) * g_.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g_.scalar_type(), "saliency_reduce_cuda", [&] {
    saliency_reduce_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g_.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), channels, plane, out.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::string cuda_runtime_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
}

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) {
  m.impl("guided_relu", &guided_relu_forward);
  m.impl("guided_relu_backward", &guided_relu_backward_cuda);
  m.impl("guided_relu_backward.out", &guided_relu_backward_out_cuda);
  m.impl("saliency_reduce", &saliency_reduce_cuda);
}

}  // namespace interp_ext
