// TransformerConv's CUDA kernels (csrc/cuda/transformer_kernels.cuh) compiled with the host
// compiler against the SIMT emulator and registered as fastgat_emulated::transformer_* on CPU
// tensors, with the schemas of fastgat::transformer_*: the same kernel bodies and launch plan
// (csrc/cuda/transformer_launch.h) as the GPU build. Test-only, as gat_emulated.cpp.
#include "emulated_device.h"  // first: simt.h defines the CUDA keywords the kernel headers use

#include "../common/schema.h"
#include "../cuda/transformer_launch.h"

STABLE_TORCH_LIBRARY_FRAGMENT(fastgat_emulated, m) {
  m.def(fastgat::kTransformerForwardSchema);
  m.def(fastgat::kTransformerBackwardSchema);
}

STABLE_TORCH_LIBRARY_IMPL(fastgat_emulated, CPU, m) {
  using fastgat::emulated::EmulatedDevice;
  m.impl("transformer_forward", TORCH_BOX(&fastgat::cuda::transformer_forward<EmulatedDevice>));
  m.impl("transformer_backward", TORCH_BOX(&fastgat::cuda::transformer_backward<EmulatedDevice>));
}
