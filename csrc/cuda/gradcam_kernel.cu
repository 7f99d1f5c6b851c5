// CUDA kernels of the class-activation-map reduction.
//   1. channel_weights: one warp per (sample, channel) reduces the channel's gradients
//      (and activations) to its weight; skipped by the element-wise variants and CAM.
//   2. cam_finish: one block per sample forms the weighted sum over channels into a
//      plane (shared memory when it fits), applies ReLU, then writes the bilinear
//      resize with a block-wide min/max for the normalisation.
// Reads the gradients once and the activations once (twice for gradcam++ / xgradcam,
// the first time to sum them), writes the map once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../kernels/gradcam.h"
#include "../ops_common.h"
#include "launch.h"

namespace interp_ext {
namespace {

constexpr int kWarp = 32;
constexpr int kWeightWarps = 8;     // channels per block in channel_weights
constexpr int kFinishThreads = 512;
// The default dynamic shared-memory limit (48 KiB) holds cam_finish's static reduce
// scratch too (at most 16 doubles).
constexpr size_t kMaxSharedPlane = 48 * 1024 - sizeof(double) * (kFinishThreads / kWarp);

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // valid in lane 0
}

template <typename scalar_t>
__global__ void channel_weights(const scalar_t* __restrict__ A, const scalar_t* __restrict__ G,
                                at::opmath_type<scalar_t>* __restrict__ weights, int64_t batch, int64_t channels,
                                int64_t hw, CamVariant v) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kWeightWarps + threadIdx.x / kWarp;
  if (k >= channels) return;  // a whole warp: the shuffles below stay full-warp
  for (int64_t n = blockIdx.y; n < batch; n += gridDim.y) {
    const scalar_t* a = A + (n * channels + k) * hw;
    const scalar_t* g = G + (n * channels + k) * hw;
    acc_t w = 0;
    if (v == CamVariant::GradCAM) {
      acc_t s = 0;
      for (int64_t p = lane; p < hw; p += kWarp) s += static_cast<acc_t>(g[p]);
      w = warp_sum(s) / static_cast<acc_t>(hw);
    } else {
      acc_t sa = 0, sga = 0;
      for (int64_t p = lane; p < hw; p += kWarp) {
        const acc_t ap = static_cast<acc_t>(a[p]);
        sa += ap;
        sga += static_cast<acc_t>(g[p]) * ap;
      }
      sa = warp_sum(sa);
      sga = warp_sum(sga);
      if (v == CamVariant::XGradCAM) {
        w = safe_ratio(sga, sa);
      } else {  // Grad-CAM++ needs the channel sum first: broadcast it, look at g again
        sa = __shfl_sync(0xffffffffu, sa, 0);
        acc_t s = 0;
        for (int64_t p = lane; p < hw; p += kWarp) s += gradcampp_term<acc_t>(static_cast<acc_t>(g[p]), sa);
        w = warp_sum(s);
      }
    }
    if (lane == 0) weights[n * channels + k] = w;
  }
}

template <typename T>
__device__ T block_reduce(T v, bool is_max, T* scratch) {
  // warp level, then the first warp over the per-warp results
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const T o = __shfl_down_sync(0xffffffffu, v, off);
    v = is_max ? (o > v ? o : v) : (o < v ? o : v);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : scratch[0];
    for (int off = kWarp / 2; off > 0; off /= 2) {
      const T o = __shfl_down_sync(0xffffffffu, v, off);
      v = is_max ? (o > v ? o : v) : (o < v ? o : v);
    }
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  const T result = scratch[0];
  __syncthreads();  // scratch is reused by the next reduction
  return result;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kFinishThreads)
    cam_finish(const scalar_t* __restrict__ A, const scalar_t* __restrict__ G,
               const at::opmath_type<scalar_t>* __restrict__ weights, at::opmath_type<scalar_t>* __restrict__ scratch,
               scalar_t* __restrict__ out, int64_t channels, int64_t h, int64_t w, int64_t H, int64_t W, CamVariant v,
               bool relu, bool normalize, bool shared_plane) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  __shared__ acc_t reduce_scratch[kFinishThreads / kWarp];
  const int64_t n = blockIdx.x, hw = h * w;
  acc_t* cam = shared_plane ? reinterpret_cast<acc_t*>(smem_raw) : scratch + n * hw;
  const scalar_t* a = A + n * channels * hw;
  const scalar_t* g = G ? G + n * channels * hw : nullptr;
  const acc_t* wn = weights ? weights + n * channels : nullptr;

  for (int64_t p = threadIdx.x; p < hw; p += blockDim.x) {
    acc_t s = 0;
    if (is_elementwise(v)) {
      for (int64_t k = 0; k < channels; ++k)
        s += elementwise_weight<acc_t>(v, static_cast<acc_t>(g[k * hw + p])) * static_cast<acc_t>(a[k * hw + p]);
    } else {
      for (int64_t k = 0; k < channels; ++k) s += wn[k] * static_cast<acc_t>(a[k * hw + p]);
    }
    cam[p] = (relu && !(s > acc_t(0))) ? acc_t(0) : s;
  }
  __syncthreads();

  const bool resize = (H != h || W != w);
  const acc_t sy = static_cast<acc_t>(h) / static_cast<acc_t>(H), sx = static_cast<acc_t>(w) / static_cast<acc_t>(W);
  auto value_at = [&](int64_t i) -> acc_t {
    if (!resize) return cam[i];
    const int64_t y = i / W, x = i - y * W;
    return bilinear<acc_t>(cam, w, linear_tap<acc_t>(y, h, sy), linear_tap<acc_t>(x, w, sx));
  };
  const int64_t size = H * W;
  acc_t lo = 0, span = 0;
  if (normalize) {
    acc_t tlo = std::numeric_limits<acc_t>::infinity(), thi = -std::numeric_limits<acc_t>::infinity();
    for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
      const acc_t val = value_at(i);
      tlo = val < tlo ? val : tlo;
      thi = val > thi ? val : thi;
    }
    lo = block_reduce(tlo, false, reduce_scratch);
    span = block_reduce(thi, true, reduce_scratch) - lo;
  }
  scalar_t* dst = out + n * size;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
    const acc_t val = value_at(i);
    dst[i] = static_cast<scalar_t>(normalize ? min_max_normalized<acc_t>(val, lo, span) : val);
  }
}

template <typename scalar_t>
at::Tensor cam_reduce_cuda(const at::Tensor& A, const at::Tensor& G, at::Tensor weights, CamVariant v, bool relu,
                           int64_t H, int64_t W, bool normalize) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3), hw = h * w;
  at::Tensor out = at::empty({N, 1, H, W}, A.options());
  if (N == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto acc_options = A.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  if (v != CamVariant::Given && !is_elementwise(v) && K > 0) {
    weights = at::empty({N, K}, acc_options);
    const dim3 grid(static_cast<unsigned>((K + kWeightWarps - 1) / kWeightWarps), grid_yz(N));
    channel_weights<scalar_t><<<grid, kWeightWarps * kWarp, 0, stream>>>(
        A.const_data_ptr<scalar_t>(), G.const_data_ptr<scalar_t>(), weights.mutable_data_ptr<acc_t>(), N, K, hw, v);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const size_t plane_bytes = static_cast<size_t>(hw) * sizeof(acc_t);
  const bool shared_plane = plane_bytes <= kMaxSharedPlane;
  at::Tensor scratch = shared_plane ? at::Tensor() : at::empty({N, hw}, acc_options);
  cam_finish<scalar_t><<<static_cast<unsigned>(N), kFinishThreads, shared_plane ? plane_bytes : 0, stream>>>(
      A.const_data_ptr<scalar_t>(), G.defined() ? G.const_data_ptr<scalar_t>() : nullptr,
      (weights.defined() && K > 0) ? weights.const_data_ptr<acc_t>() : nullptr,
      shared_plane ? nullptr : scratch.mutable_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), K, h, w, H, W, v,
      relu, normalize, shared_plane);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gradcam_cuda(const at::Tensor& activations, const at::Tensor& gradients, c10::string_view variant,
                        bool relu, at::OptionalIntArrayRef output_size, bool normalize) {
  check_gradcam_args(activations, gradients);
  const CamVariant v = parse_cam_variant("gradcam", variant);
  const auto [H, W] = cam_output_size("gradcam", activations, output_size);
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor A = activations.contiguous(), G = gradients.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "gradcam_cuda", [&] {
    out = cam_reduce_cuda<scalar_t>(A, G, at::Tensor(), v, relu, H, W, normalize);
  });
  return out;
}

at::Tensor cam_cuda(const at::Tensor& features, const at::Tensor& fc_weight, const at::Tensor& class_idx, bool relu,
                    at::OptionalIntArrayRef output_size, bool normalize) {
  check_cam_args(features, fc_weight, class_idx);
  const auto [H, W] = cam_output_size("cam", features, output_size);
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor A = features.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "cam_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor given =
        fc_weight.index_select(0, class_idx).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    out = cam_reduce_cuda<scalar_t>(A, at::Tensor(), given, CamVariant::Given, relu, H, W, normalize);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) {
  m.impl("gradcam", &gradcam_cuda);
  m.impl("cam", &cam_cuda);
}

}  // namespace interp_ext
