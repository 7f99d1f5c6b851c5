// Device-agnostic pieces of the separable filter (Gaussian blur): border index mapping
// and, for the adjoint, which (output, tap) pairs read each input coordinate.
//
// Along an axis of size n with k taps, output i reads input pad_index(i + t - (k-1)/2)
// with weight w[t] (the extra tap of an even kernel goes to the right, as conv2d's
// padding="same"). Borders: "reflect" mirrors without repeating the edge (d c b | a b c d
// | c b a), periodically when the kernel is wider than the input; "replicate" repeats the
// edge; "zeros" reads 0.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <vector>

namespace interp_ext {

enum class BorderMode : int { Reflect = 0, Replicate = 1, Zeros = 2 };

// The input coordinate read at padded position j, or -1 for a zero.
C10_HOST_DEVICE inline int64_t border_index(int64_t j, int64_t n, BorderMode mode) {
  if (j >= 0 && j < n) return j;
  if (mode == BorderMode::Zeros) return -1;
  if (mode == BorderMode::Replicate || n == 1) return j < 0 ? 0 : n - 1;
  const int64_t period = 2 * (n - 1);
  j %= period;
  if (j < 0) j += period;
  return j < n ? j : period - j;
}

// For the adjoint: per input coordinate m, the (output i, tap t) pairs with
// border_index(i + t - (k-1)/2) == m, as CSR arrays (offsets n + 1; pairs 2 per entry).
inline void adjoint_pairs(int64_t n, int64_t k, BorderMode mode, std::vector<int32_t>& offsets,
                          std::vector<int32_t>& pairs) {
  const int64_t left = (k - 1) / 2;
  std::vector<int32_t> count(n + 1, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < k; ++t) {
      const int64_t m = border_index(i + t - left, n, mode);
      if (m >= 0) ++count[m + 1];
    }
  offsets.assign(n + 1, 0);
  for (int64_t m = 0; m < n; ++m) offsets[m + 1] = offsets[m] + count[m + 1];
  pairs.assign(2 * static_cast<size_t>(offsets[n]), 0);
  std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < k; ++t) {
      const int64_t m = border_index(i + t - left, n, mode);
      if (m < 0) continue;
      const int32_t at = fill[m]++;
      pairs[2 * at] = static_cast<int32_t>(i);
      pairs[2 * at + 1] = static_cast<int32_t>(t);
    }
}

}  // namespace interp_ext
