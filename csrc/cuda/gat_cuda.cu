// GAT's fused CUDA kernels on a real GPU: the kernels (forward_kernels.cuh, backward_kernels.cuh)
// and their launch code (launch.h) are shared with the emulated build of csrc/emulated/; this file
// registers them for CUDA tensors on the GPU device of cuda_device.cuh.
#include "cuda_device.cuh"
#include "launch.h"

STABLE_TORCH_LIBRARY_IMPL(fastgat, CUDA, m) {
  using fastgat::cuda::CudaDevice;
  m.impl("fused_forward", TORCH_BOX(&fastgat::cuda::fused_forward<CudaDevice>));
  m.impl("fused_backward", TORCH_BOX(&fastgat::cuda::fused_backward<CudaDevice>));
}
