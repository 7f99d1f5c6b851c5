// CUDA kernels of occlusion: the occluded batch (one thread per output element, each
// written once) and the per-element mean of window scores (a gather from the
// summed-area table built with ATen cumsum; no atomics); the feature-subset batch of
// Shapley sampling (one thread per output element, a lookup of its feature id).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../kernels/occlusion.h"
#include "../ops_common.h"
#include "launch.h"

namespace interp_ext {

namespace {

template <typename scalar_t>
__global__ void occlusion_batch_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ base,
                                       scalar_t* __restrict__ out, WindowGrid g, int64_t N, int64_t start,
                                       const int64_t* __restrict__ ids, int64_t total, bool per_sample_baseline) {
  const int64_t C = g.size[0], H = g.size[1], W = g.size[2];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t xw = i % W, y = (i / W) % H, c = (i / (W * H)) % C, n = (i / (W * H * C)) % N;
    const int64_t j = i / (W * H * C * N);
    int64_t o[3];
    window_origin(g, ids ? ids[j * N + n] : start + j, o);  // per-image lists, or a shared range
    const int64_t e = ((c * H) + y) * W + xw;
    const bool occluded = inside(c, o[0], g.window[0]) && inside(y, o[1], g.window[1]) && inside(xw, o[2], g.window[2]);
    out[i] = occluded ? base[(per_sample_baseline ? n : 0) * C * H * W + e] : x[n * C * H * W + e];
  }
}

template <typename scalar_t>
__global__ void occlusion_accumulate_kernel(const double* __restrict__ sat, scalar_t* __restrict__ out, WindowGrid g,
                                            int64_t total) {
  const int64_t C = g.size[0], H = g.size[1], W = g.size[2];
  const int64_t table = (g.count[0] + 1) * (g.count[1] + 1) * (g.count[2] + 1);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t coord[3] = {(i / (W * H)) % C, (i / W) % H, i % W};
    const int64_t n = i / (W * H * C);
    int64_t lo[3], hi[3];
    bool any = true;
    int64_t covering = 1;
    for (int d = 0; d < 3; ++d) {
      covering_windows(coord[d], g.window[d], g.stride[d], g.count[d], lo[d], hi[d]);
      any = any && hi[d] >= lo[d];
      covering *= hi[d] - lo[d] + 1;
    }
    out[i] = any ? static_cast<scalar_t>(box_sum(sat + n * table, g.count, lo, hi) / covering) : scalar_t(0);
  }
}

// Selecting an element copies its bits: one instantiation per element size.
template <typename bits_t>
__global__ void feature_batch_kernel(const bits_t* __restrict__ x, const bits_t* __restrict__ base,
                                     const int64_t* __restrict__ mask, const bool* __restrict__ present,
                                     bits_t* __restrict__ out, int64_t N, int64_t C, int64_t HW, int64_t Cm,
                                     int64_t F, bool per_sample_baseline, bool per_sample_mask, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t e = i % HW, c = (i / HW) % C, n = (i / (HW * C)) % N, b = i / (HW * C * N);
    const int64_t id = mask[((per_sample_mask ? n : 0) * Cm + (Cm == 1 ? 0 : c)) * HW + e];
    out[i] = present[b * F + id] ? x[(n * C + c) * HW + e] : base[((per_sample_baseline ? n : 0) * C + c) * HW + e];
  }
}

template <typename bits_t>
void launch_feature_batch(const at::Tensor& x, const at::Tensor& b, const at::Tensor& m, const at::Tensor& p,
                          at::Tensor& out) {
  const int64_t N = x.size(0);
  feature_batch_kernel<bits_t><<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const bits_t*>(x.const_data_ptr()), static_cast<const bits_t*>(b.const_data_ptr()),
      m.const_data_ptr<int64_t>(), p.const_data_ptr<bool>(), static_cast<bits_t*>(out.mutable_data_ptr()), N,
      x.size(1), x.size(2) * x.size(3), m.size(1), p.size(1), b.size(0) == N && N > 1, m.size(0) == N && N > 1,
      out.numel());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The `_into` functions write validated arguments into a validated `out`; the out=
// overloads and the functional forms check once each (the id-range checks cost a host
// sync).
void feature_batch_into(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& feature_mask,
                        const at::Tensor& present, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (out.numel() == 0) return;
  const at::Tensor x_ = x.contiguous(), b_ = baseline.contiguous(), m_ = feature_mask.contiguous(),
                   p_ = present.contiguous();
  switch (x_.element_size()) {
    case 2: launch_feature_batch<uint16_t>(x_, b_, m_, p_, out); break;
    case 4: launch_feature_batch<uint32_t>(x_, b_, m_, p_, out); break;
    case 8: launch_feature_batch<uint64_t>(x_, b_, m_, p_, out); break;
    default: TORCH_CHECK(false, "feature_batch: unsupported element size");
  }
}

void feature_batch_out_cuda(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& feature_mask,
                            const at::Tensor& present, at::Tensor& out) {
  check_feature_batch_args(x, baseline, feature_mask, present);
  check_copies_out("feature_batch", out, x, present.size(0), "B", {&x, &baseline, &feature_mask, &present});
  feature_batch_into(x, baseline, feature_mask, present, out);
}

at::Tensor feature_batch_cuda(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& feature_mask,
                              const at::Tensor& present) {
  check_feature_batch_args(x, baseline, feature_mask, present);
  at::Tensor out = copies_output("feature_batch", x, present.size(0), "B");
  feature_batch_into(x, baseline, feature_mask, present, out);
  return out;
}

// Copy j of image n occludes window ids[j * N + n], or start + j when ids is null.
void launch_occlusion_batch(const at::Tensor& x, const at::Tensor& baseline, const WindowGrid& g, int64_t start,
                            const int64_t* ids, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0);
  if (out.numel() == 0) return;
  const at::Tensor x_ = x.contiguous(), b_ = baseline.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_.scalar_type(), "occlusion_batch_cuda", [&] {
    occlusion_batch_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x_.const_data_ptr<scalar_t>(), b_.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, N, start,
        ids, out.numel(), b_.size(0) == N && N > 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void occlusion_batch_out_cuda(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                              c10::IntArrayRef stride, int64_t start, int64_t count, at::Tensor& out) {
  const WindowGrid g = check_occlusion_batch_args(x, baseline, window, stride, start, count);
  check_copies_out("occlusion_batch", out, x, count, "count", {&x, &baseline});
  launch_occlusion_batch(x, baseline, g, start, nullptr, out);
}

at::Tensor occlusion_batch_cuda(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                                c10::IntArrayRef stride, int64_t start, int64_t count) {
  const WindowGrid g = check_occlusion_batch_args(x, baseline, window, stride, start, count);
  at::Tensor out = copies_output("occlusion_batch", x, count, "count");
  launch_occlusion_batch(x, baseline, g, start, nullptr, out);
  return out;
}

void occlusion_batch_at_into(const at::Tensor& x, const at::Tensor& baseline, const WindowGrid& g,
                             const at::Tensor& windows, at::Tensor& out) {
  const at::Tensor ids = windows.contiguous();
  launch_occlusion_batch(x, baseline, g, 0, ids.const_data_ptr<int64_t>(), out);
}

void occlusion_batch_at_out_cuda(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                                 c10::IntArrayRef stride, const at::Tensor& windows, at::Tensor& out) {
  const WindowGrid g = check_occlusion_batch_at_args(x, baseline, window, stride, windows);
  check_copies_out("occlusion_batch_at", out, x, windows.size(0), "count", {&x, &baseline, &windows});
  occlusion_batch_at_into(x, baseline, g, windows, out);
}

at::Tensor occlusion_batch_at_cuda(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                                   c10::IntArrayRef stride, const at::Tensor& windows) {
  const WindowGrid g = check_occlusion_batch_at_args(x, baseline, window, stride, windows);
  at::Tensor out = copies_output("occlusion_batch_at", x, windows.size(0), "count");
  occlusion_batch_at_into(x, baseline, g, windows, out);
  return out;
}

at::Tensor occlusion_accumulate_cuda(const at::Tensor& diffs, c10::IntArrayRef shape, c10::IntArrayRef window,
                                     c10::IntArrayRef stride) {
  const WindowGrid g = check_occlusion_accumulate_args(diffs, shape, window, stride);
  const c10::cuda::CUDAGuard guard(diffs.device());
  at::Tensor out = at::empty({diffs.size(0), g.size[0], g.size[1], g.size[2]}, diffs.options());
  if (out.numel() == 0) return out;
  const at::Tensor sat = window_score_table(diffs, g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, diffs.scalar_type(), "occlusion_accumulate_cuda", [&] {
    occlusion_accumulate_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        sat.const_data_ptr<double>(), out.mutable_data_ptr<scalar_t>(), g, out.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) {
  m.impl("occlusion_batch", &occlusion_batch_cuda);
  m.impl("occlusion_batch.out", &occlusion_batch_out_cuda);
  m.impl("occlusion_batch_at", &occlusion_batch_at_cuda);
  m.impl("occlusion_batch_at.out", &occlusion_batch_at_out_cuda);
  m.impl("occlusion_accumulate", &occlusion_accumulate_cuda);
  m.impl("feature_batch", &feature_batch_cuda);
  m.impl("feature_batch.out", &feature_batch_out_cuda);
}

}  // namespace interp_ext
