"""The single place that knows whether the compiled libraries loaded, and why not:
`fastgat._C` (the op schemas and the CPU kernels) and `fastgat._cuda` (the CUDA kernels, which
need a CUDA build of torch). Both are built on torch's stable ABI: one build serves every torch
from 2.11 on."""
import importlib.util

import torch

try:
    from . import _C  # noqa: F401  (importing registers torch.ops.fastgat.fused_*)
    LOAD_ERROR = None
except ImportError as error:  # a pure-Python install: the fallbacks still work
    LOAD_ERROR = (f"fastgat._C failed to load ({error})"
                  if importlib.util.find_spec(f"{__package__}._C") is not None else
                  "fastgat._C is not built (pip install --no-build-isolation . builds it)")


def _load_cuda_kernels() -> str:
    """Registers the CUDA kernels of fastgat._cuda; '' or why they are not there."""
    if LOAD_ERROR is not None:
        return LOAD_ERROR
    spec = importlib.util.find_spec(f"{__package__}._cuda")
    if spec is None:
        return "fastgat was built without its CUDA kernels (no CUDA toolkit at build time)"
    if torch.version.cuda is None:
        return "fastgat's CUDA kernels need a CUDA build of torch; this torch is CPU-only"
    try:
        torch.ops.load_library(spec.origin)
    except OSError as error:
        return f"fastgat._cuda failed to load ({error})"
    return ""


CUDA_LOAD_ERROR = _load_cuda_kernels()


# (dispatch key, op) pairs found registered: a kernel once registered stays, so the layers'
# per-call backend check skips the dispatcher lookup (a library loaded later may still add one).
_REGISTERED = set()


def kernel_status(dispatch_key: str, op: str = "fused_forward") -> str:
    """'' if the compiled kernel of fastgat::`op` exists for dispatch_key ('CPU' or 'CUDA'),
    else why not."""
    if LOAD_ERROR is not None:
        return LOAD_ERROR
    if dispatch_key == "CUDA" and CUDA_LOAD_ERROR:
        return CUDA_LOAD_ERROR
    if (dispatch_key, op) in _REGISTERED:
        return ""
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgat::{op}", dispatch_key):
        return f"fastgat._C was built without {dispatch_key} kernels for {op}"
    _REGISTERED.add((dispatch_key, op))
    return ""
