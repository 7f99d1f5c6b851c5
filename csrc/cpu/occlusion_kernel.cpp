// CPU kernels of occlusion: building a batch of occluded copies (each output element
// written once: the input, or the baseline inside the window; no mask is ever built)
// and accumulating per-window score differences into the per-element mean, as a gather
// from a summed-area table of the scores (no atomics, no per-window temporaries).
// Also the feature-subset batch of Shapley sampling: each element is the input or the
// baseline by a lookup of its feature id in the copy's present row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../kernels/occlusion.h"
#include "../ops_common.h"

namespace interp_ext {
namespace {

// Copy j of image n occludes window window_of(j, n): a contiguous range of windows
// shared by every image, or per-image window lists.
template <typename WindowOf>
void occlusion_planes(const at::Tensor& x, const at::Tensor& baseline, const WindowGrid& g, int64_t count,
                      WindowOf window_of, at::Tensor& out) {
  const int64_t N = x.size(0), C = g.size[0], H = g.size[1], W = g.size[2], HW = H * W;
  const size_t el = x.element_size();
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  const char* bp = static_cast<const char*>(baseline.const_data_ptr());
  char* op = static_cast<char*>(out.mutable_data_ptr());
  const bool per_sample_baseline = baseline.size(0) == N && N > 1;

  // one task per output plane (copy j, image n, channel c)
  at::parallel_for(0, count * N * C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t j = plane / (N * C), n = (plane / C) % N, c = plane % C;
      int64_t o[3];
      window_origin(g, window_of(j, n), o);
      const char* src = xp + ((n * C + c) * HW) * el;
      char* dst = op + plane * HW * el;
      if (!inside(c, o[0], g.window[0])) {
        std::memcpy(dst, src, HW * el);
        continue;
      }
      const char* base = bp + (((per_sample_baseline ? n : 0) * C + c) * HW) * el;
      // Clipped to the plane: with a stride larger than the window, a window may start
      // beyond the border (it then occludes nothing), and every size below stays >= 0.
      const int64_t y0 = std::min(H, o[1]), y1 = y0 + std::min(g.window[1], H - y0);
      const int64_t x0 = std::min(W, o[2]), x1 = x0 + std::min(g.window[2], W - x0);
      std::memcpy(dst, src, y0 * W * el);  // rows above the window
      for (int64_t y = y0; y < y1; ++y) {
        const int64_t r = y * W;
        std::memcpy(dst + r * el, src + r * el, x0 * el);
        std::memcpy(dst + (r + x0) * el, base + (r + x0) * el, (x1 - x0) * el);
        std::memcpy(dst + (r + x1) * el, src + (r + x1) * el, (W - x1) * el);
      }
      std::memcpy(dst + y1 * W * el, src + y1 * W * el, (H - y1) * W * el);  // rows below
    }
  });
}

// The `_into` functions write validated arguments into a validated `out`; the out=
// overloads and the functional forms check once each (on CUDA the id-range checks
// cost a host sync).
void occlusion_batch_into(const at::Tensor& x, const at::Tensor& baseline, const WindowGrid& g, int64_t start,
                          int64_t count, at::Tensor& out) {
  if (out.numel() == 0) return;
  occlusion_planes(x.contiguous(), baseline.contiguous(), g, count, [start](int64_t j, int64_t) { return start + j; },
                   out);
}

void occlusion_batch_out_cpu(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                             c10::IntArrayRef stride, int64_t start, int64_t count, at::Tensor& out) {
  const WindowGrid g = check_occlusion_batch_args(x, baseline, window, stride, start, count);
  check_copies_out("occlusion_batch", out, x, count, "count", {&x, &baseline});
  occlusion_batch_into(x, baseline, g, start, count, out);
}

at::Tensor occlusion_batch_cpu(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                               c10::IntArrayRef stride, int64_t start, int64_t count) {
  const WindowGrid g = check_occlusion_batch_args(x, baseline, window, stride, start, count);
  at::Tensor out = copies_output("occlusion_batch", x, count, "count");
  occlusion_batch_into(x, baseline, g, start, count, out);
  return out;
}

void occlusion_batch_at_into(const at::Tensor& x, const at::Tensor& baseline, const WindowGrid& g,
                             const at::Tensor& windows, at::Tensor& out) {
  if (out.numel() == 0) return;
  const at::Tensor ids = windows.contiguous();
  const int64_t* ip = ids.const_data_ptr<int64_t>();
  const int64_t N = x.size(0);
  occlusion_planes(x.contiguous(), baseline.contiguous(), g, windows.size(0),
                   [ip, N](int64_t j, int64_t n) { return ip[j * N + n]; }, out);
}

void occlusion_batch_at_out_cpu(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                                c10::IntArrayRef stride, const at::Tensor& windows, at::Tensor& out) {
  const WindowGrid g = check_occlusion_batch_at_args(x, baseline, window, stride, windows);
  check_copies_out("occlusion_batch_at", out, x, windows.size(0), "count", {&x, &baseline, &windows});
  occlusion_batch_at_into(x, baseline, g, windows, out);
}

at::Tensor occlusion_batch_at_cpu(const at::Tensor& x, const at::Tensor& baseline, c10::IntArrayRef window,
                                  c10::IntArrayRef stride, const at::Tensor& windows) {
  const WindowGrid g = check_occlusion_batch_at_args(x, baseline, window, stride, windows);
  at::Tensor out = copies_output("occlusion_batch_at", x, windows.size(0), "count");
  occlusion_batch_at_into(x, baseline, g, windows, out);
  return out;
}

}  // namespace

// float64 so that inclusion-exclusion does not cancel away precision; ATen ops, so the
// same code serves every device.
at::Tensor window_score_table(const at::Tensor& diffs, const WindowGrid& g) {
  const int64_t N = diffs.size(0);
  at::Tensor sat = at::zeros({N, g.count[0] + 1, g.count[1] + 1, g.count[2] + 1}, diffs.options().dtype(at::kDouble));
  sat.narrow(1, 1, g.count[0]).narrow(2, 1, g.count[1]).narrow(3, 1, g.count[2])
      .copy_(diffs.reshape({N, g.count[0], g.count[1], g.count[2]}));
  return sat.cumsum(1).cumsum(2).cumsum(3).contiguous();
}

namespace {

at::Tensor occlusion_accumulate_cpu(const at::Tensor& diffs, c10::IntArrayRef shape, c10::IntArrayRef window,
                                    c10::IntArrayRef stride) {
  const WindowGrid g = check_occlusion_accumulate_args(diffs, shape, window, stride);
  const int64_t N = diffs.size(0), C = g.size[0], H = g.size[1], W = g.size[2];
  at::Tensor out = at::empty({N, C, H, W}, diffs.options());
  if (out.numel() == 0) return out;
  const at::Tensor sat = window_score_table(diffs, g);
  const double* sp = sat.const_data_ptr<double>();
  const int64_t table = sat.numel() / std::max<int64_t>(N, 1);
  // covering-window ranges per coordinate, once per axis
  std::vector<int64_t> lo[3], hi[3];
  for (int d = 0; d < 3; ++d) {
    lo[d].resize(g.size[d]);
    hi[d].resize(g.size[d]);
    for (int64_t i = 0; i < g.size[d]; ++i) covering_windows(i, g.window[d], g.stride[d], g.count[d], lo[d][i], hi[d][i]);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, diffs.scalar_type(), "occlusion_accumulate_cpu", [&] {
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / C, c = nc % C;
        scalar_t* dst = op + nc * H * W;
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {
            const int64_t l[3] = {lo[0][c], lo[1][y], lo[2][x]}, h[3] = {hi[0][c], hi[1][y], hi[2][x]};
            const int64_t covering = (h[0] - l[0] + 1) * (h[1] - l[1] + 1) * (h[2] - l[2] + 1);
            const bool any = h[0] >= l[0] && h[1] >= l[1] && h[2] >= l[2];
            dst[y * W + x] = any ? static_cast<scalar_t>(box_sum(sp + n * table, g.count, l, h) / covering) : scalar_t(0);
          }
      }
    });
  });
  return out;
}

// Selecting an element is a copy of its bits, so one instantiation per element size
// serves every dtype.
template <typename bits_t>
void feature_batch_planes(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& mask,
                          const at::Tensor& present, at::Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), F = present.size(1);
  const int64_t B = present.size(0), Cm = mask.size(1);
  const bool per_sample_baseline = baseline.size(0) == N && N > 1, per_sample_mask = mask.size(0) == N && N > 1;
  const bits_t* xp = static_cast<const bits_t*>(x.const_data_ptr());
  const bits_t* bp = static_cast<const bits_t*>(baseline.const_data_ptr());
  const int64_t* mp = mask.const_data_ptr<int64_t>();
  const bool* pp = present.const_data_ptr<bool>();
  bits_t* op = static_cast<bits_t*>(out.mutable_data_ptr());
  at::parallel_for(0, B * N * C, 4, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / (N * C), n = (plane / C) % N, c = plane % C;
      const bool* keep = pp + b * F;
      const int64_t* ids = mp + ((per_sample_mask ? n : 0) * Cm + (Cm == 1 ? 0 : c)) * HW;
      const bits_t* src = xp + (n * C + c) * HW;
      const bits_t* base = bp + ((per_sample_baseline ? n : 0) * C + c) * HW;
      bits_t* dst = op + plane * HW;
      for (int64_t i = 0; i < HW; ++i) dst[i] = keep[ids[i]] ? src[i] : base[i];
    }
  });
}

void feature_batch_into(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& feature_mask,
                        const at::Tensor& present, at::Tensor& out) {
  if (out.numel() == 0) return;
  const at::Tensor x_ = x.contiguous(), b_ = baseline.contiguous(), m_ = feature_mask.contiguous(),
                   p_ = present.contiguous();
  switch (x_.element_size()) {
    case 2: feature_batch_planes<uint16_t>(x_, b_, m_, p_, out); break;
    case 4: feature_batch_planes<uint32_t>(x_, b_, m_, p_, out); break;
    case 8: feature_batch_planes<uint64_t>(x_, b_, m_, p_, out); break;
    default: TORCH_CHECK(false, "feature_batch: unsupported element size");
  }
}

void feature_batch_out_cpu(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& feature_mask,
                           const at::Tensor& present, at::Tensor& out) {
  check_feature_batch_args(x, baseline, feature_mask, present);
  check_copies_out("feature_batch", out, x, present.size(0), "B", {&x, &baseline, &feature_mask, &present});
  feature_batch_into(x, baseline, feature_mask, present, out);
}

at::Tensor feature_batch_cpu(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& feature_mask,
                             const at::Tensor& present) {
  check_feature_batch_args(x, baseline, feature_mask, present);
  at::Tensor out = copies_output("feature_batch", x, present.size(0), "B");
  feature_batch_into(x, baseline, feature_mask, present, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) {
  m.impl("occlusion_batch", &occlusion_batch_cpu);
  m.impl("occlusion_batch.out", &occlusion_batch_out_cpu);
  m.impl("occlusion_batch_at", &occlusion_batch_at_cpu);
  m.impl("occlusion_batch_at.out", &occlusion_batch_at_out_cpu);
  m.impl("occlusion_accumulate", &occlusion_accumulate_cpu);
  m.impl("feature_batch", &feature_batch_cpu);
  m.impl("feature_batch.out", &feature_batch_out_cpu);
}

}  // namespace interp_ext
