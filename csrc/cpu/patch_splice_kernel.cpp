// CPU kernel of patch_splice: the read boxes of incremental occlusion. Output plane
// (k, c) is the box of src[sample[k], c] at origin[k], the padding value outside the map
// and patch[k, c] spliced in where it lies. Each output row is five runs (pad, map,
// patch, map, pad): memcpy and fill, every element written once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../kernels/patch_splice.h"
#include "../patch_splice.h"

namespace interp_ext {
namespace {

// Runs are short (a patch row: tens of elements): plain loops the compiler vectorises,
// not a memmove / memset call per run (8x a same-size copy when they were).
template <typename scalar_t>
inline void copy_run(scalar_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
}

template <typename scalar_t>
inline void fill_run(scalar_t* __restrict__ dst, int64_t n, scalar_t value) {
  for (int64_t j = 0; j < n; ++j) dst[j] = value;
}

template <typename scalar_t>
void splice_planes(const at::Tensor& src, const int64_t* sample, const int64_t* origin, const at::Tensor* patch,
                   const int64_t* patch_origin, scalar_t pad, at::Tensor& out) {
  const int64_t C = src.size(1), H = src.size(2), W = src.size(3);
  const int64_t h = out.size(2), w = out.size(3);
  const int64_t ph = patch ? patch->size(2) : 0, pw = patch ? patch->size(3) : 0;
  const scalar_t* sp = src.const_data_ptr<scalar_t>();
  const scalar_t* pp = patch ? patch->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t planes = out.size(0) * C;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, h * w));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t k = plane / C, c = plane % C;
      const int64_t oy = origin[2 * k], ox = origin[2 * k + 1];
      const int64_t py = patch ? patch_origin[2 * k] : 0, px = patch ? patch_origin[2 * k + 1] : 0;
      const scalar_t* map = sp + (sample[k] * C + c) * H * W;
      const scalar_t* pat = pp ? pp + plane * ph * pw : nullptr;
      scalar_t* dst = op + plane * h * w;
      // a row's runs depend only on whether it crosses the patch: two kinds per plane
      const SpliceRow plain = splice_row(ox, w, W, false, px, pw);
      const SpliceRow crossing = pat ? splice_row(ox, w, W, true, px, pw) : plain;
      for (int64_t i = 0; i < h; ++i, dst += w) {
        const int64_t y = oy + i;
        if (y < 0 || y >= H) {
          fill_run(dst, w, pad);
          continue;
        }
        const bool in_patch = pat && y >= py && y < py + ph;
        const SpliceRow& r = in_patch ? crossing : plain;
        // offsets added as one in-range sum: ox alone may point outside the row
        const scalar_t* row = map + y * W;
        fill_run(dst, r.xa, pad);
        copy_run(dst + r.xa, row + (ox + r.xa), r.pa - r.xa);
        if (in_patch) copy_run(dst + r.pa, pat + (y - py) * pw + (ox + r.pa - px), r.pb - r.pa);
        copy_run(dst + r.pb, row + (ox + r.pb), r.xb - r.pb);
        fill_run(dst + r.xb, w - r.xb, pad);
      }
    }
  });
}

// Writes validated arguments into a contiguous `dst` of the output's shape.
void patch_splice_into(const at::Tensor& src, const at::Tensor& sample, const at::Tensor& origin, double pad_value,
                       const c10::optional<at::Tensor>& patch, const c10::optional<at::Tensor>& patch_origin,
                       at::Tensor& dst) {
  if (dst.numel() == 0) return;
  const at::Tensor src_ = src.contiguous(), sample_ = sample.contiguous(), origin_ = origin.contiguous();
  at::Tensor patch_, porigin_;
  if (patch.has_value()) {
    patch_ = patch->contiguous();
    porigin_ = patch_origin->contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src_.scalar_type(), "patch_splice_cpu", [&] {
    splice_planes<scalar_t>(src_, sample_.const_data_ptr<int64_t>(), origin_.const_data_ptr<int64_t>(),
                            patch.has_value() ? &patch_ : nullptr,
                            patch.has_value() ? porigin_.const_data_ptr<int64_t>() : nullptr,
                            static_cast<scalar_t>(pad_value), dst);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) {
  m.impl("patch_splice", &patch_splice_functional<&patch_splice_into>);
  m.impl("patch_splice.out", &patch_splice_out<&patch_splice_into>);
}

}  // namespace interp_ext
