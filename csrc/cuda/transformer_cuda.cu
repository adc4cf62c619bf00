// TransformerConv's fused CUDA kernels on a real GPU: the kernels (transformer_kernels.cuh) and
// their launch plan (transformer_launch.h) are shared with the emulated build of csrc/emulated/;
// this file registers them for CUDA tensors on the GPU device of cuda_device.cuh.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_device.cuh"
#include "transformer_launch.h"

namespace fastgat {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> transformer_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& e, const at::Tensor& rowptr, const at::Tensor& col,
    double scale, double dropout, const c10::optional<at::Tensor>& seed) {
  const c10::cuda::CUDAGuard guard(q.device());
  return transformer_forward(CudaDevice{}, q, k, v, e, rowptr, col, scale, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> transformer_backward_cuda(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& e,
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& colptr,
    const at::Tensor& csc_row, const at::Tensor& csc_eid, double scale, double dropout,
    const c10::optional<at::Tensor>& seed) {
  const c10::cuda::CUDAGuard guard(q.device());
  return transformer_backward(CudaDevice{}, dout, out, lse, q, k, v, e, rowptr, col, colptr,
                              csc_row, csc_eid, scale, dropout, seed);
}

}  // namespace
}  // namespace cuda
}  // namespace fastgat

TORCH_LIBRARY_IMPL(fastgat, CUDA, m) {
  m.impl("transformer_forward", &fastgat::cuda::transformer_forward_cuda);
  m.impl("transformer_backward", &fastgat::cuda::transformer_backward_cuda);
}
