// The CUDA kernels of csrc/cuda/ compiled with the host compiler against the SIMT emulator
// (simt.h) and registered as fastgat_emulated::fused_forward / fused_backward on CPU tensors,
// with the schemas of fastgat::fused_*: the same kernel bodies and the same launch plan
// (csrc/cuda/launch.h) as the GPU build. A test-only library (tests/emulated_cuda.py builds it
// under AddressSanitizer and UndefinedBehaviorSanitizer); it is not part of the wheel.
#include "emulated_device.h"  // first: simt.h defines the CUDA keywords the kernel headers use

#include "../common/schema.h"
#include "../cuda/launch.h"

namespace fastgat {
namespace emulated {
namespace {

int64_t set_num_sms(int64_t sms) {
  FASTGAT_CHECK(sms >= 1, "the emulated SM count must be positive, got ", sms);
  return num_sms.exchange(sms);
}

int64_t launch_count() { return num_launches.load(); }

}  // namespace
}  // namespace emulated
}  // namespace fastgat

STABLE_TORCH_LIBRARY(fastgat_emulated, m) {
  m.def(fastgat::kForwardSchema);
  m.def(fastgat::kBackwardSchema);
  m.def("set_num_sms(int sms) -> int");
  m.def("launch_count() -> int");
}

// No tensor argument to dispatch on: one kernel for every key.
STABLE_TORCH_LIBRARY_IMPL(fastgat_emulated, CompositeExplicitAutograd, m) {
  m.impl("set_num_sms", TORCH_BOX(&fastgat::emulated::set_num_sms));
  m.impl("launch_count", TORCH_BOX(&fastgat::emulated::launch_count));
}

STABLE_TORCH_LIBRARY_IMPL(fastgat_emulated, CPU, m) {
  using fastgat::emulated::EmulatedDevice;
  m.impl("fused_forward", TORCH_BOX(&fastgat::cuda::fused_forward<EmulatedDevice>));
  m.impl("fused_backward", TORCH_BOX(&fastgat::cuda::fused_backward<EmulatedDevice>));
}
