// CPU vectorisation helpers shared by the CPU kernels.
#pragma once

// Extensions are built without -march; function multi-versioning lets the loader pick
// the widest vector unit of the running CPU for the hot loops (templates included).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INTERP_EXT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define INTERP_EXT_CLONES
#endif

// Floating-point reductions only vectorise when the compiler may reorder the sum:
// kernels grant that loop by loop with `#pragma omp simd reduction(+ : s)` (the build
// passes -fopenmp).

#include <cstdint>

namespace interp_ext {

// weighted_rows for elements [i, i + NV * 32 bytes): NV vector accumulators stay in
// registers across all taps, and NV independent add chains hide the add latency.
template <int NV, typename T>
__attribute__((always_inline)) inline void weighted_block(T* __restrict__ dst, const T* const* src, const T* w,
                                                          int64_t taps, int64_t i) {
  typedef T V __attribute__((vector_size(32), aligned(alignof(T)), may_alias));
  V a[NV] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const V* s = reinterpret_cast<const V*>(src[t] + i);
    const T c = w[t];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) a[v] += c * s[v];
  }
  V* d = reinterpret_cast<V*>(dst + i);
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) d[v] = a[v];
}

// dst[i] = sum_t w[t] * src[t][i] for i < n, summed in t order (so the result equals
// an axpy per tap). Each output is stored once and never reloaded, where an axpy per
// tap reloads and stores it per tap: 2.3x faster for 5-9 taps, and 8 accumulators
// per block gave another 12% at 9 taps over 4 (AVX2). GCC's generic 32-byte vectors
// lower to the vector unit of the clone they are inlined into (always inlined: a call
// would run the baseline SSE2 copy); 64-byte ones lower badly on AVX2.
template <typename T>
__attribute__((always_inline)) inline void weighted_rows(T* __restrict__ dst, const T* const* src, const T* w,
                                                         int64_t taps, int64_t n) {
  constexpr int64_t L = 32 / sizeof(T);
  int64_t i = 0;
  for (; i + 8 * L <= n; i += 8 * L) weighted_block<8>(dst, src, w, taps, i);
  // The rest in 4- and 2-vector blocks: one accumulator per vector made a 224-wide row's
  // last 4 vectors four serial chains of `taps` adds (5-10% of a 9-tap plane in a
  // standalone loop; within the noise of the whole blur).
  if (i + 4 * L <= n) weighted_block<4>(dst, src, w, taps, i), i += 4 * L;
  if (i + 2 * L <= n) weighted_block<2>(dst, src, w, taps, i), i += 2 * L;
  for (; i + L <= n; i += L) weighted_block<1>(dst, src, w, taps, i);
  for (; i < n; ++i) {
    T a = 0;
    for (int64_t t = 0; t < taps; ++t) a += w[t] * src[t][i];
    dst[i] = a;
  }
}

}  // namespace interp_ext
