// The real GPU as the device the launch code of launch.h is templated on (the emulated build
// of csrc/emulated/ has its own): streams, the device's SM count and <<<>>> launches.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <utility>

namespace fastgat {
namespace cuda {

struct CudaDevice {
  using Guard = c10::cuda::CUDAGuard;

  // The current stream of the guarded device.
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  int64_t sms() const { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

  template <typename... P, typename... Args>
  void launch(void (*kernel)(P...), int64_t blocks, int threads, Args&&... args) const {
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) const {
    return at::empty(sizes, options);
  }
};

}  // namespace cuda
}  // namespace fastgat
