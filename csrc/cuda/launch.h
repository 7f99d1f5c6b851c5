// Launch geometry shared by the grid-stride CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace interp_ext {

constexpr int kThreads = 256;  // threads per block
constexpr int64_t kMaxGridYZ = 65535;  // CUDA's limit on gridDim.y and gridDim.z: loop over the rest

inline unsigned grid_yz(int64_t work) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(work, kMaxGridYZ))); }

// Blocks of kThreads for `work` items: enough to fill every SM at full occupancy and
// no more; grid-stride loops do the rest.
inline int64_t blocks_for(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sms * (2048 / kThreads)));
}

}  // namespace interp_ext
