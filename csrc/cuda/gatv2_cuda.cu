// GATv2's fused CUDA kernels on a real GPU: the kernels (gatv2_kernels.cuh, the forward skeleton
// of forward_kernels.cuh) and their launch code (gatv2_launch.h) are shared with the emulated
// build of csrc/emulated/; this file registers them for CUDA tensors on the GPU device of
// cuda_device.cuh.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_device.cuh"
#include "gatv2_launch.h"

namespace fastgat {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> gatv2_forward_cuda(
    const at::Tensor& xl, const at::Tensor& xr, const at::Tensor& att,
    const c10::optional<at::Tensor>& e, const c10::optional<at::Tensor>& e_loop,
    const at::Tensor& rowptr, const at::Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const c10::optional<at::Tensor>& seed) {
  const c10::cuda::CUDAGuard guard(xl.device());
  return gatv2_fused_forward(CudaDevice{}, xl, xr, att, e, e_loop, rowptr, col, num_loops,
                             negative_slope, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gatv2_backward_cuda(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& xl,
    const at::Tensor& xr, const at::Tensor& att, const c10::optional<at::Tensor>& e,
    const c10::optional<at::Tensor>& e_loop, const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& colptr, const at::Tensor& csc_row, const at::Tensor& csc_eid,
    int64_t num_loops, double negative_slope, double dropout,
    const c10::optional<at::Tensor>& seed) {
  const c10::cuda::CUDAGuard guard(xl.device());
  return gatv2_fused_backward(CudaDevice{}, dout, out, lse, xl, xr, att, e, e_loop, rowptr, col,
                              colptr, csc_row, csc_eid, num_loops, negative_slope, dropout, seed);
}

}  // namespace
}  // namespace cuda
}  // namespace fastgat

TORCH_LIBRARY_IMPL(fastgat, CUDA, m) {
  m.impl("gatv2_fused_forward", &fastgat::cuda::gatv2_forward_cuda);
  m.impl("gatv2_fused_backward", &fastgat::cuda::gatv2_backward_cuda);
}
