// CPU kernel of the fused Yosinski et al. regularisation step (in place): one pass for
// the per-pixel norm and contribution of the updated image, per-sample percentiles by
// selection, one pass that writes the image. Parallel over samples x rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../kernels/regularize.h"
#include "../ops_common.h"
#include "vectorize.h"

namespace interp_ext {
namespace {

// Order-preserving keys: a float's bits with the sign bit set for non-negative values
// and all bits flipped for negative ones compare as unsigned integers in the order of
// the values (NaN last, as a sort puts it).
inline uint32_t order_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b ^ ((b >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}
inline uint64_t order_key(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b ^ ((b >> 63) ? ~uint64_t{0} : uint64_t{1} << 63);
}
template <typename T, typename K>
inline T from_order_key(K key) {
  constexpr K top = K{1} << (8 * sizeof(K) - 1);
  const K b = (key & top) ? key ^ top : ~key;
  T v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// The k-th smallest (0-based) of v[0, M), by radix selection on the order keys: a
// histogram of the top 11 bits finds the bucket holding rank k, only that bucket's
// keys are kept, and the next 11 bits of those narrow it down, and so on. Two passes
// over all M values, then passes over the few that remain (the gradient clip of an
// 8x3x224x224 step, 150k values per sample: 14.6 ms with std::nth_element, 5.7 ms with
// this). `keys` is scratch space.
template <typename T, typename K>
T kth_smallest(const T* v, int64_t M, int64_t k, std::vector<K>& keys) {
  constexpr int kDigit = 11, kBits = 8 * sizeof(K);
  int64_t hist[1 << kDigit];
  // the bucket of the histogram that holds rank k; k becomes the rank inside it
  auto bucket_of_rank = [&]() {
    int64_t bucket = 0;
    while (k >= hist[bucket]) k -= hist[bucket++];
    return static_cast<K>(bucket);
  };
  int shift = kBits - kDigit;
  std::fill(hist, hist + (1 << kDigit), 0);
  for (int64_t i = 0; i < M; ++i) ++hist[order_key(v[i]) >> shift];
  K bucket = bucket_of_rank();
  keys.clear();
  for (int64_t i = 0; i < M; ++i) {
    const K key = order_key(v[i]);
    if ((key >> shift) == bucket) keys.push_back(key);
  }
  while (shift > 0 && keys.size() > 1) {
    const int width = std::min(kDigit, shift);
    shift -= width;
    const K mask = (K{1} << width) - 1;
    std::fill(hist, hist + (1 << width), 0);
    for (const K key : keys) ++hist[(key >> shift) & mask];
    bucket = bucket_of_rank();
    keys.erase(std::remove_if(keys.begin(), keys.end(), [&](K key) { return ((key >> shift) & mask) != bucket; }),
               keys.end());
  }
  // one key left, or keys equal in every bit
  return from_order_key<T>(keys[0]);
}

template <typename T>
bool any_nan(const T* v, int64_t n) {
  int found = 0;
#pragma omp simd reduction(| : found)
  for (int64_t i = 0; i < n; ++i) found |= v[i] != v[i];
  return found != 0;
}

// Per-row p-th percentile of a (N, M) tensor (0 where p == 0: nothing is clipped): the
// same numbers as at::quantile (its rank and weight arithmetic, linear interpolation by
// ATen's lerp, NaN for a row with a NaN; the CUDA step uses at::quantile itself), from
// the order statistics at floor and ceil of the rank by selection instead of a sort.
at::Tensor percentile_by_selection(const at::Tensor& values, double pct) {
  const int64_t N = values.size(0), M = values.size(1);
  if (pct <= 0 || M == 0) return at::zeros({N}, values.options());
  const at::Tensor v = values.contiguous();
  at::Tensor out = at::empty({N}, values.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "percentile_by_selection", [&] {
    using K = decltype(order_key(scalar_t{}));
    // as at::quantile: q in the values' type, its rank in double, the weight in the values' type
    const double rank = static_cast<double>(static_cast<scalar_t>(pct / 100.0)) * static_cast<double>(M - 1);
    const int64_t below = static_cast<int64_t>(rank), above = static_cast<int64_t>(std::ceil(rank));
    const scalar_t w = static_cast<scalar_t>(rank - static_cast<double>(below));
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<K> keys;
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* row = v.const_data_ptr<scalar_t>() + n * M;
        if (any_nan(row, M)) {  // as at::quantile: NaN (which then clips everything in the sample)
          out.mutable_data_ptr<scalar_t>()[n] = std::numeric_limits<scalar_t>::quiet_NaN();
          continue;
        }
        const scalar_t a = kth_smallest(row, M, below, keys);
        scalar_t b = a;
        if (above != below) {  // the next order statistic: a again if tied, else the least value above a
          const K ka = order_key(a);
          int64_t at_most_a = 0;
          K next = ~K{0};
          for (int64_t i = 0; i < M; ++i) {
            const K key = order_key(row[i]);
            at_most_a += key <= ka;
            next = key > ka && key < next ? key : next;
          }
          b = at_most_a > above ? a : from_order_key<scalar_t>(next);
        }
        out.mutable_data_ptr<scalar_t>()[n] = std::abs(w) < scalar_t(0.5) ? a + w * (b - a) : b - (b - a) * (scalar_t(1) - w);
      }
    });
  });
  return out;
}

// Pass 1 over pixels [p0, p1) of one sample (x, g: its first plane; norms, contrib: its
// row): the norm over channels and the contribution sum_c |v g| of the updated values v.
template <typename T>
INTERP_EXT_CLONES void pixel_stats(const T* x, const T* g, int64_t C, int64_t HW, int64_t p0, int64_t p1, T tg, T lr,
                                   T decay, T* norms, T* contrib) {
  std::fill(norms + p0, norms + p1, T(0));
  std::fill(contrib + p0, contrib + p1, T(0));
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = x + c * HW;
    const T* gc = g + c * HW;
#pragma omp simd
    for (int64_t pix = p0; pix < p1; ++pix) {
      const T v = regularized_value(xc[pix], gc[pix], tg, lr, decay);
      norms[pix] += v * v;
      contrib[pix] += std::abs(v * gc[pix]);
    }
  }
#pragma omp simd
  for (int64_t pix = p0; pix < p1; ++pix) norms[pix] = std::sqrt(norms[pix]);
}

// Pass 2 over one plane: the updated values, zero where `keep` (null: keep all) is 0.
// Written as a store and a conditional store of 0 over bytes: GCC vectorises that, but
// not `keep ? v : 0` (it computes v only where kept, and will not speculate float math
// that may trap) nor any load of a C++ bool (it has no vector type for bool).
template <typename T>
INTERP_EXT_CLONES void update_plane(T* x, const T* g, const uint8_t* keep, int64_t HW, T tg, T lr, T decay) {
  if (keep == nullptr) {
#pragma omp simd
    for (int64_t pix = 0; pix < HW; ++pix) x[pix] = regularized_value(x[pix], g[pix], tg, lr, decay);
    return;
  }
#pragma omp simd
  for (int64_t pix = 0; pix < HW; ++pix) {
    x[pix] = regularized_value(x[pix], g[pix], tg, lr, decay);
    if (!keep[pix]) x[pix] = T(0);
  }
}

void regularize_step_cpu(at::Tensor& x, const at::Tensor& grad, double lr, double decay, double grad_pct,
                         double norm_pct, double contrib_pct) {
  check_regularize_args(x, grad, lr, decay, grad_pct, norm_pct, contrib_pct);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (x.numel() == 0) return;
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor xc = x.to(compute).contiguous();
  const at::Tensor gc = grad.to(compute).contiguous();
  const at::Tensor tg = grad_pct > 0 ? percentile_by_selection(gc.abs().view({N, -1}), grad_pct)
                                     : at::zeros({N}, gc.options());
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
        for (int64_t e = begin; e < end;) {  // the part of [begin, end) in one sample at a time
          const int64_t n = e / HW, p0 = e % HW, p1 = std::min(HW, p0 + (end - e));
          pixel_stats(xp + n * C * HW, gp + n * C * HW, C, HW, p0, p1, tgp[n], lr_, decay_, np_ + n * HW, cp + n * HW);
          e += p1 - p0;
        }
      });
      keep = (norms >= percentile_by_selection(norms, norm_pct).unsqueeze(1)) &
             (contrib >= percentile_by_selection(contrib, contrib_pct).unsqueeze(1));
      keep = keep.contiguous();
    }
    // at::kBool holds one byte, 0 or 1, per element
    const uint8_t* kp = clip_pixels ? reinterpret_cast<const uint8_t*>(keep.const_data_ptr<bool>()) : nullptr;
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C;
        update_plane(xp + plane * HW, gp + plane * HW, kp == nullptr ? nullptr : kp + n * HW, HW, tgp[n], lr_, decay_);
      }
    });
  });
  x.copy_(xc);
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CPU, m) { m.impl("regularize_step_", &regularize_step_cpu); }

}  // namespace interp_ext
