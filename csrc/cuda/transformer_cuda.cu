// TransformerConv's fused CUDA kernels on a real GPU: the kernels (transformer_kernels.cuh) and
// their launch code (transformer_launch.h) are shared with the emulated build of csrc/emulated/;
// this file registers them for CUDA tensors on the GPU device of cuda_device.cuh.
#include "cuda_device.cuh"
#include "transformer_launch.h"

STABLE_TORCH_LIBRARY_IMPL(fastgat, CUDA, m) {
  using fastgat::cuda::CudaDevice;
  m.impl("transformer_forward", TORCH_BOX(&fastgat::cuda::transformer_forward<CudaDevice>));
  m.impl("transformer_backward", TORCH_BOX(&fastgat::cuda::transformer_backward<CudaDevice>));
}
