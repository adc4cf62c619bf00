"""What the kernel and layer tests share: the error measure and its bound per dtype, and the
backends to parametrise over. Graph builders live in graphs.py, PyG-parity checks in parity.py,
the CUDA test targets in cuda_targets.py."""
import torch

from fastgat.backends import NAMES, unavailable_reason

# ||x - ref|| / max(||ref||, 1) bounds against the float64 reference computed on the same
# (rounded) inputs: accumulation is float32 for the 16-bit types and float32, float64 for float64.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rel_error(x, ref) -> float:
    """The relative error of x against ref, absolute where ref is near 0."""
    x, ref = x.double().cpu(), ref.double().cpu()
    return ((x - ref).norm() / ref.norm().clamp_min(1.0)).item()


def assert_close(actual, expected, dtype):
    """actual is finite and within dtype's bound of expected."""
    assert torch.isfinite(actual.double()).all()
    if expected.numel():
        assert rel_error(actual, expected) < TOLERANCE[dtype], rel_error(actual, expected)


def backends(device: str = "cpu", rule: str = "gat", interpreted: bool = True):
    """The backends that run `rule` on `device` here; without `interpreted`, not Triton under
    its CPU interpreter (for grids too large for it: the focused Triton cases cover it)."""
    return [name for name in NAMES if not unavailable_reason(name, device, rule)
            and (interpreted or not (name == "triton" and device == "cpu"))]
