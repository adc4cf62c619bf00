"""Triton-specific checks: split hub rows and their merge, index and offset widths, odd H and C,
dtypes, the dropout RNG at 64-bit counters. The backend-generic tests live in test_op.py.

Without a GPU the kernels run under the Triton interpreter (milliseconds per program), so the
CPU graphs are small; `gpu` tests repeat the checks at scale on a CUDA device.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton reads this when the kernels are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fastgat.backends import (torch_ref, triton_device, triton_kernels,  # noqa: E402
                              unavailable_reason)
from fastgat.dropout import keep_scale, threshold  # noqa: E402
from fastgat.graph import Graph  # noqa: E402
from helpers import TOLERANCE, rel_error  # noqa: E402

# Minutes, not seconds: `pytest -m "not slow"` leaves it out of the quick loop.
pytestmark = pytest.mark.slow

CHUNK = triton_kernels.CHUNK
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if unavailable_reason("triton", DEVICE):
    pytest.skip(unavailable_reason("triton", DEVICE), allow_module_level=True)
GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(),
                              reason="needs a CUDA device; runs on the device machine")
NAMES = ("out", "lse", "dh", "ds", "dd", "dt", "dt_loop")


def skewed_graph(seed, num_nodes=24, num_edges=60, dst_hub=3 * CHUNK + 5, src_hub=2 * CHUNK + 3,
                 device=DEVICE, loops=True):
    """Random edges plus node 1 receiving dst_hub edges and node 2 sending src_hub edges, so
    both the CSR and the CSC pass split a row into several chunks. With `loops`, the input's
    self loops are dropped and every node gets an implicit one; else the edges stay as drawn."""
    g = torch.Generator().manual_seed(seed)
    src = torch.cat([torch.randint(0, num_nodes, (num_edges,), generator=g),
                     torch.randint(0, num_nodes, (dst_hub,), generator=g),
                     torch.full((src_hub,), 2)])
    dst = torch.cat([torch.randint(0, num_nodes, (num_edges,), generator=g),
                     torch.full((dst_hub,), 1),
                     torch.randint(0, num_nodes, (src_hub,), generator=g)])
    perm = torch.randperm(src.numel(), generator=g)
    return Graph.from_coo(src[perm].to(device), dst[perm].to(device), num_nodes, num_nodes,
                          drop_self_loops=loops, num_loops=num_nodes if loops else 0)


def random_inputs(graph, seed, heads, channels, dtype, device=DEVICE):
    """(h, s, d, t, t_loop, dout) rounded to dtype."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    return (rand(graph.num_src, heads, channels), rand(graph.num_src, heads),
            rand(graph.num_dst, heads), rand(graph.num_edges, heads),
            rand(graph.num_loops, heads), rand(graph.num_dst, heads, channels))


def run(module, inputs, graph, index=None, slope=0.2, dropout=0.0, seed=None, saved=None):
    """Forward then explicit backward of one backend module: (out, lse, dh, ds, dd, dt, dt_loop).
    `saved` replaces the (out, lse) the backward reads."""
    h, s, d, t, t_loop, dout = inputs
    rowptr, col, colptr, csc_row, csc_eid = index or graph.op_args()
    out, lse = module.gat_forward(h, s, d, t, t_loop, rowptr, col, graph.num_loops, slope,
                                  dropout, seed)
    grads = module.gat_backward(dout, *(saved or (out, lse)), h, s, d, t, t_loop, rowptr, col,
                                colptr, csc_row, csc_eid, graph.num_loops, slope, dropout, seed)
    return (out, lse, *grads)


def reference(inputs, graph, got, **kwargs):
    """The float64 reference on the same rounded inputs. Its backward reads the tested
    forward's (out, lse): D_i = <dout_i, out_i> uses the stored, possibly bf16, out, so this
    checks each pass on its own inputs instead of compounding the forward's rounding."""
    saved = tuple(x.double() for x in got[:2])
    return run(torch_ref, [x.double() for x in inputs], graph, saved=saved, **kwargs)


def assert_matches(got, want, dtype, names=NAMES):
    for name, x, ref in zip(names, got, want):
        assert x.shape == ref.shape, name
        if name != "lse":
            assert x.dtype == dtype, name
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(x), finite), name  # lse = -inf exactly where ref's is
        error = rel_error(x[finite], ref[finite])
        assert error < TOLERANCE[dtype], (name, error)


def test_plan_covers_every_slot_once():
    degree = torch.tensor([0, 1, CHUNK, CHUNK + 1, 5 * CHUNK, 0, 3, 2 * CHUNK + 7])
    num_slots = int(degree.sum()) + 11  # dead slots past rowptr[-1]
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), degree.cumsum(0)]).int()
    work = triton_kernels.plan(ptr, num_slots)
    covered = torch.zeros(num_slots, dtype=torch.long)
    for item, row in enumerate(work.item_row.tolist()):
        if row == degree.numel():
            continue
        chunk = item - int(work.item_ptr[row])
        start = int(ptr[row]) + chunk * CHUNK
        covered[start:min(int(ptr[row + 1]), start + CHUNK)] += 1
    assert covered[:int(ptr[-1])].eq(1).all() and covered[int(ptr[-1]):].eq(0).all()
    split = [row for row in work.split_rows.tolist() if row < degree.numel()]
    assert split == [3, 4, 7]
    assert int(work.split_ptr[-1]) == 2 + 5 + 3 <= work.num_parts
    assert work.item_row.dtype == ptr.dtype


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_split_rows_merge_to_the_reference(dropout):
    graph = skewed_graph(seed=1)
    assert triton_kernels.plan(graph.rowptr, graph.num_edges).split_rows.lt(graph.num_dst).any()
    assert triton_kernels.plan(graph.colptr, graph.num_edges).split_rows.lt(graph.num_src).any()
    inputs = random_inputs(graph, seed=2, heads=3, channels=5, dtype=torch.float64)
    seed = torch.tensor([2**33 + 7], device=DEVICE) if dropout else None
    got = run(triton_kernels, inputs, graph, dropout=dropout, seed=seed)
    assert_matches(got, reference(inputs, graph, got, dropout=dropout, seed=seed), torch.float64)
    again = run(triton_kernels, inputs, graph, dropout=dropout, seed=seed)
    for name, a, b in zip(NAMES, got, again):
        assert torch.equal(a, b), name  # no atomics: bitwise deterministic


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_against_float64(dtype):
    graph = skewed_graph(seed=3)
    inputs = random_inputs(graph, seed=4, heads=2, channels=8, dtype=dtype)
    seed = torch.tensor([11], device=DEVICE)
    got = run(triton_kernels, inputs, graph, dropout=0.2, seed=seed)
    assert got[1].dtype == torch.float32
    assert_matches(got, reference(inputs, graph, got, dropout=0.2, seed=seed), dtype)


@pytest.mark.parametrize("heads,channels,slope,dropout", [
    (1, 1, 0.2, 0.0), (2, 7, -0.5, 0.4), (5, 3, 0.01, 0.0), (8, 33, 1.7, 0.1)])
def test_heads_and_channels_not_powers_of_two(heads, channels, slope, dropout):
    graph = skewed_graph(seed=heads, num_edges=50, dst_hub=CHUNK + 1, src_hub=0)
    inputs = random_inputs(graph, seed=channels, heads=heads, channels=channels,
                           dtype=torch.float64)
    seed = torch.tensor([heads * 1000 + channels], device=DEVICE)
    kwargs = dict(slope=slope, dropout=dropout, seed=seed)
    got = run(triton_kernels, inputs, graph, **kwargs)
    assert_matches(got, reference(inputs, graph, got, **kwargs), torch.float64)


def test_int64_indices_and_wide_offsets_are_bitwise_equal(monkeypatch):
    graph = skewed_graph(seed=5, dst_hub=CHUNK + 9, src_hub=CHUNK + 2)
    inputs = random_inputs(graph, seed=6, heads=2, channels=3, dtype=torch.float32)
    kwargs = dict(dropout=0.25, seed=torch.tensor([3], device=DEVICE))
    base = run(triton_kernels, inputs, graph, **kwargs)
    wide_index = tuple(x.long() for x in graph.op_args())
    monkeypatch.setattr(triton_kernels, "_INT32_LIMIT", 1)  # forces the int64 offset path
    for index in (graph.op_args(), wide_index):
        for name, a, b in zip(NAMES, base, run(triton_kernels, inputs, graph, index, **kwargs)):
            assert torch.equal(a, b), name


@triton.jit
def _offsets_kernel(item_row, item_ptr, ptr, split_ptr, out, num_rows, H: tl.constexpr,
                    HC: tl.constexpr, CHUNK: tl.constexpr, WIDE: tl.constexpr):
    """The kernels' offset arithmetic for work item 1: its first slots k as k * H + head (t, dt,
    dropout counters) and its partial-state slot as part * H * C (ws_acc, ws_dh)."""
    row, chunk, start, end, split = triton_device._item(item_row, item_ptr, ptr, 1, num_rows,
                                                        CHUNK, WIDE)
    k = start + tl.arange(0, 4)
    tl.store(out + tl.arange(0, 4), k * H + (H - 1))
    tl.store(out + 4, triton_device._part(split_ptr, row, chunk, WIDE) * HC)


def test_wide_mode_offsets_do_not_wrap_with_int32_indices():
    """E * H >= 2^31 with int32 indices (E < 2^31): WIDE mode must widen the slot index and the
    partial-state slot before multiplying. Checked on hand-made index tables, nothing of that
    size allocated: one row of 2^30 + 8 slots in two chunks of 2^30, H = 4, H * C = 32, its
    partial states from slot 2^27 on."""
    heads, hc, chunk, first_part = 4, 32, 2**30, 2**27
    index = lambda *v: torch.tensor(v, dtype=torch.int32, device=DEVICE)  # noqa: E731
    ptr, item_row, item_ptr = index(0, chunk + 8), index(0, 0), index(0, 2)
    split_ptr = index(first_part, first_part + 2)
    out = torch.zeros(5, dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(1,)](item_row, item_ptr, ptr, split_ptr, out, 1, H=heads, HC=hc,
                          CHUNK=chunk, WIDE=True)
    k = chunk + torch.arange(4)
    assert out[:4].cpu().tolist() == (k * heads + heads - 1).tolist()
    assert out[4].item() == (first_part + 1) * hc


def test_deterministic_mode_pins_the_configuration(monkeypatch):
    """Autotuning by timing may choose another block size, hence another summation order, in
    another process: deterministic mode launches the plain kernel with a pinned config."""
    meta = triton_kernels._meta(torch.empty(3, 4, 8), 3, 10, None, None, 0.2, 0.0, None)[0]
    tuned = triton.autotune(triton_kernels._configs(), key=["H", "C"],
                            prune_configs_by={"early_config_prune": triton_kernels._prune})(
        triton_device.forward_kernel)
    assert triton_kernels._launcher(tuned, meta) == (tuned, {})
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    kernel, config = triton_kernels._launcher(tuned, meta)
    assert kernel is triton_device.forward_kernel
    assert config == {"BLOCK_E": 64, "num_warps": 4}  # 64 x 4 heads x 8 channels fits 16384


@pytest.mark.gpu
@GPU_ONLY
def test_gpu_deterministic_mode_is_bitwise_equal_across_processes(tmp_path):
    import subprocess
    import sys
    script = (
        "import sys, torch\n"
        "torch.use_deterministic_algorithms(True)\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_triton import power_law_graph, random_inputs, run\n"
        "from fastgat.backends import triton_kernels\n"
        "graph = power_law_graph(5000, 200000, 3, 'cuda')\n"
        "inputs = random_inputs(graph, seed=4, heads=4, channels=32, dtype=torch.float32)\n"
        "torch.save([x.cpu() for x in run(triton_kernels, inputs, graph)], sys.argv[1])\n")
    results = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        results.append(torch.load(tmp_path / name))
    for name, a, b in zip(NAMES, *results):
        assert torch.equal(a, b), name


@triton.jit
def _keep_kernel(seed_ptr, idx_ptr, out_ptr, n, threshold, scale_bits, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    idx = tl.load(idx_ptr + offs, mask=offs < n)
    scale = tl.cast(tl.cast(scale_bits, tl.int64), tl.float64, bitcast=True)
    tl.store(out_ptr + offs, triton_device._keep(tl.load(seed_ptr), idx, threshold, scale),
             mask=offs < n)


def test_dropout_rule_at_64_bit_counters():
    """The kernels' keep mask equals fastgat.dropout's for counters and seeds past 2^32."""
    p, heads = 0.5, 1
    seed = torch.tensor([2**45 + 2**32 + 17], device=DEVICE)
    slots = torch.tensor([0, 1, 5, 2**31 - 1, 2**31, 2**32 + 3, 2**40 + 12345, 2**50 + 1] +
                         list(range(1000, 1056)), device=DEVICE)
    out = torch.empty(slots.numel(), dtype=torch.float64, device=DEVICE)
    _keep_kernel[(1,)](seed, slots, out, slots.numel(), threshold(p),
                       triton_kernels._f64_bits(1 / (1 - p)), BLOCK=64)
    want = keep_scale(seed, slots, heads, p, torch.float64).squeeze(1)
    assert torch.equal(out, want)
    assert 0 < int(want.gt(0).sum()) < slots.numel()


def power_law_graph(num_nodes, num_edges, seed, device, loops=True):
    """Zipf-distributed endpoints: the top destinations and sources hold thousands of edges.
    `loops` as for skewed_graph."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.arange(1, num_nodes + 1, dtype=torch.float64) ** -1.1
    dst = torch.multinomial(weight, num_edges, replacement=True, generator=g)
    src = torch.randperm(num_nodes, generator=g)[
        torch.multinomial(weight, num_edges, replacement=True, generator=g)]
    return Graph.from_coo(src.to(device), dst.to(device), num_nodes, num_nodes,
                          drop_self_loops=loops, num_loops=num_nodes if loops else 0)


@pytest.mark.gpu
@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads,channels", [(4, 32), (3, 20), (8, 128)])
def test_gpu_power_law_graph(dtype, heads, channels):
    graph = power_law_graph(20_000, 300_000, seed=heads, device="cuda")
    assert int(torch.diff(graph.rowptr).max()) > 8 * CHUNK  # hub rows split
    inputs = random_inputs(graph, seed=channels, heads=heads, channels=channels, dtype=dtype,
                           device="cuda")
    kwargs = dict(dropout=0.1, seed=torch.tensor([77], device="cuda"))
    got = run(triton_kernels, inputs, graph, **kwargs)
    assert_matches(got, reference(inputs, graph, got, **kwargs), dtype)
    for name, a, b in zip(NAMES, got, run(triton_kernels, inputs, graph, **kwargs)):
        assert torch.equal(a, b), name


@pytest.mark.gpu
@GPU_ONLY
def test_gpu_forward_and_backward_capture_in_a_cuda_graph():
    """No host sync: both passes record into a CUDA graph (after autotuning) and replay."""
    graph = power_law_graph(5_000, 60_000, seed=9, device="cuda")
    inputs = random_inputs(graph, seed=10, heads=4, channels=16, dtype=torch.float32,
                           device="cuda")
    kwargs = dict(dropout=0.2, seed=torch.tensor([5], device="cuda"))
    eager = run(triton_kernels, inputs, graph, **kwargs)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        captured = run(triton_kernels, inputs, graph, **kwargs)
    cuda_graph.replay()
    torch.cuda.synchronize()
    for name, a, b in zip(NAMES, eager, captured):
        assert torch.equal(a, b), name
