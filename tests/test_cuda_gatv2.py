"""GATv2's CUDA kernel sources (csrc/cuda/gatv2_kernels.cuh) against the float64 reference
(torch_ref.gatv2_forward / gatv2_backward), on the targets of cuda_targets.py: `cuda` (a GPU)
and `emulated` (the same sources on the SIMT emulator under ASan and UBSan).

Cases: every dtype and both index widths; C = 1, odd C (the scalar path), C spanning several
channel tiles (each item recomputes the score over all of C); misaligned inputs; the graph kinds
of graphs.py with and without e / e_loop and self loops; a hub split into chunks by the forward
(one pretend SM and 132); dropout with the reference's Philox mask; a deterministic backward.
Graphs stay small: the emulator runs every lane of every group.
"""
import zlib

import pytest
import torch

from cuda_targets import (assert_backward_repeats, assert_int64_indices_agree, graph_of, hub_graph,
                          hubs)
from fastgat.backends import torch_ref
from graphs import KINDS
from helpers import assert_close

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def make_inputs(target, graph, seed, heads, channels, dtype, edges=True):
    """(xl, xr, att, e, e_loop); e and e_loop only with `edges` (e_loop where there are loops)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(target.device, dtype)  # noqa: E731
    xl, xr = rand(graph.num_src, heads, channels), rand(graph.num_dst, heads, channels)
    att = rand(heads, channels)
    e = rand(graph.num_edges, heads, channels) if edges else None
    e_loop = rand(graph.num_loops, heads, channels) if edges and graph.num_loops else None
    return xl, xr, att, e, e_loop


def forward(target, inputs, graph, dropout=0.0, seed=None, slope=0.2, planned=True):
    return target.ops.gatv2_fused_forward(*inputs, graph.rowptr, graph.col, graph.num_loops,
                                          slope, dropout, seed, hubs(graph, planned)[0])


def backward(target, dout, out, lse, inputs, graph, dropout=0.0, seed=None, slope=0.2,
             planned=True):
    """(dxl, dxr, datt) and de / de_loop where e / e_loop are given."""
    got = target.ops.gatv2_fused_backward(dout.to(out.device, out.dtype), out, lse, *inputs,
                                          *graph.op_args(), graph.num_loops, slope, dropout,
                                          seed, *hubs(graph, planned))
    return [g for g, x in zip(got, inputs) if x is not None]


def cpu64(tensors):
    return [x.double().cpu() if x is not None else None for x in tensors]


def check_against_reference(target, inputs, graph, dtype, dropout=0.0, seed=None, slope=0.2):
    out, lse = forward(target, inputs, graph, dropout, seed, slope)
    cpu_seed = seed.cpu() if seed is not None else None
    ref_out, ref_lse = torch_ref.gatv2_forward(*cpu64(inputs), graph.rowptr.cpu(),
                                               graph.col.cpu(), graph.num_loops, slope, dropout,
                                               cpu_seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == dtype and lse.dtype == acc
    assert_close(out, ref_out, dtype)
    live = ~torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse.cpu()), ~live)
    assert_close(lse.cpu()[live], ref_lse[live], acc)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7),
                       dtype=torch.float64).to(dtype)
    got = backward(target, dout, out, lse, inputs, graph, dropout, seed, slope)
    # The reference reads out rounded to dtype, as the kernels do (test_op.reference_grads).
    want = torch_ref.gatv2_backward(dout.double(), ref_out.to(dtype).double(), ref_lse,
                                    *cpu64(inputs), *[x.cpu() for x in graph.op_args()],
                                    graph.num_loops, slope, dropout, cpu_seed)
    want = [w for w, x in zip(want, inputs) if x is not None]
    assert len(got) == len(want)
    for g_got, g_want in zip(got, want):
        assert g_got.dtype == dtype
        assert_close(g_got, g_want, dtype)
    return out, lse, got


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("edges,loops,dropout", [(True, True, 0.0), (False, False, 0.0),
                                                 (True, True, 0.3), (False, True, 0.0)])
def test_graph_kinds_against_reference(target, kind, edges, loops, dropout):
    """Zero-degree rows, duplicate edges, dead slots of dropped self loops (de = 0 there), a
    hub, bipartite sizes, no edges at all; with and without e, e_loop and self loops; dropout's
    mask is the reference's."""
    case = zlib.crc32(f"v2-{kind}-{edges}-{loops}-{dropout}".encode()) % 1000
    graph = graph_of(target, kind, case, loops=loops)
    inputs = make_inputs(target, graph, case, heads=3, channels=5, dtype=torch.float64,
                         edges=edges)
    seed = torch.tensor([case * 7919 + 13], device=target.device) if dropout else None
    _, _, grads = check_against_reference(target, inputs, graph, torch.float64, dropout, seed)
    if edges and graph.num_edges > 0:
        live = int(graph.rowptr[-1])
        assert (grads[3][live:] == 0).all()  # dead slots: no edge, no gradient


# (C, dtype): C = 1, odd C, one full vector, and C spanning several tiles (64 channels a tile
# for float64, 128 for float32, 256 for the 16-bit types).
WIDTHS = [(c, dtype) for c in (1, 7, 8) for dtype in DTYPES] + \
    [(130, torch.float64), (130, torch.float32), (300, torch.bfloat16), (300, torch.float16)]


@pytest.mark.parametrize("channels,dtype", WIDTHS, ids=lambda x: str(x))
def test_channel_widths_against_reference(target, channels, dtype):
    graph = graph_of(target, "duplicates", channels, num_nodes=12, num_edges=40)
    inputs = make_inputs(target, graph, channels, heads=2, channels=channels, dtype=dtype)
    check_against_reference(target, inputs, graph, dtype, slope=-0.3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_inputs_take_the_scalar_path(target, dtype):
    """C a multiple of the vector width but xl and e starting off a 16-byte boundary: the same
    results as from aligned copies."""
    graph = graph_of(target, "random", 4, num_nodes=16, num_edges=50)
    inputs = make_inputs(target, graph, 4, heads=2, channels=16, dtype=dtype)

    def shifted(x):
        y = torch.empty(x.numel() + 1, dtype=dtype, device=target.device)[1:].view_as(x)
        y.copy_(x)
        assert y.is_contiguous() and y.data_ptr() % 16 != 0
        return y

    xl, xr, att, e, e_loop = inputs
    moved = (shifted(xl), xr, att, shifted(e), e_loop)
    out, lse = forward(target, moved, graph)
    want_out, want_lse = forward(target, inputs, graph)
    assert_close(out, want_out, dtype)
    assert_close(lse, want_lse, torch.float32)
    dout = torch.randn(out.shape).to(dtype)
    for got, want in zip(backward(target, dout, out, lse, moved, graph),
                         backward(target, dout, out, lse, inputs, graph)):
        assert_close(got, want, dtype)


@pytest.mark.parametrize("sms", [132, 1], indirect=True, ids=lambda n: f"{n}sm")
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("transpose", [False, True], ids=["in", "out"])
def test_hub_far_beyond_the_split_length(target, sms, dropout, transpose):
    """A hub of 600 in-edges (the forward splits its row into chunks of 256 and merges them in
    order, on a wave of 8 blocks with one pretend SM) or out-edges (one long column of the
    backward's CSC pass)."""
    graph = hub_graph(target, 9, transpose, num_nodes=40, num_edges=80,
                      hub_degree=target.sized(20_000, 600))
    inputs = make_inputs(target, graph, 9, heads=2, channels=8, dtype=torch.float32)
    seed = torch.tensor([2**33 + 5], device=target.device) if dropout else None
    check_against_reference(target, inputs, graph, torch.float32, dropout, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_int64_indices_give_bitwise_the_same_result(target, dtype):
    graph = graph_of(target, "hub", 12, num_nodes=30, num_edges=60, hub_degree=300)
    inputs = make_inputs(target, graph, 12, heads=2, channels=8, dtype=dtype)
    seed = torch.tensor([3], device=target.device)
    assert_int64_indices_agree(
        graph, lambda g: forward(target, inputs, g, 0.2, seed),
        lambda dout, out, lse, g: backward(target, dout, out, lse, inputs, g, 0.2, seed))


def test_backward_is_bitwise_deterministic(target):
    """Two runs, and datt's shares summed over 300 rows in two stages of fixed chunks."""
    graph = graph_of(target, "hub", 21, num_nodes=300, num_edges=300, hub_degree=300)
    inputs = make_inputs(target, graph, 21, heads=3, channels=12, dtype=torch.float32)
    seed = torch.tensor([5], device=target.device)
    assert_backward_repeats(
        lambda: forward(target, inputs, graph, 0.2, seed),
        lambda dout, out, lse: backward(target, dout, out, lse, inputs, graph, 0.2, seed))
