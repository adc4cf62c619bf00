// GAT's fused CUDA kernels on a real GPU: the kernels (forward_kernels.cuh, backward_kernels.cuh)
// and their launch plan (launch.h) are shared with the emulated build of csrc/emulated/; this
// file registers them for CUDA tensors on the GPU device of cuda_device.cuh.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_device.cuh"
#include "launch.h"

namespace fastgat {
namespace cuda {
namespace {

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
