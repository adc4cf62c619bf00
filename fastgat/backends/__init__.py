"""Which implementation of the op runs where, chosen up front and reported, never silently.

    torch   scatter ops in plain torch (any device; the float64 reference)
    triton  fused Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1)
    cuda    fused CUDA C++ kernels from fastgat._cuda
    cpu     fused C++ CPU kernels from fastgat._C
"""
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
import warnings
from typing import Dict

import torch

from .._extension import kernel_status

NAMES = ("torch", "triton", "cuda", "cpu")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
_MODULES = {"torch": "torch_ref", "triton": "triton_kernels", "cuda": "compiled", "cpu": "compiled"}
# The backends implementing each scoring rule (the op of fastgat/ops.py it runs: "gat"
# fastgat::gat_attention, "gatv2" fastgat::gatv2_attention, "transformer"
# fastgat::transformer_attention); a rule's missing backend is reported, never run in its place.
RULES = {"gat": NAMES, "gatv2": NAMES, "transformer": NAMES}
_COMPILED_OPS = {"gat": "fused_forward", "gatv2": "gatv2_fused_forward",
                 "transformer": "transformer_forward"}


def _triton_status(device_type: str) -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device_type == "cuda":
        return ""
    if os.environ.get("TRITON_INTERPRET") == "1":
        major, minor = importlib.metadata.version("triton").split(".")[:2]
        if (int(major), int(minor)) < (3, 7):
            return ("TRITON_INTERPRET needs triton >= 3.7: older interpreters fail on the "
                    "kernels' data-dependent loop bounds with recent NumPy")
        return ""
    return "Triton kernels run on CUDA tensors, or on CPU tensors only with TRITON_INTERPRET=1"


def unavailable_reason(name: str, device_type: str, rule: str = "gat") -> str:
    """'' if backend `name` can run `rule` on tensors of `device_type`, else the reason not."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {NAMES}")
    if name not in RULES[rule]:
        return f"the {name!r} backend has no {rule} kernels (it implements {RULES[rule]})"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if name == "torch":
        return ""
    if name == "triton":
        return _triton_status(device_type)
    if name != device_type:
        return f"the {name!r} backend runs on {name.upper()} tensors, not {device_type.upper()}"
    return kernel_status(name.upper(), _COMPILED_OPS[rule])


def available_backends(device_type: str = "cuda" if torch.cuda.is_available() else "cpu"
                       ) -> Dict[str, str]:
    """Every backend with 'available' or the reason it is not, for tensors on `device_type`."""
    return {name: unavailable_reason(name, device_type) or "available" for name in NAMES}


_DEPRECATED = ("fastgat.backends(...) and fastgat.backends.backends(...) are deprecated and "
               "will be removed in fastgat 0.3; call fastgat.available_backends(...)")


class _CallableModule(types.ModuleType):
    """This package, still callable as the function `fastgat.backends()` of fastgat 0.1 was,
    while `import fastgat.backends` gives the package."""

    def __call__(self, *args, **kwargs) -> Dict[str, str]:
        warnings.warn(_DEPRECATED, DeprecationWarning, stacklevel=2)
        return available_backends(*args, **kwargs)


def __getattr__(name: str):
    if name == "backends":  # `from fastgat.backends import backends`, the 0.1 spelling
        warnings.warn(_DEPRECATED, DeprecationWarning, stacklevel=2)
        return available_backends
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallableModule


@torch.compiler.assume_constant_result  # a pure lookup: torch.compile folds it to a constant
def resolve(name: str, device_type: str, rule: str = "gat") -> str:
    """The concrete backend for `name` ('auto' or one of NAMES) running `rule` on
    `device_type`, or an error."""
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device_type, ("torch",)):
            if not unavailable_reason(candidate, device_type, rule):
                return candidate
        name = "torch"
    reason = unavailable_reason(name, device_type, rule)
    if reason:
        raise RuntimeError(f"backend {name!r} is unavailable on {device_type}: {reason}")
    return name


def implementation(name: str):
    """The module implementing <rule>_forward / <rule>_backward for a resolved backend name."""
    return importlib.import_module(f".{_MODULES[name]}", __name__)
