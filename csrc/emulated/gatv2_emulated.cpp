// GATv2's CUDA kernels (csrc/cuda/gatv2_kernels.cuh, gatv2_launch.h) compiled with the host
// compiler against the SIMT emulator and registered as fastgat_emulated::gatv2_fused_forward /
// gatv2_fused_backward on CPU tensors, with the schemas of fastgat::gatv2_fused_*: the GPU's
// kernel bodies and launch plan (docs/design.md §8). Test-only, as gat_emulated.cpp.
#include "emulated_device.h"  // first: simt.h defines the CUDA keywords the kernel headers use

#include <torch/library.h>

#include "../common/schema.h"
#include "../cuda/gatv2_launch.h"

namespace fastgat {
namespace emulated {
namespace {

std::tuple<at::Tensor, at::Tensor> gatv2_forward(
    const at::Tensor& xl, const at::Tensor& xr, const at::Tensor& att,
    const c10::optional<at::Tensor>& e, const c10::optional<at::Tensor>& e_loop,
    const at::Tensor& rowptr, const at::Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const c10::optional<at::Tensor>& seed) {
  return cuda::gatv2_fused_forward(EmulatedDevice{}, xl, xr, att, e, e_loop, rowptr, col,
                                   num_loops, negative_slope, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gatv2_backward(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& xl,
    const at::Tensor& xr, const at::Tensor& att, const c10::optional<at::Tensor>& e,
    const c10::optional<at::Tensor>& e_loop, const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& colptr, const at::Tensor& csc_row, const at::Tensor& csc_eid,
    int64_t num_loops, double negative_slope, double dropout,
    const c10::optional<at::Tensor>& seed) {
  return cuda::gatv2_fused_backward(EmulatedDevice{}, dout, out, lse, xl, xr, att, e, e_loop,
                                    rowptr, col, colptr, csc_row, csc_eid, num_loops,
                                    negative_slope, dropout, seed);
}

}  // namespace
}  // namespace emulated
}  // namespace fastgat

TORCH_LIBRARY_FRAGMENT(fastgat_emulated, m) {
  m.def(fastgat::kGatv2ForwardSchema);
  m.def(fastgat::kGatv2BackwardSchema);
}

TORCH_LIBRARY_IMPL(fastgat_emulated, CPU, m) {
  m.impl("gatv2_fused_forward", &fastgat::emulated::gatv2_forward);
  m.impl("gatv2_fused_backward", &fastgat::emulated::gatv2_backward);
}
