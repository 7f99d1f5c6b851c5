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

// dst[i] = sum_t w[t] * src[t][i] for i < n, summed in t order (so the result equals
// an axpy per tap). A block of four 32-byte vectors keeps its accumulators in
// registers across all taps: each output is stored once and never reloaded, where an
// axpy per tap reloads and stores it per tap (2x faster for 5-9 taps). GCC's generic
// vectors lower to the vector unit of the clone they are inlined into (always: a call
// would run the baseline SSE2 copy); 64-byte ones lower badly on AVX2.
template <typename T>
__attribute__((always_inline)) inline void weighted_rows(T* __restrict__ dst, const T* const* src, const T* w, int64_t taps, int64_t n) {
  typedef T V __attribute__((vector_size(32), aligned(alignof(T)), may_alias));
  constexpr int64_t L = 32 / sizeof(T);
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t t = 0; t < taps; ++t) {
      const V* s = reinterpret_cast<const V*>(src[t] + i);
      const T c = w[t];
      a0 += c * s[0];
      a1 += c * s[1];
      a2 += c * s[2];
      a3 += c * s[3];
    }
    V* d = reinterpret_cast<V*>(dst + i);
    d[0] = a0;
    d[1] = a1;
    d[2] = a2;
    d[3] = a3;
  }
  for (; i + L <= n; i += L) {
    V a = {};
    for (int64_t t = 0; t < taps; ++t) a += w[t] * *reinterpret_cast<const V*>(src[t] + i);
    *reinterpret_cast<V*>(dst + i) = a;
  }
  for (; i < n; ++i) {
    T a = 0;
    for (int64_t t = 0; t < taps; ++t) a += w[t] * src[t][i];
    dst[i] = a;
  }
}

}  // namespace interp_ext
