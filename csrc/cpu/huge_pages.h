// Fresh CPU outputs that a kernel fills front to back.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace interp_ext {

// at::empty, asking Linux for transparent huge pages before the first touch. glibc maps
// allocations above a few MB afresh each time, and on a VM the ~2,500 page faults per
// 10 MB cost more than a blur pass over them (a 38 MB output: 37 ms of faults vs ~14 ms
// of filtering); with THP in "madvise" or "always" mode, 2 MB pages cut the faults
// 512-fold. It is the hint PyTorch gives every allocation under THP_MEM_ALLOC_ENABLE=1,
// here only for outputs about to be written whole; a refused hint changes nothing.
inline at::Tensor empty_prefer_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

}  // namespace interp_ext
