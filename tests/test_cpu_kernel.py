"""The fused C++ CPU kernel (backend='cpu') beyond the generic backend tests of test_op.py:
index dtypes, float16, thread-count independence, hub rows, dead slots, boundary checks."""
import pytest
import torch

from fastgat._extension import kernel_status
from fastgat.backends import torch_ref
from fastgat.graph import Graph
from fastgat.ops import gat_attention
from graphs import random_graph
from helpers import TOLERANCE, rel_error

pytestmark = pytest.mark.skipif(bool(kernel_status("CPU")),
                                reason=f"no fused CPU kernel: {kernel_status('CPU')}")



def make_case(kind, seed, dtype=torch.float64, heads=4, channels=21, index_dtype=torch.int32,
              **graph_kwargs):
    src, dst, num_src, num_dst = random_graph(kind, seed, **graph_kwargs)
    num_loops = min(num_src, num_dst)
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=True,
                           num_loops=num_loops)
    index = [x.to(index_dtype) for x in graph.op_args()]
    g = torch.Generator().manual_seed(seed + 1)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    inputs = (rand(num_src, heads, channels), rand(num_src, heads), rand(num_dst, heads),
              rand(graph.num_edges, heads), rand(num_loops, heads))
    return inputs, index, num_loops


def run(inputs, index, num_loops, backend="cpu", dropout=0.0, seed=None, slope=0.2):
    return gat_attention(*inputs, *index, num_loops, slope, dropout, seed, backend)


def forward_backward(inputs, index, num_loops, dout, **kwargs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out, lse = run(leaves, index, num_loops, **kwargs)
    return (out, lse, *torch.autograd.grad(out, leaves, dout.to(out.dtype)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_dtypes_against_float64_reference(dtype, dropout):
    inputs, index, num_loops = make_case("hub", 31, dtype)
    seed = torch.tensor([1234])
    dout = torch.randn(index[0].numel() - 1, 4, 21, dtype=torch.float64)
    got = forward_backward(inputs, index, num_loops, dout, dropout=dropout, seed=seed)
    inputs64 = [x.double() for x in inputs]
    want = forward_backward(inputs64, index, num_loops, dout, backend="torch", dropout=dropout,
                            seed=seed)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    for name, a, b in zip(("out", "lse", "dh", "ds", "dd", "dt", "dt_loop"), got, want):
        assert torch.isfinite(a.double()).all(), name
        assert rel_error(a, b) < TOLERANCE[dtype], (name, rel_error(a, b))


def test_int64_indices_give_bitwise_the_same_result():
    inputs32, index32, num_loops = make_case("duplicates", 4, torch.float32)
    inputs64, index64, _ = make_case("duplicates", 4, torch.float32, index_dtype=torch.int64)
    dout = torch.randn(index32[0].numel() - 1, 4, 21)
    seed = torch.tensor([77])
    a = forward_backward(inputs32, index32, num_loops, dout, dropout=0.3, seed=seed)
    b = forward_backward(inputs64, index64, num_loops, dout, dropout=0.3, seed=seed)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_gradcheck_with_slope_above_one_and_dropout():
    inputs, index, num_loops = make_case("self_loops", 9, heads=2, channels=3)
    leaves = tuple(x.detach().clone().requires_grad_() for x in inputs)
    for slope in (1.7, -0.3):  # PyG allows any slope: the derivative branches on z, not on x
        fn = lambda *x: run(x, index, num_loops, slope=slope, dropout=0.3,  # noqa: E731
                            seed=torch.tensor([5]))[0]
        assert torch.autograd.gradcheck(fn, leaves, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_thread_count_does_not_change_a_bit(dtype):
    # Big enough to be cut into many row ranges, with a hub destination and sources.
    inputs, index, num_loops = make_case("hub", 17, dtype, heads=3, channels=16,
                                         num_nodes=3000, num_edges=40_000, hub_degree=9000)
    dout = torch.randn(index[0].numel() - 1, 3, 16)
    seed = torch.tensor([3])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_backward(inputs, index, num_loops, dout, dropout=0.1, seed=seed)
        torch.set_num_threads(2)
        two = forward_backward(inputs, index, num_loops, dout, dropout=0.1, seed=seed)
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(one, two):
        assert torch.equal(x, y)


# Channel counts a vector width divides take the register-blocked sums (gather_rows in
# csrc/cpu/gat_cpu.h): blocks of 8, 4, 2 and 1 vectors (float and bfloat16: 8 float lanes,
# double: 4; 2 x 4 in bfloat16 takes the per-head path), over a hub
# row long enough to be summed in chunks, with and without dropout (which packs out edges
# dropped in every head).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("heads,channels", [(4, 32), (3, 40), (1, 8), (2, 4)])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_blocked_sums_match_reference(dtype, heads, channels, dropout):
    inputs, index, num_loops = make_case("hub", 23, dtype, heads=heads, channels=channels,
                                         num_nodes=300, num_edges=3000, hub_degree=1500)
    dout = torch.randn(index[0].numel() - 1, heads, channels, dtype=torch.float64)
    seed = torch.tensor([99])
    got = forward_backward(inputs, index, num_loops, dout, dropout=dropout, seed=seed)
    want = forward_backward([x.double() for x in inputs], index, num_loops, dout,
                            backend="torch", dropout=dropout, seed=seed)
    for name, a, b in zip(("out", "lse", "dh", "ds", "dd", "dt", "dt_loop"), got, want):
        assert rel_error(a, b) < TOLERANCE[dtype], (name, rel_error(a, b))


def test_hub_row_matches_reference():
    # One destination with 20k in-edges, far more than any other row.
    inputs, index, num_loops = make_case("hub", 2, torch.float32, num_nodes=50,
                                         num_edges=200, hub_degree=20_000)
    rowptr = index[0]
    assert (rowptr[2] - rowptr[1]).item() > 19_000  # node 1 is the hub
    dout = torch.randn(rowptr.numel() - 1, 4, 21, dtype=torch.float64)
    got = forward_backward(inputs, index, num_loops, dout)
    want = forward_backward([x.double() for x in inputs], index, num_loops, dout,
                            backend="torch")
    for a, b in zip(got, want):
        assert rel_error(a, b) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("heads", [8, 11])  # all heads in vector lanes; 8 lanes and a tail
def test_softmax_over_the_whole_float_exponent_range(heads):
    # Scores spread over +-150 put exp's argument everywhere in [-300, 0]: the kernel's own
    # exp (range reduction down to 2^-126, and 0 below) must agree with float64's.
    inputs, index, num_loops = make_case("power_law", 9, torch.float32, heads=heads, channels=8)
    h, s, d, t, t_loop = inputs
    inputs = (h, 40 * s, 40 * d, t, t_loop)
    dout = torch.randn(index[0].numel() - 1, heads, 8, dtype=torch.float64)
    got = forward_backward(inputs, index, num_loops, dout)
    want = forward_backward([x.double() for x in inputs], index, num_loops, dout,
                            backend="torch")
    for name, a, b in zip(("out", "lse", "dh", "ds", "dd", "dt", "dt_loop"), got, want):
        assert rel_error(a, b) < TOLERANCE[torch.float32], (name, rel_error(a, b))


def test_dead_slots_are_never_read_and_get_no_gradient():
    inputs, index, num_loops = make_case("self_loops", 6)
    rowptr, col = index[0], index[1]
    live = rowptr[-1].item()
    assert live < col.numel()  # dropped self loops sit past rowptr[-1]
    poisoned = list(inputs)
    poisoned[3] = inputs[3].clone()
    poisoned[3][live:] = float("nan")  # their edge scores
    index = [rowptr, col.clone(), *index[2:]]
    index[1][live:] = 2**30  # and their sources: out of range if ever gathered
    dout = torch.randn(rowptr.numel() - 1, 4, 21, dtype=torch.float64)
    got = forward_backward(poisoned, index, num_loops, dout)
    assert (got[5][live:] == 0).all()
    want = forward_backward(inputs, [rowptr, col, *index[2:]], num_loops, dout, backend="torch")
    for a, b in zip(got, want):
        assert rel_error(a, b) < TOLERANCE[torch.float64]


def test_rows_without_in_edges():
    inputs, index, _ = make_case("isolated", 12)
    inputs = (*inputs[:4], None)  # no self loops, so no loop scores
    out, lse = run(inputs, index, num_loops=0)
    empty = index[0][1:] == index[0][:-1]
    assert empty.any()
    assert (out[empty] == 0).all() and torch.isneginf(lse[empty]).all()
    ref_out, _ = torch_ref.gat_forward(*inputs, index[0], index[1], 0, 0.2, 0.0, None)
    assert rel_error(out, ref_out) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(s=a["s"].float()), "s has dtype Float but h has Double"),
    (lambda a: a.update(d=a["d"][:-1]), "d must have shape"),
    (lambda a: a.update(col=a["col"].long()), "col has dtype Long but rowptr has Int"),
    (lambda a: a.update(h=a["h"].transpose(0, 1).contiguous().transpose(0, 1)),
     "h must be contiguous"),
    (lambda a: a.update(num_loops=10**6), "num_loops=1000000 must lie in"),
    (lambda a: a.update(dropout=0.5), "dropout > 0 needs a seed tensor"),
    (lambda a: a.update(t_loop=a["t_loop"][:-1]), "t_loop must have shape"),
])
def test_boundary_checks_name_the_argument(change, message):
    inputs, index, num_loops = make_case("random", 1)
    args = dict(zip(("h", "s", "d", "t", "t_loop"), inputs), rowptr=index[0], col=index[1],
                num_loops=num_loops, negative_slope=0.2, dropout=0.0, seed=None)
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastgat.fused_forward(*args.values())
