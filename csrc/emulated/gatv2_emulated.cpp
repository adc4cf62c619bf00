// GATv2's CUDA kernels (csrc/cuda/gatv2_kernels.cuh, gatv2_launch.h) compiled with the host
// compiler against the SIMT emulator and registered as fastgat_emulated::gatv2_fused_forward /
// gatv2_fused_backward on CPU tensors, with the schemas of fastgat::gatv2_fused_*: the GPU's
// kernel bodies and launch plan (docs/design.md §8). Test-only, as gat_emulated.cpp.
#include "emulated_device.h"  // first: simt.h defines the CUDA keywords the kernel headers use

#include "../common/schema.h"
#include "../cuda/gatv2_launch.h"

STABLE_TORCH_LIBRARY_FRAGMENT(fastgat_emulated, m) {
  m.def(fastgat::kGatv2ForwardSchema);
  m.def(fastgat::kGatv2BackwardSchema);
}

STABLE_TORCH_LIBRARY_IMPL(fastgat_emulated, CPU, m) {
  using fastgat::emulated::EmulatedDevice;
  m.impl("gatv2_fused_forward", TORCH_BOX(&fastgat::cuda::gatv2_fused_forward<EmulatedDevice>));
  m.impl("gatv2_fused_backward", TORCH_BOX(&fastgat::cuda::gatv2_fused_backward<EmulatedDevice>));
}
