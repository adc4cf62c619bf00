"""The single place that knows whether the compiled library `fastgat._C` loaded, and why not."""
import importlib.util

import torch

try:
    from . import _C  # noqa: F401  (importing registers torch.ops.fastgat.fused_*)
    LOAD_ERROR = None
except ImportError as error:  # a pure-Python install: the fallbacks still work
    LOAD_ERROR = (f"fastgat._C failed to load ({error})"
                  if importlib.util.find_spec(f"{__package__}._C") is not None else
                  "fastgat._C is not built (pip install --no-build-isolation . builds it)")


# (dispatch key, op) pairs found registered: a kernel once registered stays, so the layers'
# per-call backend check skips the dispatcher lookup (a library loaded later may still add one).
_REGISTERED = set()


def kernel_status(dispatch_key: str, op: str = "fused_forward") -> str:
    """'' if the compiled kernel of fastgat::`op` exists for dispatch_key ('CPU' or 'CUDA'),
    else why not."""
    if LOAD_ERROR is not None:
        return LOAD_ERROR
    if (dispatch_key, op) in _REGISTERED:
        return ""
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgat::{op}", dispatch_key):
        return f"fastgat._C was built without {dispatch_key} kernels for {op}"
    _REGISTERED.add((dispatch_key, op))
    return ""
