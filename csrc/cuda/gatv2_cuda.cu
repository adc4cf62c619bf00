// GATv2's fused CUDA kernels on a real GPU: the kernels (gatv2_kernels.cuh, the forward skeleton
// of forward_kernels.cuh) and their launch code (gatv2_launch.h) are shared with the emulated
// build of csrc/emulated/; this file registers them for CUDA tensors on the GPU device of
// cuda_device.cuh.
#include "cuda_device.cuh"
#include "gatv2_launch.h"

STABLE_TORCH_LIBRARY_IMPL(fastgat, CUDA, m) {
  using fastgat::cuda::CudaDevice;
  m.impl("gatv2_fused_forward", TORCH_BOX(&fastgat::cuda::gatv2_fused_forward<CudaDevice>));
  m.impl("gatv2_fused_backward", TORCH_BOX(&fastgat::cuda::gatv2_fused_backward<CudaDevice>));
}
