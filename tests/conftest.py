import os

import pytest
import torch

import emulated_cuda

# Without a GPU the Triton kernels run under the interpreter on CPU tensors; Triton reads this
# when kernels are defined, so it must be set before fastgat's Triton module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The `target` and `sms` fixtures of the CUDA kernel tests, for every rule's test module.
pytest_plugins = ["cuda_targets"]

GPU_REASON = "needs a CUDA device (scripts/gpu_check.sh runs these on a GPU machine)"


def pytest_collection_modifyitems(config, items):
    # Emulated-CUDA tests need the sanitizer runtime loaded first: outside the child process
    # that test_emulator.py starts for them they are deselected, not skipped (they do run).
    if not emulated_cuda.active():
        emulated = [item for item in items if "emulated" in item.keywords]
        if emulated:
            config.hook.pytest_deselected(items=emulated)
            items[:] = [item for item in items if "emulated" not in item.keywords]
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=GPU_REASON))
        # Triton on CPU tensors runs under its interpreter, far slower than any other backend.
        params = getattr(item, "callspec", None)
        if params is not None and any(isinstance(v, str) and v == "triton"
                                      for v in params.params.values()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def fresh_dynamo():
    """Each compile test starts from an empty Dynamo cache: every test compiles the same
    forward again, and the recompile limit counts across tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
