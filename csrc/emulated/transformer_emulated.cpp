// TransformerConv's CUDA kernels (csrc/cuda/transformer_kernels.cuh) compiled with the host
// compiler against the SIMT emulator and registered as fastgat_emulated::transformer_* on CPU
// tensors, with the schemas of fastgat::transformer_*: the same kernel bodies and launch plan
// (csrc/cuda/transformer_launch.h) as the GPU build. Test-only, as gat_emulated.cpp.
#include "emulated_device.h"  // first: simt.h defines the CUDA keywords the kernel headers use

#include <torch/library.h>

#include "../common/schema.h"
#include "../cuda/transformer_launch.h"

namespace fastgat {
namespace emulated {
namespace {

std::tuple<at::Tensor, at::Tensor> transformer_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& e, const at::Tensor& rowptr, const at::Tensor& col,
    double scale, double dropout, const c10::optional<at::Tensor>& seed) {
  return cuda::transformer_forward(EmulatedDevice{}, q, k, v, e, rowptr, col, scale, dropout,
                                   seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> transformer_backward(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& e,
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& colptr,
    const at::Tensor& csc_row, const at::Tensor& csc_eid, double scale, double dropout,
    const c10::optional<at::Tensor>& seed) {
  return cuda::transformer_backward(EmulatedDevice{}, dout, out, lse, q, k, v, e, rowptr, col,
                                    colptr, csc_row, csc_eid, scale, dropout, seed);
}

}  // namespace
}  // namespace emulated
}  // namespace fastgat

TORCH_LIBRARY_FRAGMENT(fastgat_emulated, m) {
  m.def(fastgat::kTransformerForwardSchema);
  m.def(fastgat::kTransformerBackwardSchema);
}

TORCH_LIBRARY_IMPL(fastgat_emulated, CPU, m) {
  m.impl("transformer_forward", &fastgat::emulated::transformer_forward);
  m.impl("transformer_backward", &fastgat::emulated::transformer_backward);
}
