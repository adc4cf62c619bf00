"""The SIMT emulator of csrc/emulated/simt.h on tiny kernels (csrc/emulated/selftest.cpp):
lane-group collectives of 1..32 lanes whose groups loop different numbers of times, and the
shuffles a GPU leaves undefined, which it must report. The last test runs every emulated test
(these and tests/test_cuda.py's) in a child pytest under ASan and UBSan."""
import pytest
import torch

import emulated_cuda

SUM, MAX, BROADCAST = 0, 1, 2


@pytest.fixture(scope="module")
def ops():
    return emulated_cuda.load()


def expected(x, trips, size, collective):
    """What group_kernel computes, in torch: per repeat r, the group's collective of x (r + 1)."""
    groups = x.view(-1, size)
    out = torch.zeros_like(groups)
    for g, repeats in enumerate(trips.tolist()):
        for r in range(repeats):
            v = groups[g] * (r + 1)
            out[g] += {SUM: v.sum(), MAX: v.max(), BROADCAST: v[r % size]}[collective]
    return out.view(-1)


@pytest.mark.emulated
@pytest.mark.parametrize("size", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("collective", [SUM, MAX, BROADCAST], ids=["sum", "max", "broadcast"])
def test_group_collectives_with_different_trip_counts(ops, size, collective):
    """Groups of one warp loop 0..5 times: each waits only for its own lanes."""
    n = 512 + 64  # three blocks, the last one partly filled with whole groups
    g = torch.Generator().manual_seed(size * 3 + collective)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    trips = torch.randint(0, 6, (n // size,), generator=g)
    got = ops.group_collective(x, trips, size, collective)
    torch.testing.assert_close(got, expected(x, trips, size, collective), rtol=1e-12, atol=1e-12)


@pytest.mark.emulated
@pytest.mark.parametrize("kernel,message", [
    ("exited_partner", "exits while lane 0 waits for it"),
    ("other_shuffle", "whose mask names it, waits at __shfl_xor_sync(mask 0xffffffff"),
    ("mask_omits_self", "mask 0x1 omits itself"),
    ("source_outside_mask", "reads lane 5, which mask 0x3 does not name"),
    ("uneven_trips", "exits while lane 1 waits for it"),
])
def test_undefined_shuffles_are_reported(ops, kernel, message):
    with pytest.raises(RuntimeError, match="emulated CUDA: .*" + message.replace("(", r"\(")):
        ops.misuse(kernel)


@pytest.mark.emulated
def test_invalid_launch_is_reported(ops):
    """An empty graph must not reach a launch of zero blocks, which a GPU rejects."""
    with pytest.raises(RuntimeError, match="invalid launch configuration"):
        ops.group_collective(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
                             1, SUM)


@pytest.mark.timeout(1800)  # builds the library (minutes) and runs ~130 emulated tests
def test_emulated_cuda_suite_under_sanitizers():
    """Every `emulated` test, in a child pytest with ASan loaded first (tests/emulated_cuda.py)."""
    if emulated_cuda.active():
        pytest.skip("this is the child process")
    assert emulated_cuda.run_suite(["-q", "-x", "tests/test_emulator.py",
                                    "tests/test_cuda.py", "tests/test_cuda_transformer.py"]) == 0
