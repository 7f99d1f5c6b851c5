// CUDA kernels of the separable filter (Gaussian blur) and its adjoint. Forward, for
// kernels up to 33 taps per axis: one launch; each block loads a 32x32 output tile plus
// its halo into shared memory with the border indexing done in the loads (no padded
// copy), filters vertically into a second shared buffer, then horizontally. Wider
// kernels: a vertical and a horizontal pass through a float temporary. Backward: the
// exact adjoint in two gather passes over (output, tap) lists per coordinate (no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../kernels/blur.h"
#include "../ops_common.h"
#include "launch.h"

namespace interp_ext {
namespace {

constexpr int kTile = 32;
constexpr int kMaxTiledTaps = 33;  // (32 + 32)^2 + 32 * 64 float64 values = 48 KiB of shared memory

template <typename scalar_t, typename acc_t>
__global__ void filter_tile_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                   const acc_t* __restrict__ taps_h, const acc_t* __restrict__ taps_w, int64_t planes,
                                   int64_t C, int64_t H, int64_t W, int KH, int KW, bool per_h, bool per_w,
                                   BorderMode mode) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);
  const int TH = kTile + KH - 1, TW = kTile + KW - 1;
  acc_t* mid = tile + TH * TW;  // kTile x TW
  const int ph = (KH - 1) / 2, pw = (KW - 1) / 2;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nthreads = blockDim.x * blockDim.y;
  const int64_t x0 = static_cast<int64_t>(blockIdx.x) * kTile;
  // gridDim.y and gridDim.z are capped at 65535: both loop (uniform bounds, so the
  // __syncthreads below are reached by the whole block)
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z)
  for (int64_t y0 = static_cast<int64_t>(blockIdx.y) * kTile; y0 < H; y0 += static_cast<int64_t>(gridDim.y) * kTile) {
    const int64_t n = plane / C;
    const scalar_t* src = x + plane * H * W;
    const acc_t* kh = taps_h + (per_h ? n : 0) * KH;
    const acc_t* kw = taps_w + (per_w ? n : 0) * KW;
    for (int i = tid; i < TH * TW; i += nthreads) {
      const int64_t yy = border_index(y0 + i / TW - ph, H, mode), xx = border_index(x0 + i % TW - pw, W, mode);
      tile[i] = (yy >= 0 && xx >= 0) ? static_cast<acc_t>(src[yy * W + xx]) : acc_t(0);
    }
    __syncthreads();
    for (int i = tid; i < kTile * TW; i += nthreads) {
      const int r = i / TW, c = i % TW;
      acc_t s = 0;
      for (int t = 0; t < KH; ++t) s += kh[t] * tile[(r + t) * TW + c];
      mid[i] = s;
    }
    __syncthreads();
    for (int i = tid; i < kTile * kTile; i += nthreads) {
      const int r = i / kTile, c = i % kTile;
      const int64_t yy = y0 + r, xx = x0 + c;
      if (yy < H && xx < W) {
        acc_t s = 0;
        for (int t = 0; t < KW; ++t) s += kw[t] * mid[r * TW + c + t];
        out[plane * H * W + yy * W + xx] = static_cast<scalar_t>(s);
      }
    }
    __syncthreads();  // the next plane reuses the shared buffers
  }
}

// One axis of the wide-kernel path: out[p, y, x] = sum_t taps[t] * in[p, along(y or x) + t - left].
template <typename in_t, typename out_t, typename acc_t>
__global__ void filter_axis_kernel(const in_t* __restrict__ in, out_t* __restrict__ out, const acc_t* __restrict__ taps,
                                   int64_t C, int64_t H, int64_t W, int K, bool per_sample, bool vertical,
                                   BorderMode mode, int64_t total) {
  const int left = (K - 1) / 2;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t xx = i % W, yy = (i / W) % H, plane = i / (H * W);
    const acc_t* k = taps + (per_sample ? plane / C : 0) * K;
    const in_t* src = in + plane * H * W;
    acc_t s = 0;
    for (int t = 0; t < K; ++t) {
      const int64_t m = border_index((vertical ? yy : xx) + t - left, vertical ? H : W, mode);
      if (m >= 0) s += k[t] * static_cast<acc_t>(vertical ? src[m * W + xx] : src[yy * W + m]);
    }
    out[i] = static_cast<out_t>(s);
  }
}

// One axis of the adjoint: out[p, .., m, ..] = sum over (i, t) in the list of m of
// taps[t] * in[p, .., i, ..].
template <typename in_t, typename out_t, typename acc_t>
__global__ void adjoint_axis_kernel(const in_t* __restrict__ in, out_t* __restrict__ out,
                                    const acc_t* __restrict__ taps, const int32_t* __restrict__ offsets,
                                    const int32_t* __restrict__ pairs, int64_t C, int64_t H, int64_t W, int K,
                                    bool per_sample, bool vertical, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t xx = i % W, yy = (i / W) % H, plane = i / (H * W);
    const acc_t* k = taps + (per_sample ? plane / C : 0) * K;
    const in_t* src = in + plane * H * W;
    const int64_t m = vertical ? yy : xx;
    acc_t s = 0;
    for (int32_t e = offsets[m]; e < offsets[m + 1]; ++e) {
      const int64_t j = pairs[2 * e];
      s += k[pairs[2 * e + 1]] * static_cast<acc_t>(vertical ? src[j * W + xx] : src[yy * W + j]);
    }
    out[i] = static_cast<out_t>(s);
  }
}

// Writes `out` (x's shape and dtype, any layout): directly when it is contiguous and
// does not overlap x, else through a temporary copied into it (so out may be x).
void separable_filter_out_cuda(const at::Tensor& x, const at::Tensor& taps_h, const at::Tensor& taps_w,
                               c10::string_view padding, at::Tensor& out_arg) {
  const BorderMode mode = check_separable_filter_args("separable_filter", x, taps_h, taps_w, padding);
  check_out("separable_filter", out_arg, x);
  if (out_arg.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), th = taps_h.contiguous(), tw = taps_w.contiguous();
  const bool direct = out_arg.is_contiguous() && at::get_overlap_status(out_arg, xc) == at::MemOverlapStatus::No;
  at::Tensor out = direct ? out_arg : at::empty_like(xc);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int KH = static_cast<int>(th.size(1)), KW = static_cast<int>(tw.size(1));
  const bool per_h = th.size(0) > 1, per_w = tw.size(0) > 1;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "separable_filter_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (KH <= kMaxTiledTaps && KW <= kMaxTiledTaps) {
      const size_t smem = sizeof(acc_t) * ((kTile + KH - 1) * (kTile + KW - 1) + kTile * (kTile + KW - 1));
      const dim3 grid((W + kTile - 1) / kTile, grid_yz((H + kTile - 1) / kTile), grid_yz(N * C));
      filter_tile_kernel<scalar_t, acc_t><<<grid, dim3(32, 8), smem, stream>>>(
          xc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), th.const_data_ptr<acc_t>(),
          tw.const_data_ptr<acc_t>(), N * C, C, H, W, KH, KW, per_h, per_w, mode);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      at::Tensor mid = at::empty(xc.sizes(), xc.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      const int64_t total = xc.numel();
      filter_axis_kernel<scalar_t, acc_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
          xc.const_data_ptr<scalar_t>(), mid.mutable_data_ptr<acc_t>(), th.const_data_ptr<acc_t>(), C, H, W, KH,
          per_h, true, mode, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      filter_axis_kernel<acc_t, scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
          mid.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), tw.const_data_ptr<acc_t>(), C, H, W, KW,
          per_w, false, mode, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (!direct) out_arg.copy_(out);
}

at::Tensor separable_filter_cuda(const at::Tensor& x, const at::Tensor& taps_h, const at::Tensor& taps_w,
                                 c10::string_view padding) {
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  separable_filter_out_cuda(x, taps_h, taps_w, padding, out);
  return out;
}

at::Tensor device_ints(const std::vector<int32_t>& v, const at::Device& device) {
  return at::tensor(v, at::TensorOptions().dtype(at::kInt)).to(device);
}

at::Tensor separable_filter_backward_cuda(const at::Tensor& grad, const at::Tensor& taps_h, const at::Tensor& taps_w,
                                          c10::string_view padding) {
  const BorderMode mode = check_separable_filter_args("separable_filter_backward", grad, taps_h, taps_w, padding);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous(), th = taps_h.contiguous(), tw = taps_w.contiguous();
  at::Tensor out = at::empty_like(g);
  if (out.numel() == 0) return out;
  const int64_t C = g.size(1), H = g.size(2), W = g.size(3);
  check_adjoint_size("separable_filter_backward", H, th.size(1), "H");
  check_adjoint_size("separable_filter_backward", W, tw.size(1), "W");
  const int KH = static_cast<int>(th.size(1)), KW = static_cast<int>(tw.size(1));
  std::vector<int32_t> h_off, h_pairs, w_off, w_pairs;
  adjoint_pairs(H, KH, mode, h_off, h_pairs);
  adjoint_pairs(W, KW, mode, w_off, w_pairs);
  const at::Tensor dh_off = device_ints(h_off, g.device()), dh_pairs = device_ints(h_pairs, g.device());
  const at::Tensor dw_off = device_ints(w_off, g.device()), dw_pairs = device_ints(w_pairs, g.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "separable_filter_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor mid = at::empty(g.sizes(), g.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const int64_t total = g.numel();
    adjoint_axis_kernel<scalar_t, acc_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), mid.mutable_data_ptr<acc_t>(), tw.const_data_ptr<acc_t>(),
        dw_off.const_data_ptr<int32_t>(), dw_pairs.const_data_ptr<int32_t>(), C, H, W, KW, tw.size(0) > 1, false,
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    adjoint_axis_kernel<acc_t, scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        mid.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), th.const_data_ptr<acc_t>(),
        dh_off.const_data_ptr<int32_t>(), dh_pairs.const_data_ptr<int32_t>(), C, H, W, KH, th.size(0) > 1, true,
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) {
  m.impl("separable_filter", &separable_filter_cuda);
  m.impl("separable_filter.out", &separable_filter_out_cuda);
  m.impl("separable_filter_backward", &separable_filter_backward_cuda);
}

}  // namespace interp_ext
