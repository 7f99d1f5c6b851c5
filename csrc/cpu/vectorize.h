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
