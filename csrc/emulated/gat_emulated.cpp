// The CUDA kernels of csrc/cuda/ compiled with the host compiler against the SIMT emulator
// (simt.h) and registered as fastgat_emulated::fused_forward / fused_backward on CPU tensors,
// with the schemas of fastgat::fused_*: the same kernel bodies and the same launch plan
// (csrc/cuda/launch.h) as the GPU build. A test-only library (tests/emulated_cuda.py builds it
// under AddressSanitizer and UndefinedBehaviorSanitizer); it is not part of the wheel.
#include "emulated_device.h"  // first: simt.h defines the CUDA keywords the kernel headers use

#include <torch/library.h>

#include "../common/schema.h"
#include "../cuda/launch.h"

namespace fastgat {
namespace emulated {
namespace {

std::tuple<at::Tensor, at::Tensor> forward(
    const at::Tensor& h, const at::Tensor& s, const at::Tensor& d,
    const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& t_loop,
    const at::Tensor& rowptr, const at::Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const c10::optional<at::Tensor>& seed) {
  return cuda::fused_forward(EmulatedDevice{}, h, s, d, t, t_loop, rowptr, col, num_loops,
                             negative_slope, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& h,
    const at::Tensor& s, const at::Tensor& d, const c10::optional<at::Tensor>& t,
    const c10::optional<at::Tensor>& t_loop, const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& colptr, const at::Tensor& csc_row, const at::Tensor& csc_eid,
    int64_t num_loops, double negative_slope, double dropout,
    const c10::optional<at::Tensor>& seed) {
  return cuda::fused_backward(EmulatedDevice{}, dout, out, lse, h, s, d, t, t_loop, rowptr, col,
                              colptr, csc_row, csc_eid, num_loops, negative_slope, dropout, seed);
}

int64_t set_num_sms(int64_t sms) {
  TORCH_CHECK(sms >= 1, "fastgat_emulated: the SM count must be positive, got ", sms);
  return num_sms.exchange(sms);
}

}  // namespace
}  // namespace emulated
}  // namespace fastgat

TORCH_LIBRARY(fastgat_emulated, m) {
  m.def(fastgat::kForwardSchema);
  m.def(fastgat::kBackwardSchema);
  m.def("set_num_sms(int sms) -> int", &fastgat::emulated::set_num_sms);
}

TORCH_LIBRARY_IMPL(fastgat_emulated, CPU, m) {
  m.impl("fused_forward", &fastgat::emulated::forward);
  m.impl("fused_backward", &fastgat::emulated::backward);
}
