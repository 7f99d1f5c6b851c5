// Device-agnostic geometry of sliding occlusion windows over (C, H, W), shared by the
// CPU and CUDA kernels. Windows are counted and clipped as Captum's Occlusion does:
// count_d = ceil((D - w_d) / s_d) + 1, window j covers [j s_d, j s_d + w_d) within D.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace interp_ext {

struct WindowGrid {
  int64_t size[3];    // C, H, W
  int64_t window[3];  // window extent per dimension
  int64_t stride[3];
  int64_t count[3];   // windows per dimension
};

// Written so that no intermediate overflows for any positive stride (window <= size).
C10_HOST_DEVICE inline int64_t window_count(int64_t size, int64_t window, int64_t stride) {
  const int64_t span = size - window;
  return span / stride + (span % stride != 0) + 1;
}

// First coordinate of window `p` (row-major over the window grid) along each dimension.
C10_HOST_DEVICE inline void window_origin(const WindowGrid& g, int64_t p, int64_t origin[3]) {
  const int64_t jx = p % g.count[2];
  p /= g.count[2];
  const int64_t jy = p % g.count[1];
  const int64_t jc = p / g.count[1];
  origin[0] = jc * g.stride[0];
  origin[1] = jy * g.stride[1];
  origin[2] = jx * g.stride[2];
}

// origin + window may overflow (a window starting beyond the border under a huge
// stride); coord - origin cannot once coord >= origin >= 0.
C10_HOST_DEVICE inline bool inside(int64_t coord, int64_t origin, int64_t window) {
  return coord >= origin && coord - origin < window;
}

// The windows j along one dimension that cover `coord`: lo..hi inclusive (lo > hi if none).
// j covers coord  <=>  j s <= coord < j s + w  <=>  (coord - w) / s < j <= coord / s.
C10_HOST_DEVICE inline void covering_windows(int64_t coord, int64_t window, int64_t stride, int64_t count, int64_t& lo,
                                             int64_t& hi) {
  hi = coord / stride;
  if (hi > count - 1) hi = count - 1;
  const int64_t t = coord - window;
  lo = t < 0 ? 0 : t / stride + 1;
}

// Sum of a box of window scores from the (count+1)^3 zero-padded summed-area table `sat`
// (inclusive prefix sums), by inclusion-exclusion. Box bounds are inclusive.
C10_HOST_DEVICE inline double box_sum(const double* sat, const int64_t dims[3], const int64_t lo[3],
                                      const int64_t hi[3]) {
  const int64_t sy = dims[2] + 1, sc = (dims[1] + 1) * sy;
  auto at = [&](int64_t c, int64_t y, int64_t x) { return sat[c * sc + y * sy + x]; };
  const int64_t c0 = lo[0], c1 = hi[0] + 1, y0 = lo[1], y1 = hi[1] + 1, x0 = lo[2], x1 = hi[2] + 1;
  return at(c1, y1, x1) - at(c0, y1, x1) - at(c1, y0, x1) - at(c1, y1, x0) + at(c0, y0, x1) + at(c0, y1, x0) +
         at(c1, y0, x0) - at(c0, y0, x0);
}

}  // namespace interp_ext
