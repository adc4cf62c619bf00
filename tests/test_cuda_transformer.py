"""TransformerConv's CUDA kernels (csrc/cuda/transformer_kernels.cuh) against the float64
reference, on the targets of cuda_targets.py: `cuda` (a GPU) and `emulated` (the same sources on
the SIMT emulator under ASan and UBSan).

Cases: every dtype and index width, C of one channel, odd C (scalar path) and C over several
channel tiles, the graph kinds of graphs.py with and without edge values, dead slots, hubs whose
rows (forward and CSR pass) or columns (CSC pass) split far beyond the split length on 132 and
1 (pretend) SMs, dropout against the reference's mask, deterministic backward.
"""
import math
import zlib

import pytest
import torch

from cuda_targets import coo_graph, graph_of, hubs, with_int64_indices
from fastgat.backends import torch_ref
from fastgat.graph import Graph
from graphs import KINDS, random_graph
from helpers import assert_close

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def make_inputs(target, graph, seed, heads, channels, dtype, edge_values=True):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(target.device, dtype)  # noqa: E731
    q = rand(graph.num_dst, heads, channels)
    k, v = rand(graph.num_src, heads, channels), rand(graph.num_src, heads, channels)
    e = rand(graph.num_edges, heads, channels) if edge_values else None
    return q, k, v, e


def scale_of(inputs):
    return 1 / math.sqrt(inputs[0].size(2))


def cpu64(xs):
    return [x.double().cpu() if x is not None else None for x in xs]


def reference(inputs, graph, dropout=0.0, seed=None):
    """(out, lse) of the float64 reference."""
    return torch_ref.transformer_forward(*cpu64(inputs), graph.rowptr.cpu(), graph.col.cpu(),
                                         scale_of(inputs), dropout,
                                         seed.cpu() if seed is not None else None)


def forward(target, inputs, graph, dropout=0.0, seed=None, planned=True):
    return target.ops.transformer_forward(*inputs, graph.rowptr, graph.col, scale_of(inputs),
                                          dropout, seed, hubs(graph, planned)[0])


def backward(target, dout, out, lse, inputs, graph, dropout=0.0, seed=None, planned=True):
    """(dq, dk, dv[, de]) of the backward op, one gradient per given input."""
    got = target.ops.transformer_backward(dout, out, lse, *inputs, *graph.op_args(),
                                          scale_of(inputs), dropout, seed, *hubs(graph, planned))
    return [g for g, x in zip(got, inputs) if x is not None]


def reference_grads(dout, out, lse, inputs, graph, dropout=0.0, seed=None):
    """The float64 reference backward from out rounded to the run's dtype: the backward reads
    the stored out, and dz cancels (dalpha - <dout, out>), which would amplify the difference
    (test_op.reference_grads says the same for GAT)."""
    want = torch_ref.transformer_backward(
        dout.double().cpu(), out.double().cpu(), lse.double().cpu(), *cpu64(inputs),
        *[x.cpu() for x in graph.op_args()], scale_of(inputs), dropout,
        seed.cpu() if seed is not None else None)
    return [g for g, x in zip(want, inputs) if x is not None]


def check_against_reference(target, inputs, graph, dtype, dropout=0.0, seed=None):
    """Forward and backward against the reference; returns (out, lse, gradients)."""
    out, lse = forward(target, inputs, graph, dropout, seed)
    ref_out, ref_lse = reference(inputs, graph, dropout, seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == dtype and lse.dtype == acc
    assert_close(out, ref_out, dtype)
    live = ~torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse.cpu()), ~live)
    assert_close(lse.cpu()[live], ref_lse[live], acc)
    g = torch.Generator().manual_seed(graph.num_edges)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(target.device, dtype)
    got = backward(target, dout, out, lse, inputs, graph, dropout, seed)
    want = reference_grads(dout, ref_out.to(dtype), ref_lse, inputs, graph, dropout, seed)
    for g_got, g_want, x in zip(got, want, [x for x in inputs if x is not None]):
        assert g_got.dtype == dtype and g_got.shape == x.shape
        assert_close(g_got, g_want, dtype)
    return out, lse, got


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("edge_values,dropout", [(True, 0.0), (False, 0.0), (True, 0.3)])
def test_graph_kinds_against_reference(target, kind, dtype, edge_values, dropout):
    """Zero-degree rows and columns, duplicate edges, self loops (ordinary edges here), a hub,
    bipartite sizes and no edges at all; dropout's mask is the reference's (§7's Philox rule)."""
    case = zlib.crc32(f"{kind}-{edge_values}-{dropout}".encode()) % 1000
    graph = graph_of(target, kind, case, loops=False)
    inputs = make_inputs(target, graph, case, heads=3, channels=5, dtype=dtype,
                         edge_values=edge_values)
    seed = torch.tensor([case * 7919 + 13], device=target.device) if dropout else None
    check_against_reference(target, inputs, graph, dtype, dropout, seed)


# 130 channels span several tiles for float64 and float32 (64 and 128 per tile), 300 for the
# 16-bit types (256 per tile).
WIDTHS = [(c, dtype) for c in (1, 5, 8, 130) for dtype in DTYPES] + \
    [(300, torch.bfloat16), (300, torch.float16)]


@pytest.mark.parametrize("channels,dtype", WIDTHS, ids=lambda x: str(x))
def test_channel_widths_against_reference(target, channels, dtype):
    """C of one channel, odd C (scalar path), one vector, and C spanning several tiles, whose
    dots each tile's group sums over all of them."""
    graph = graph_of(target, "hub", channels, loops=False, hub_degree=100)
    inputs = make_inputs(target, graph, channels, heads=2, channels=channels, dtype=dtype)
    check_against_reference(target, inputs, graph, dtype)


def test_dead_slots_are_skipped_and_get_zero_de(target):
    """A graph prepared with its self loops dropped keeps them as dead slots past rowptr[-1]:
    the CSC pass must not read their (never written) dz, and their de is 0."""
    src, dst, num_src, num_dst = random_graph("self_loops", 5)
    graph = Graph.from_coo(src.to(target.device), dst.to(target.device), num_src, num_dst,
                                 drop_self_loops=True, num_loops=0)
    live = int(graph.rowptr[-1])
    assert live < graph.num_edges
    inputs = make_inputs(target, graph, 5, heads=2, channels=8, dtype=torch.float32)
    de = check_against_reference(target, inputs, graph, torch.float32)[2][3]
    assert (de[live:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_inputs_take_the_scalar_path(target, dtype):
    """C a multiple of the vector width but k starting off a 16-byte boundary."""
    graph = graph_of(target, "random", 4, loops=False)
    q, k, v, e = make_inputs(target, graph, 4, heads=2, channels=16, dtype=dtype)
    k_off = torch.empty(k.numel() + 1, dtype=dtype, device=target.device)[1:].view_as(k)
    k_off.copy_(k)
    assert k_off.is_contiguous() and k_off.data_ptr() % 16 != 0
    check_against_reference(target, (q, k_off, v, e), graph, dtype)


@pytest.mark.parametrize("sms", [132, 1], indirect=True, ids=lambda n: f"{n}sm")
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("transpose", [False, True], ids=["in", "out"])
def test_hub_far_beyond_the_split_length(target, sms, dropout, transpose):
    """A hub of thousands of in-edges (the forward and the CSR pass split its row) or out-edges
    (the CSC pass splits its column): many chunks, added in order. With one (pretend) SM the
    chunk and merge kernels run on 8 blocks and stride over the chunks."""
    src, dst, num_src, num_dst = random_graph("hub", 9, num_nodes=200, num_edges=600,
                                              hub_degree=target.sized(20_000, 2_500))
    if transpose:
        src, dst = dst, src
    graph = coo_graph(target, src, dst, num_src, num_dst, loops=False)
    inputs = make_inputs(target, graph, 9, heads=2, channels=8, dtype=torch.float32)
    seed = torch.tensor([2**33 + 5], device=target.device) if dropout else None
    check_against_reference(target, inputs, graph, torch.float32, dropout, seed)


def dropout_case(target, graph, inputs):
    """(dout, out, lse, seed) of a run with dropout 0.2."""
    seed = torch.tensor([3], device=target.device)
    out, lse = forward(target, inputs, graph, 0.2, seed)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return dout.to(target.device, out.dtype), out, lse, seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_int64_indices_give_bitwise_the_same_result(target, dtype):
    graph = graph_of(target, "hub", 12, loops=False, hub_degree=600)
    graph64 = with_int64_indices(graph)
    assert graph.rowptr.dtype == torch.int32 and graph64.csc_eid.dtype == torch.int64
    inputs = make_inputs(target, graph, 12, heads=2, channels=8, dtype=dtype)
    dout, out, lse, seed = dropout_case(target, graph, inputs)
    out64, lse64 = forward(target, inputs, graph64, 0.2, seed)
    assert torch.equal(out, out64) and torch.equal(lse, lse64)
    for a, b in zip(backward(target, dout, out, lse, inputs, graph, 0.2, seed),
                    backward(target, dout, out, lse, inputs, graph64, 0.2, seed)):
        assert torch.equal(a, b)


def test_backward_is_bitwise_deterministic(target):
    graph = graph_of(target, "hub", 21, loops=False, hub_degree=700)
    inputs = make_inputs(target, graph, 21, heads=3, channels=12, dtype=torch.float32)
    dout, out, lse, seed = dropout_case(target, graph, inputs)
    first = backward(target, dout, out, lse, inputs, graph, 0.2, seed)
    second = backward(target, dout, out, lse, inputs, graph, 0.2, seed)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
