"""The CUDA kernel sources against the float64 reference, on two targets:

    cuda       the kernels of fastgat._C on a GPU (marked gpu; scripts/gpu_check.sh)
    emulated   the same sources and launch plan compiled with the host compiler against the SIMT
               emulator (csrc/emulated/), run lane by lane on CPU tensors under ASan and UBSan
               in a child pytest (tests/emulated_cuda.py); every run of CI executes these

Cases: every dtype and index width, vector-load edge cases (C below one vector, odd C, several
channel tiles, misaligned h), rows split across work items (at chunk boundaries, hubs far beyond
one block, few rows with many edges, a pretend SM count), zero-degree rows, dead slots of
dropped self loops, bipartite sizes, dropout, scores of -inf, deterministic backward. The
emulator is slow by nature: where the GPU takes a large graph, the emulated case takes the
smallest graph with the same shape of work (`sized`).
"""
import zlib

import pytest
import torch

from cuda_targets import (Target, assert_backward_repeats, assert_int64_indices_agree,
                          coo_graph, graph_of, hub_graph, hubs, star_rows)
from fastgat.backends import unavailable_reason
from graphs import KINDS
from helpers import assert_close
from test_op import check_float32_scores, float32_score_inputs, reference, reference_grads

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def make_inputs(target, graph, seed, heads, channels, dtype, edge_scores=True):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(target.device, dtype)  # noqa: E731
    h = rand(graph.num_src, heads, channels)
    s, d = rand(graph.num_src, heads), rand(graph.num_dst, heads)
    t = rand(graph.num_edges, heads) if edge_scores else None
    t_loop = rand(graph.num_loops, heads) if edge_scores and graph.num_loops else None
    return h, s, d, t, t_loop


def forward(target, inputs, graph, dropout=0.0, seed=None, slope=0.2, planned=True):
    return target.ops.fused_forward(*inputs, graph.rowptr, graph.col, graph.num_loops, slope,
                                    dropout, seed, hubs(graph, planned)[0])


def backward(target, dout, out, lse, inputs, graph, dropout=0.0, seed=None, slope=0.2,
             planned=True):
    """The backward op's gradients, one per given input (as reference_grads)."""
    got = target.ops.fused_backward(dout.to(out.device, out.dtype), out, lse, *inputs,
                                    *graph.op_args(), graph.num_loops, slope, dropout, seed,
                                    *hubs(graph, planned))
    return [g for g, x in zip(got, inputs) if x is not None]


def check_against_reference(target, inputs, graph, dtype, dropout=0.0, seed=None):
    out, lse = forward(target, inputs, graph, dropout, seed)
    ref_out, ref_lse = reference(inputs, graph, dropout, seed)
    assert out.dtype == dtype
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(out, ref_out, dtype)
    live = ~torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse.cpu()), ~live)
    assert_close(lse.cpu()[live], ref_lse[live], torch.float64 if dtype == torch.float64
                 else torch.float32)
    dout = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    got = backward(target, dout, out, lse, inputs, graph, dropout, seed)
    want = reference_grads(dout, ref_out, ref_lse, inputs, graph, dtype, dropout, seed)
    for g_got, g_want in zip(got, want):
        assert_close(g_got, g_want, dtype)
    return out, lse


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("edge_scores,loops,dropout", [(True, True, 0.0), (False, False, 0.0),
                                                       (True, True, 0.3)])
def test_graph_kinds_against_reference(target, kind, dtype, edge_scores, loops, dropout):
    """Zero-degree rows, duplicate edges, dead slots of dropped self loops, a hub, bipartite
    sizes and no edges at all; with and without edge/loop scores; dropout's mask is the
    reference's (the same Philox rule)."""
    case = zlib.crc32(f"{kind}-{edge_scores}-{loops}-{dropout}".encode()) % 1000
    graph = graph_of(target, kind, case, loops=loops)
    inputs = make_inputs(target, graph, case, heads=3, channels=5, dtype=dtype,
                         edge_scores=edge_scores)
    seed = torch.tensor([case * 7919 + 13], device=target.device) if dropout else None
    check_against_reference(target, inputs, graph, dtype, dropout, seed)


# 130 channels span several tiles for float64 and float32 (64 and 128 per tile), 300 for the
# 16-bit types (256 per tile).
WIDTHS = [(c, dtype) for c in (1, 3, 5, 8, 12, 64, 130) for dtype in DTYPES] + \
    [(300, torch.bfloat16), (300, torch.float16)]


@pytest.mark.parametrize("channels,dtype", WIDTHS, ids=lambda x: str(x))
def test_channel_widths_against_reference(target, channels, dtype):
    """C below one vector, odd C (scalar path), one tile, and C spanning several tiles."""
    graph = graph_of(target, "hub", channels)
    inputs = make_inputs(target, graph, channels, heads=2, channels=channels, dtype=dtype)
    check_against_reference(target, inputs, graph, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["hub", "self_loops"])
def test_float32_scores_beside_half_h(target, dtype, kind):
    """float32 s, d, t, t_loop beside 16-bit h read as float32, and their gradients written
    as float32 (dead slots' dt included)."""
    inputs, graph = float32_score_inputs(kind, 11, target.device, dtype)
    check_float32_scores(
        lambda x: forward(target, x, graph),
        lambda dout, out, lse, x: backward(target, dout, out, lse, x, graph), inputs, graph,
        dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_h_takes_the_scalar_path(target, dtype):
    """C a multiple of the vector width but h starting off a 16-byte boundary."""
    graph = graph_of(target, "random", 4)
    h, s, d, t, t_loop = make_inputs(target, graph, 4, heads=2, channels=16, dtype=dtype)
    h_off = torch.empty(h.numel() + 1, dtype=dtype, device=target.device)[1:].view_as(h)
    h_off.copy_(h)
    assert h_off.is_contiguous() and h_off.data_ptr() % 16 != 0
    out, lse = forward(target, (h_off, s, d, t, t_loop), graph)
    aligned_out, aligned_lse = forward(target, (h, s, d, t, t_loop), graph)
    assert_close(out, aligned_out, dtype)
    assert_close(lse, aligned_lse, torch.float32)
    dout = torch.randn_like(out)
    dout_off = torch.empty(dout.numel() + 1, dtype=dtype, device=target.device)[1:].view_as(dout)
    dout_off.copy_(dout)
    for got, want in zip(backward(target, dout_off, out, lse, (h_off, s, d, t, t_loop), graph),
                         backward(target, dout, out, lse, (h, s, d, t, t_loop), graph)):
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("transpose", [False, True], ids=["rows", "columns"])
def test_rows_split_at_chunk_boundaries(target, dtype, dropout, transpose):
    """Rows (forward) or columns (backward) of 255..257 and 511..513 entries: one chunk,
    exactly full, and split in two/three."""
    graph = star_rows(target, [255, 256, 257, 511, 512, 513], target.sized(2000, 600),
                      transpose=transpose)
    inputs = make_inputs(target, graph, 1, heads=3, channels=8, dtype=dtype)
    seed = torch.tensor([77], device=target.device) if dropout else None
    check_against_reference(target, inputs, graph, dtype, dropout, seed)


@pytest.mark.parametrize("sms", [132, 1], indirect=True, ids=lambda n: f"{n}sm")
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("transpose", [False, True], ids=["in", "out"])
def test_hub_far_beyond_one_block(target, sms, dropout, transpose):
    """A hub of thousands of in-edges (the forward splits its row) or out-edges (the backward
    splits its column): dozens of chunks merged in order. With one (pretend) SM the chunk and
    merge kernels run on 8 blocks and stride over the chunks."""
    graph = hub_graph(target, 9, transpose, num_nodes=300, num_edges=1200,
                      hub_degree=target.sized(20_000, 4_000))
    inputs = make_inputs(target, graph, 9, heads=2, channels=32, dtype=torch.float32)
    seed = torch.tensor([2**33 + 5], device=target.device) if dropout else None
    check_against_reference(target, inputs, graph, torch.float32, dropout, seed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_few_rows_with_many_edges_against_reference(target, dtype):
    """16 destinations with thousands of in-edges each: every row is cut into many chunks."""
    edges = target.sized(320_000, 32_000)
    g = torch.Generator().manual_seed(31)
    src = torch.randint(0, 1000, (edges,), generator=g)
    dst = torch.randint(0, 16, (edges,), generator=g)
    graph = coo_graph(target, src, dst, 1000, 16)
    inputs = make_inputs(target, graph, 31, heads=2, channels=8, dtype=dtype)
    check_against_reference(target, inputs, graph, dtype)


def with_minus_inf_scores(inputs, graph, fraction, seed):
    """Sets about `fraction` of the edge scores to -inf, keeping a finite score in every row
    with an entry (its self loop, else its first slot)."""
    h, s, d, t, t_loop = inputs
    t = t.clone()
    g = torch.Generator().manual_seed(seed)
    t[(torch.rand(t.shape, generator=g) < fraction).to(t.device)] = float("-inf")
    rowptr = graph.rowptr.long()
    rows = torch.arange(graph.num_dst, device=rowptr.device)
    first = rowptr[:-1][(rowptr[1:] > rowptr[:-1]) & (rows >= graph.num_loops)]
    t[first] = torch.randn(first.numel(), t.size(1), generator=g).to(t.device, t.dtype)
    return h, s, d, t, t_loop


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loops", [True, False])
def test_minus_inf_scores_weigh_nothing(target, dtype, loops):
    """Edges with t = -inf get weight 0 (no NaN from exp(-inf - -inf)); without self loops a
    third of the rows have no entry at all: out = 0, lse = -inf."""
    graph = graph_of(target, "isolated", 14, loops=loops, num_nodes=60, num_edges=400)
    inputs = with_minus_inf_scores(make_inputs(target, graph, 14, heads=2, channels=8,
                                               dtype=dtype), graph, 0.5, 14)
    out, lse = check_against_reference(target, inputs, graph, dtype)
    if not loops:
        empty = graph.rowptr[1:] == graph.rowptr[:-1]
        assert empty.any() and (out[empty] == 0).all() and torch.isinf(lse[empty]).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_rows_whose_every_score_is_minus_inf(target, dtype):
    """Rows masked out entirely through t and t_loop: out = 0, lse = -inf and zero gradients,
    the rule of every backend (the reference's included)."""
    graph = graph_of(target, "random", 17)
    h, s, d, t, t_loop = make_inputs(target, graph, 17, heads=2, channels=5, dtype=dtype)
    rowptr = graph.rowptr.long().cpu()
    masked = [1, 4]
    t, t_loop = t.clone(), t_loop.clone()
    for row in masked:
        t[rowptr[row]:rowptr[row + 1]] = float("-inf")
        t_loop[row] = float("-inf")
    out, lse = check_against_reference(target, (h, s, d, t, t_loop), graph, dtype)
    assert (out[masked] == 0).all() and torch.isneginf(lse[masked]).all()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_minus_inf_scores_fill_whole_chunks(target, dropout):
    """A split row whose first ~600 slots score -inf: whole chunks with no finite score
    (partial lse = -inf) merge with weight 0."""
    graph = star_rows(target, [900, 300], target.sized(2000, 600))
    h, s, d, t, t_loop = make_inputs(target, graph, 5, heads=2, channels=8, dtype=torch.float32)
    t = t.clone()
    t[:600] = float("-inf")  # row 0 holds the first CSR slots
    seed = torch.tensor([41], device=target.device) if dropout else None
    check_against_reference(target, (h, s, d, t, t_loop), graph, torch.float32, dropout, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_int64_indices_give_bitwise_the_same_result(target, dtype):
    graph = graph_of(target, "hub", 12, hub_degree=600)
    inputs = make_inputs(target, graph, 12, heads=2, channels=8, dtype=dtype)
    seed = torch.tensor([3], device=target.device)
    assert_int64_indices_agree(
        graph, lambda g: forward(target, inputs, g, 0.2, seed),
        lambda dout, out, lse, g: backward(target, dout, out, lse, inputs, g, 0.2, seed))


def test_backward_is_bitwise_deterministic(target):
    graph = graph_of(target, "hub", 21, hub_degree=700)
    inputs = make_inputs(target, graph, 21, heads=3, channels=12, dtype=torch.float32)
    seed = torch.tensor([5], device=target.device)
    assert_backward_repeats(
        lambda: forward(target, inputs, graph, 0.2, seed),
        lambda dout, out, lse: backward(target, dout, out, lse, inputs, graph, 0.2, seed))


@pytest.mark.gpu
def test_forward_and_backward_capture_in_a_cuda_graph():
    """Capture fails on a host sync, so this proves none, the split-row path included."""
    target = Target("cuda", "cuda")
    if unavailable_reason("cuda", "cuda"):
        pytest.skip(unavailable_reason("cuda", "cuda"))
    graph = star_rows(target, [600, 3, 1], 2000)
    h, s, d, t, t_loop = make_inputs(target, graph, 2, heads=2, channels=8, dtype=torch.float32)
    seed = torch.tensor([11], device="cuda")
    dout = torch.randn(graph.num_dst, 2, 8, device="cuda")

    def step():
        out, lse = torch.ops.fastgat.fused_forward(h, s, d, t, t_loop, graph.rowptr, graph.col,
                                                   graph.num_loops, 0.2, 0.1, seed)
        return (out, lse) + torch.ops.fastgat.fused_backward(
            dout, out, lse, h, s, d, t, t_loop, *graph.op_args(), graph.num_loops, 0.2, 0.1, seed)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = step()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        captured = step()
    cuda_graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_matches_triton(dtype):
    from test_op import grads, run_op
    for backend in ("cuda", "triton"):
        if unavailable_reason(backend, "cuda"):
            pytest.skip(unavailable_reason(backend, "cuda"))
    target = Target("cuda", "cuda")
    graph = graph_of(target, "duplicates", 6)
    inputs = make_inputs(target, graph, 6, heads=4, channels=16, dtype=dtype)
    seed = torch.tensor([123], device="cuda")
    cuda_out, _ = run_op(inputs, graph, "cuda", 0.25, seed)
    triton_out, _ = run_op(inputs, graph, "triton", 0.25, seed)
    assert_close(cuda_out, triton_out, dtype)
    dout = torch.randn(cuda_out.shape, dtype=torch.float64)
    for a, b in zip(grads(lambda x: run_op(x, graph, "cuda", 0.25, seed), inputs, dout),
                    grads(lambda x: run_op(x, graph, "triton", 0.25, seed), inputs, dout)):
        assert_close(a, b, dtype)
