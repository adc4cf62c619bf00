// The real GPU as the device the launch code of launch.h is templated on (the emulated build
// of csrc/emulated/ has its own): streams, the device's SM count and <<<>>> launches, through
// torch's stable ABI (csrc/common/stable.h) and the CUDA runtime.
#pragma once
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <utility>

#include "../common/stable.h"

namespace fastgat {
namespace cuda {

// Raises the CUDA runtime's error, if any, as a RuntimeError.
inline void check_cuda(cudaError_t status) {
  FASTGAT_CHECK(status == cudaSuccess, "CUDA error: ", cudaGetErrorString(status));
}

// SMs the split plan assumes on every GPU: the split length sets the summation order, so
// results are bitwise the same on any GPU (and under torch.use_deterministic_algorithms).
constexpr int64_t kPlanSms = 132;

struct CudaDevice {
  struct Guard {  // makes the tensor's GPU current for the call
    explicit Guard(const Tensor& on) : guard(on.get_device_index()) {}
    torch::stable::accelerator::DeviceGuard guard;
  };

  int device = current_device();
  cudaStream_t stream = current_stream(device);

  int64_t sms() const {
    int count = 0;
    check_cuda(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
  }
  int64_t plan_sms() const { return kPlanSms; }

  template <typename... P, typename... Args>
  void launch(void (*kernel)(P...), int64_t blocks, int threads, Args&&... args) const {
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(std::forward<Args>(args)...);
    check_cuda(cudaGetLastError());
  }

  Tensor empty(Sizes sizes, ScalarType dtype, const Tensor& like) const {
    return fastgat::empty(sizes, dtype, like);
  }

 private:
  static int current_device() {
    int index = 0;
    check_cuda(cudaGetDevice(&index));
    return index;
  }
  // torch's current stream on the device (what a torch op on these tensors would use).
  static cudaStream_t current_stream(int index) {
    void* stream = nullptr;
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(index, &stream));
    return static_cast<cudaStream_t>(stream);
  }
};

}  // namespace cuda
}  // namespace fastgat
