"""Builds fastgat._C (C++ CPU kernels) always, and fastgat._cuda (CUDA kernels) when a CUDA
toolkit and a CUDA build of torch are present (or FORCE_CUDA=1). Environment knobs, read here and
nowhere else:
  FORCE_CUDA=1            build the CUDA kernels even if torch sees no GPU (wheels, CI)
  FASTGAT_CPU_ONLY=1      never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST    GPU targets, default "8.0;9.0+PTX" (A100, H100, PTX for newer)
  MAX_JOBS                parallel compile jobs (ninja)
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def build_cuda() -> bool:
    if os.environ.get("FASTGAT_CPU_ONLY") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return CUDA_HOME is not None and torch.version.cuda is not None


# CPython's stable ABI as of 3.10, the oldest Python supported (requires-python in
# pyproject.toml): the library's only Python C calls (the module init in csrc/fastgat.cpp) are
# limited-API, so one cp310-abi3 wheel serves 3.10 and later. The macro and the wheel tag must
# name the same version; .ci/cuda_wheel.sh checks the tag against Requires-Python.
LIMITED_API_MACRO = "-DPy_LIMITED_API=0x030A0000"
LIMITED_API_TAG = "cp310"
# torch's stable ABI (csrc/common/stable.h) as of torch 2.11, the oldest torch supported: the
# headers hide whatever is newer, so the library calls nothing a 2.11 lacks and loads into every
# torch from 2.11 on, whichever torch it was built against.
STABLE_ABI_MACRO = "-DTORCH_TARGET_VERSION=0x020b000000000000"


def extensions():
    """fastgat._C (the op schemas and the CPU kernels) and, with CUDA, fastgat._cuda (the CUDA
    kernels): a library of their own, since they link the CUDA runtime and torch's CUDA library,
    which a CPU build of torch lacks; _C loads everywhere (fastgat/_extension.py)."""
    # No -std flag: torch.utils.cpp_extension picks the standard its headers need (C++20 for 2.14).
    cxx = ["-O3", "-fopenmp", LIMITED_API_MACRO, STABLE_ABI_MACRO]
    cpu = CppExtension("fastgat._C", ["csrc/fastgat.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))],
                       extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
                       py_limited_api=True)
    if not build_cuda():
        return [cpu]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    # USE_CUDA: the C shim then declares its CUDA entries (csrc/cuda/cuda_device.cuh's stream).
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", STABLE_ABI_MACRO, "-DUSE_CUDA"]
    cuda = CUDAExtension("fastgat._cuda", sorted(glob.glob("csrc/cuda/*.cu")),
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc}, py_limited_api=True)
    return [cpu, cuda]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": LIMITED_API_TAG}},
)
