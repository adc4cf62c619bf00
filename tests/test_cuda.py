"""Properties of the CUDA kernels (backend='cuda') that the backend-parametrized tests miss:
vector-load edge cases, rows split across work items (few rows with many edges included),
scores of -inf, int64 indices, CUDA-graph capture (no host sync) and agreement with the Triton
kernels. All need a GPU (scripts/gpu_check.sh)."""
import dataclasses

import pytest
import torch

from fastgat.backends import unavailable_reason
from fastgat.graph import Graph
from graphs import random_graph
from test_op import TOLERANCE, assert_close, grads, reference, reference_grads, run_op

pytestmark = pytest.mark.gpu
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _cuda_backend():
    reason = unavailable_reason("cuda", "cuda")
    if reason:
        pytest.skip(reason)


def make_inputs(graph, seed, heads, channels, dtype, edge_scores=True):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to("cuda", dtype)  # noqa: E731
    h = rand(graph.num_src, heads, channels)
    s, d = rand(graph.num_src, heads), rand(graph.num_dst, heads)
    t = rand(graph.num_edges, heads) if edge_scores else None
    t_loop = rand(graph.num_loops, heads) if edge_scores and graph.num_loops else None
    return h, s, d, t, t_loop


def graph_of(kind, seed, **sizes):
    return coo_graph(*random_graph(kind, seed, **sizes))


def coo_graph(src, dst, num_src, num_dst, loops=True):
    return Graph.from_coo(src.cuda(), dst.cuda(), num_src, num_dst, drop_self_loops=loops,
                          num_loops=min(num_src, num_dst) if loops else 0)


def with_int64_indices(graph):
    return dataclasses.replace(graph, rowptr=graph.rowptr.long(), col=graph.col.long(),
                               colptr=graph.colptr.long(), csc_row=graph.csc_row.long(),
                               csc_eid=graph.csc_eid.long())


def star_rows(entries, num_nodes=2000, seed=0):
    """Random background edges plus rows 0, 1, ... with exactly entries[r] in-edges counting
    the self loop. With ~1 edge per node the forward's split length is its floor of 256, so
    entries around 256 and 512 land on chunk boundaries."""
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(1, num_nodes, (num_nodes,), generator=g)]
    dst = [torch.randint(len(entries), num_nodes, (num_nodes,), generator=g)]
    for row, count in enumerate(entries):
        others = torch.randperm(num_nodes, generator=g)
        others = others[others != row][: count - 1]  # distinct sources, no self loop
        src.append(others)
        dst.append(torch.full_like(others, row))
    return coo_graph(torch.cat(src), torch.cat(dst), num_nodes, num_nodes)


def check_against_reference(inputs, graph, dtype, dropout=0.0, seed=None):
    out, lse = run_op(inputs, graph, "cuda", dropout, seed)
    ref_out, ref_lse = reference(inputs, graph, dropout, seed)
    assert out.dtype == dtype
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(out, ref_out, dtype)
    live = ~torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse.cpu()), ~live)
    assert_close(lse.cpu()[live], ref_lse[live], torch.float64 if dtype == torch.float64
                 else torch.float32)
    dout = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    got = grads(lambda x: run_op(x, graph, "cuda", dropout, seed), inputs, dout)
    want = reference_grads(dout, ref_out, ref_lse, inputs, graph, dtype, dropout, seed)
    for g_got, g_want in zip(got, want):
        assert_close(g_got, g_want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [1, 3, 5, 8, 16, 130, 300])
def test_channel_widths_against_reference(channels, dtype):
    """C below one vector, odd C (scalar path), one tile, and C spanning several tiles."""
    graph = graph_of("hub", channels)
    inputs = make_inputs(graph, channels, heads=2, channels=channels, dtype=dtype)
    check_against_reference(inputs, graph, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_h_takes_the_scalar_path(dtype):
    """C a multiple of the vector width but h starting off a 16-byte boundary."""
    graph = graph_of("random", 4)
    h, s, d, t, t_loop = make_inputs(graph, 4, heads=2, channels=16, dtype=dtype)
    buffer = torch.empty(h.numel() + 1, dtype=dtype, device="cuda")
    h_off = buffer[1:].view_as(h).copy_(h)
    assert h_off.is_contiguous() and h_off.data_ptr() % 16 != 0
    args = (t, t_loop, graph.rowptr, graph.col, graph.num_loops, 0.2, 0.0, None)
    out, lse = torch.ops.fastgat.fused_forward(h_off, s, d, *args)
    aligned_out, aligned_lse = torch.ops.fastgat.fused_forward(h, s, d, *args)
    assert_close(out, aligned_out, dtype)
    assert_close(lse, aligned_lse, torch.float32)
    dout = torch.randn_like(out)
    dout_off = torch.empty(dout.numel() + 1, dtype=dtype, device="cuda")[1:].view_as(dout)
    dout_off.copy_(dout)
    bwd = lambda h_, dout_: torch.ops.fastgat.fused_backward(  # noqa: E731
        dout_, out, lse, h_, s, d, t, t_loop, graph.rowptr, graph.col, graph.colptr,
        graph.csc_row, graph.csc_eid, graph.num_loops, 0.2, 0.0, None)
    for got, want in zip(bwd(h_off, dout_off), bwd(h, dout)):
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_rows_split_at_chunk_boundaries(dtype, dropout):
    """Rows of 255..257 and 511..513 entries: one chunk, exactly full, and split in two/three."""
    graph = star_rows([255, 256, 257, 511, 512, 513])
    inputs = make_inputs(graph, 1, heads=3, channels=8, dtype=dtype)
    seed = torch.tensor([77], device="cuda") if dropout else None
    check_against_reference(inputs, graph, dtype, dropout, seed)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_hub_far_beyond_one_block(dropout):
    """A destination hub of 20k in-edges: dozens of chunks merged in order."""
    graph = graph_of("hub", 9, num_nodes=300, num_edges=1200, hub_degree=20_000)
    inputs = make_inputs(graph, 9, heads=2, channels=32, dtype=torch.float32)
    seed = torch.tensor([2**33 + 5], device="cuda") if dropout else None
    check_against_reference(inputs, graph, torch.float32, dropout, seed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_few_rows_with_many_edges_against_reference(dtype):
    """16 destinations of ~20k in-edges each: the split length follows the work per SM, not
    the average degree, so every row is cut into dozens of chunks."""
    g = torch.Generator().manual_seed(31)
    src = torch.randint(0, 1000, (320_000,), generator=g)
    dst = torch.randint(0, 16, (320_000,), generator=g)
    graph = coo_graph(src, dst, 1000, 16)
    inputs = make_inputs(graph, 31, heads=2, channels=8, dtype=dtype)
    check_against_reference(inputs, graph, dtype)


def with_minus_inf_scores(inputs, graph, fraction, seed):
    """Sets about `fraction` of the edge scores to -inf, keeping a finite score in every row
    with an entry (its self loop, else its first slot): the reference is NaN on a row whose
    every score is -inf, where the kernels give out = 0, lse = -inf."""
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
def test_minus_inf_scores_weigh_nothing(dtype, loops):
    """Edges with t = -inf get weight 0 (no NaN from exp(-inf - -inf)); without self loops a
    third of the rows have no entry at all: out = 0, lse = -inf."""
    graph = coo_graph(*random_graph("isolated", 14, num_nodes=60, num_edges=400), loops=loops)
    inputs = with_minus_inf_scores(make_inputs(graph, 14, heads=2, channels=8, dtype=dtype),
                                   graph, 0.5, 14)
    check_against_reference(inputs, graph, dtype)
    out, lse = run_op(inputs, graph, "cuda")
    if not loops:
        empty = graph.rowptr[1:] == graph.rowptr[:-1]
        assert empty.any() and (out[empty] == 0).all() and torch.isinf(lse[empty]).all()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_minus_inf_scores_fill_whole_chunks(dropout):
    """A split row whose first ~600 slots score -inf: whole chunks with no finite score
    (partial lse = -inf) merge with weight 0."""
    graph = star_rows([900, 300])
    h, s, d, t, t_loop = make_inputs(graph, 5, heads=2, channels=8, dtype=torch.float32)
    t = t.clone()
    t[:600] = float("-inf")  # row 0 holds the first CSR slots
    seed = torch.tensor([41], device="cuda") if dropout else None
    check_against_reference((h, s, d, t, t_loop), graph, torch.float32, dropout, seed)


def test_int64_indices_give_bitwise_the_same_result():
    graph = graph_of("hub", 12, hub_degree=600)
    inputs = make_inputs(graph, 12, heads=2, channels=8, dtype=torch.float32)
    seed = torch.tensor([3], device="cuda")
    dout = torch.randn(graph.num_dst, 2, 8)
    graph64 = with_int64_indices(graph)
    assert graph.rowptr.dtype == torch.int32 and graph64.csc_eid.dtype == torch.int64
    for a, b in zip(run_op(inputs, graph, "cuda", 0.2, seed),
                    run_op(inputs, graph64, "cuda", 0.2, seed)):
        assert torch.equal(a, b)
    for a, b in zip(grads(lambda x: run_op(x, graph, "cuda", 0.2, seed), inputs, dout),
                    grads(lambda x: run_op(x, graph64, "cuda", 0.2, seed), inputs, dout)):
        assert torch.equal(a, b)


def test_forward_and_backward_capture_in_a_cuda_graph():
    """Capture fails on a host sync, so this proves none, the split-row path included."""
    graph = star_rows([600, 3, 1])
    h, s, d, t, t_loop = make_inputs(graph, 2, heads=2, channels=8, dtype=torch.float32)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_matches_triton(dtype):
    reason = unavailable_reason("triton", "cuda")
    if reason:
        pytest.skip(reason)
    graph = graph_of("duplicates", 6)
    inputs = make_inputs(graph, 6, heads=4, channels=16, dtype=dtype)
    seed = torch.tensor([123], device="cuda")
    cuda_out, _ = run_op(inputs, graph, "cuda", 0.25, seed)
    triton_out, _ = run_op(inputs, graph, "triton", 0.25, seed)
    assert_close(cuda_out, triton_out, dtype)
    dout = torch.randn(cuda_out.shape, dtype=torch.float64)
    for a, b in zip(grads(lambda x: run_op(x, graph, "cuda", 0.25, seed), inputs, dout),
                    grads(lambda x: run_op(x, graph, "triton", 0.25, seed), inputs, dout)):
        assert_close(a, b, dtype)
