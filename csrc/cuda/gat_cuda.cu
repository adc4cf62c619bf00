// The fused CUDA kernels on a real GPU: the kernels (forward_kernels.cuh, backward_kernels.cuh)
// and their launch plan (launch.h) are shared with the emulated build of csrc/emulated/; this
// file adds only what a GPU needs: streams, the device's SM count and <<<>>> launches.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <utility>

#include "launch.h"

namespace fastgat {
namespace cuda {
namespace {

struct CudaDevice {
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

std::tuple<at::Tensor, at::Tensor> fused_forward_cuda(
    const at::Tensor& h, const at::Tensor& s, const at::Tensor& d,
    const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& t_loop,
    const at::Tensor& rowptr, const at::Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const c10::optional<at::Tensor>& seed) {
  const c10::cuda::CUDAGuard guard(h.device());
  return fused_forward(CudaDevice{}, h, s, d, t, t_loop, rowptr, col, num_loops, negative_slope,
                       dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward_cuda(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& h,
    const at::Tensor& s, const at::Tensor& d, const c10::optional<at::Tensor>& t,
    const c10::optional<at::Tensor>& t_loop, const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& colptr, const at::Tensor& csc_row, const at::Tensor& csc_eid,
    int64_t num_loops, double negative_slope, double dropout,
    const c10::optional<at::Tensor>& seed) {
  const c10::cuda::CUDAGuard guard(h.device());
  return fused_backward(CudaDevice{}, dout, out, lse, h, s, d, t, t_loop, rowptr, col, colptr,
                        csc_row, csc_eid, num_loops, negative_slope, dropout, seed);
}

}  // namespace
}  // namespace cuda
}  // namespace fastgat

TORCH_LIBRARY_IMPL(fastgat, CUDA, m) {
  m.impl("fused_forward", &fastgat::cuda::fused_forward_cuda);
  m.impl("fused_backward", &fastgat::cuda::fused_backward_cuda);
}
