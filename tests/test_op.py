"""Every backend of the fused op against the float64 reference, on fresh awkward graphs."""
import zlib

import pytest
import torch

from fastgat.backends import torch_ref, unavailable_reason
from fastgat.dropout import keep_scale
from fastgat.graph import Graph
from fastgat.ops import attention_op, gat_attention
from graphs import KINDS, random_graph
from helpers import DEVICES, assert_close, backends, rel_error

BACKENDS = [pytest.param(name, device, id=f"{name}-{device}")
            for device in DEVICES for name in backends(device)]
# The fused GPU backends, listed (and skipped with a reason) on machines without a GPU;
# where they are available, BACKENDS already holds them.
GPU_BACKENDS = [pytest.param(name, "cuda", id=f"{name}-cuda", marks=pytest.mark.gpu)
                for name in ("triton", "cuda") if f"{name}-cuda" not in {b.id for b in BACKENDS}]
HEADS, CHANNELS = 3, 5  # C not a power of two


def make_inputs(kind, seed, device, dtype=torch.float64, edge_scores=True, loops=True,
                heads=HEADS, channels=CHANNELS):
    src, dst, num_src, num_dst = random_graph(kind, seed)
    num_loops = min(num_src, num_dst) if loops else 0
    graph = Graph.from_coo(src.to(device), dst.to(device), num_src, num_dst,
                           drop_self_loops=loops, num_loops=num_loops)
    g = torch.Generator().manual_seed(seed + 1)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    h, s, d = rand(num_src, heads, channels), rand(num_src, heads), rand(num_dst, heads)
    t = rand(graph.num_edges, heads) if edge_scores else None
    t_loop = rand(num_loops, heads) if edge_scores and loops else None
    return (h, s, d, t, t_loop), graph


def run_op(inputs, graph, backend, dropout=0.0, seed=None, slope=0.2):
    return gat_attention(*inputs, *graph.op_args(), graph.num_loops, slope, dropout, seed,
                         backend)


def reference(inputs, graph, dropout=0.0, seed=None, slope=0.2):
    inputs64 = [x.double().cpu() if x is not None else None for x in inputs]
    return torch_ref.gat_forward(*inputs64, graph.rowptr.cpu(), graph.col.cpu(),
                                 graph.num_loops, slope, dropout, seed.cpu() if seed is not None
                                 else None)


def grads(fn, inputs, dout):
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    out = fn(leaves)[0]
    live = [x for x in leaves if x is not None]
    return torch.autograd.grad(out, live, dout.to(out.dtype).to(out.device))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("edge_scores,loops,dropout", [(True, True, 0.0), (False, False, 0.0),
                                                       (True, True, 0.3)])
def test_forward_and_gradients_match_reference(backend, device, kind, edge_scores, loops, dropout):
    seed_value = zlib.crc32(f"{kind}-{edge_scores}-{loops}".encode()) % 1000  # stable per case
    inputs, graph = make_inputs(kind, seed_value, device, edge_scores=edge_scores, loops=loops)
    seed = torch.tensor([seed_value * 7919 + 13], device=device) if dropout else None
    out, lse = run_op(inputs, graph, backend, dropout, seed)
    ref_out, ref_lse = reference(inputs, graph, dropout, seed)
    assert out.shape == ref_out.shape and out.dtype == torch.float64
    assert_close(out, ref_out, torch.float64)
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse.cpu()), empty)  # rows without in-edges: lse = -inf
    assert_close(lse.cpu()[~empty], ref_lse[~empty], torch.float64)
    assert (out.cpu()[empty.all(1)] == 0).all()

    dout = torch.randn(out.shape, dtype=torch.float64)
    got = grads(lambda x: run_op(x, graph, backend, dropout, seed), inputs, dout)
    want = grads(lambda x: reference(x, graph, dropout, seed), inputs, dout)
    for g_got, g_want in zip(got, want):
        assert_close(g_got, g_want, torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_against_float64(backend, device, dtype):
    if unavailable_reason(backend, device):
        pytest.skip(unavailable_reason(backend, device))
    inputs, graph = make_inputs("hub", 11, device, dtype=dtype)
    out, _ = run_op(inputs, graph, backend)
    ref_out, ref_lse = reference(inputs, graph)
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype)
    dout = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    got = grads(lambda x: run_op(x, graph, backend), inputs, dout)
    want = reference_grads(dout, ref_out, ref_lse, inputs, graph, dtype)
    for g_got, g_want in zip(got, want):
        assert_close(g_got, g_want, dtype)


def reference_grads(dout, ref_out, ref_lse, inputs, graph, dtype, dropout=0.0, seed=None):
    """The float64 reference backward for a `dtype` run. The backward reads the stored out,
    which holds `dtype`'s rounding; dd and dt cancel (dalpha - <dout, out>) and would amplify
    it. So the reference gets out rounded to `dtype`, the one input no implementation can
    hold more exactly (a no-op for float64). Like grads(), one gradient per given input."""
    inputs64 = [x.double().cpu() if x is not None else None for x in inputs]
    cpu_graph = [x.cpu() for x in graph.op_args()]
    want = torch_ref.gat_backward(dout.double().cpu(), ref_out.to(dtype).double(), ref_lse,
                                  *inputs64, *cpu_graph, graph.num_loops, 0.2, dropout,
                                  seed.cpu() if seed is not None else None)
    return [g for g, x in zip(want, inputs) if x is not None]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.slow  # a Jacobian column per input element
def test_gradcheck_float64(backend, device):
    inputs, graph = make_inputs("self_loops", 3, device)
    seed = torch.tensor([99], device=device)
    leaves = tuple(x.detach().clone().requires_grad_() for x in inputs)
    # Under the Triton interpreter a forward costs seconds: check random projections of the
    # Jacobian (fast mode) instead of all ~900 columns; compiled backends check every column.
    fast_mode = backend == "triton" and device == "cpu"
    for dropout in (0.0, 0.4):  # a fixed seed fixes the mask: backward must match forward
        fn = lambda *x: run_op(x, graph, backend, dropout, seed)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves, atol=1e-8, rtol=1e-6, fast_mode=fast_mode)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradgradcheck_float64(backend, device):
    """Double backward (autograd through the torch reference, whatever the backend) agrees with
    finite differences of the first backward, which is the backend's own."""
    if backend == "triton" and device == "cpu":
        pytest.skip("minutes under the Triton interpreter; the second-order path is the torch "
                    "reference's, and test_layer_family's GAT gradient penalty runs it on triton")
    inputs, graph = make_inputs("self_loops", 4, device)
    seed = torch.tensor([7], device=device)
    leaves = tuple(x.detach().clone().requires_grad_() for x in inputs)
    for dropout in (0.0, 0.4):
        fn = lambda *x: run_op(x, graph, backend, dropout, seed)[0]  # noqa: E731
        assert torch.autograd.gradgradcheck(fn, leaves, atol=1e-8, rtol=1e-6, fast_mode=True)


def float32_score_inputs(kind, seed, device, dtype):
    """h of the 16-bit `dtype` beside float32 scores that carry bits `dtype` cannot hold (as
    autocast gives FastGATConv, docs/design.md §4)."""
    (h, *_), graph = make_inputs(kind, seed, device, dtype=dtype)
    (_, *scores), _ = make_inputs(kind, seed, device, dtype=torch.float32)
    return (h, *scores), graph


def check_float32_scores(forward, backward, inputs, graph, dtype):
    """forward(inputs) -> (out, lse) and backward(dout, out, lse, inputs) -> one gradient per
    given input, against the float64 reference: out and dh within `dtype`'s bound; lse and the
    score gradients, float32 like the scores, within float32's, which a kernel that rounded
    the scores to `dtype` would miss by orders of magnitude. The reference backward reads the
    out this implementation stored: at float32's bound the score gradients (dd cancels) see
    how out was narrowed, and Triton's CPU interpreter narrows to bfloat16 by truncation."""
    out, lse = forward(inputs)
    ref_out, ref_lse = reference(inputs, graph)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, ref_out, dtype)
    live = ~torch.isinf(ref_lse)
    assert_close(lse.cpu()[live], ref_lse[live], torch.float32)
    dout = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    got = backward(dout.to(out.device), out, lse, inputs)
    want = reference_grads(dout, out.cpu(), ref_lse, inputs, graph, dtype)
    assert_close(got[0], want[0], dtype)
    for g_got, g_want in zip(got[1:], want[1:]):
        assert g_got.dtype == torch.float32
        assert_close(g_got, g_want, torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float32_scores_beside_half_h(backend, device, dtype):
    if unavailable_reason(backend, device):
        pytest.skip(unavailable_reason(backend, device))
    inputs, graph = float32_score_inputs("hub", 11, device, dtype)

    def backward(dout, out, lse, inputs):
        return grads(lambda x: run_op(x, graph, backend), inputs, dout)
    check_float32_scores(lambda x: run_op(x, graph, backend), backward, inputs, graph, dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck_float32_scores_beside_bfloat16_h(backend, device):
    (h, *scores), graph = float32_score_inputs("duplicates", 5, device, torch.bfloat16)
    leaves = [x.detach().clone().requires_grad_() for x in (h, *scores)]
    args = (*leaves, *graph.op_args(), graph.num_loops, 0.2, 0.0, None, backend)
    torch.library.opcheck(attention_op, args)


@pytest.mark.parametrize("h_dtype,score_dtype", [(torch.float32, torch.float64),
                                                 (torch.float64, torch.float32),
                                                 (torch.bfloat16, torch.float16)], ids=str)
def test_scores_of_another_dtype_are_rejected(h_dtype, score_dtype):
    (h, *scores), graph = make_inputs("duplicates", 5, "cpu", dtype=h_dtype)
    scores = [x.to(score_dtype) for x in scores]
    with pytest.raises(ValueError, match="scores must be"):
        run_op((h, *scores), graph, "torch")


@pytest.mark.parametrize("name", ["d", "t", "t_loop"])
def test_scores_share_one_dtype(name):
    (h, *scores), graph = float32_score_inputs("duplicates", 5, "cpu", torch.bfloat16)
    index = ["s", "d", "t", "t_loop"].index(name)
    scores[index] = scores[index].to(torch.bfloat16)
    with pytest.raises(ValueError, match=f"{name} must be a torch.float32 tensor"):
        run_op((h, *scores), graph, "torch")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    inputs, graph = make_inputs("duplicates", 5, device, dtype=torch.float32)
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    args = (*leaves, *graph.op_args(), graph.num_loops, 0.2, 0.0, None, backend)
    torch.library.opcheck(attention_op, args)


# torch's scatter_add / index_add (the torch backend's) are not deterministic on CUDA.
@pytest.mark.parametrize("backend,device", [b for b in BACKENDS if b.id != "torch-cuda"])
def test_backward_is_bitwise_deterministic(backend, device):
    inputs, graph = make_inputs("hub", 21, device, dtype=torch.float32)
    seed = torch.tensor([5], device=device)
    dout = torch.randn(graph.num_dst, HEADS, CHANNELS)
    first = grads(lambda x: run_op(x, graph, backend, 0.2, seed), inputs, dout)
    second = grads(lambda x: run_op(x, graph, backend, 0.2, seed), inputs, dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", [b for b in BACKENDS if b.id != "torch-cpu"])
def test_dropout_mask_is_shared_by_backends(backend, device):  # each against torch on the CPU
    inputs, graph = make_inputs("random", 8, device)
    seed = torch.tensor([2**40 + 12345], device=device)
    out, _ = run_op(inputs, graph, backend, 0.5, seed)
    ref_out, _ = run_op([x.cpu() for x in inputs], graph_on_cpu(graph), "torch", 0.5, seed.cpu())
    assert_close(out, ref_out, torch.float64)
    other_seed, _ = run_op(inputs, graph, backend, 0.5, seed + 1)
    assert rel_error(other_seed, ref_out) > 1e-3  # the seed matters


def graph_on_cpu(graph: Graph) -> Graph:
    src, dst = graph.coo()
    return Graph.from_coo(src.cpu(), dst.cpu(), graph.num_src, graph.num_dst,
                          drop_self_loops=graph.dropped_self_loops, num_loops=graph.num_loops)


def test_dropout_keep_rate_within_statistical_bounds():
    slots = torch.arange(200_000)
    for p in (0.1, 0.5, 0.9):
        kept = (keep_scale(torch.tensor([7]), slots, 1, p, torch.float64) > 0).double().mean()
        sigma = (p * (1 - p) / slots.numel()) ** 0.5
        assert abs(kept.item() - (1 - p)) < 5 * sigma
        scale = keep_scale(torch.tensor([7]), slots[:10], 1, p, torch.float64).max().item()
        assert scale == pytest.approx(1 / (1 - p))


def test_masks_drawn_in_training_are_independent_bernoulli():
    """As FastGATConv draws them (a fresh seed per call): every (slot, head) is kept with
    probability 1 - p across calls, and consecutive calls' masks are uncorrelated."""
    from fastgat.dropout import draw_seed
    torch.manual_seed(11)
    slots, heads, calls, p = torch.arange(2000), 4, 200, 0.6
    masks = torch.stack([keep_scale(draw_seed(torch.device("cpu")), slots, heads, p,
                                    torch.float64) > 0 for _ in range(calls)]).double()
    rate = masks.mean(0)
    chi2_per_cell = ((rate - (1 - p)) ** 2 / (p * (1 - p) / calls)).mean().item()
    assert 0.9 < chi2_per_cell < 1.1  # binomial spread: 1 +- 0.016
    flat = masks.view(calls, -1)
    lag1 = torch.stack([torch.corrcoef(flat[i:i + 2])[0, 1] for i in range(calls - 1)])
    assert abs(lag1.mean().item()) < 0.002  # 199 correlations of 8000 cells: SE 0.0008


def test_philox_word0_matches_random123_and_numpy_philox():
    import numpy as np
    from fastgat.dropout import philox_word0
    # Random123's known-answer vector for philox4x32-10, zero key and counter: word 0.
    assert int(philox_word0(torch.tensor(0), torch.tensor([0]))[0]) == 0x6627E8D5
    seed, idx = 2**40 + 99, torch.tensor([0, 1, 2**32 + 5, 12345678901])
    c0 = (idx & 0xFFFFFFFF).numpy().astype(np.uint32)
    c1 = (idx >> 32).numpy().astype(np.uint32)
    k0, k1 = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    ref = _numpy_philox(c0, c1, k0, k1)
    assert torch.equal(philox_word0(torch.tensor([seed]), idx), torch.from_numpy(ref.astype(np.int64)))


def _numpy_philox(c0, c1, k0, k1):
    """Philox4x32-10 word 0 written independently in uint64 NumPy arithmetic."""
    import numpy as np
    c0, c1 = c0.astype(np.uint64), c1.astype(np.uint64)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = np.uint64(k0), np.uint64(k1)
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0, p2 = c0 * np.uint64(0xD2511F53), c2 * np.uint64(0xCD9E8D57)
        c0, c1, c2, c3 = ((p2 >> np.uint64(32)) ^ c1 ^ k0, p2 & mask,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask)
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c0


@pytest.mark.parametrize("backend,device", BACKENDS + GPU_BACKENDS)
def test_minus_inf_scores_weigh_nothing(backend, device):
    """An edge scored -inf (a mask) gets weight 0, also when whole blocks or chunks of a row
    come first with -inf only: the online softmax must not form exp(-inf - -inf)."""
    if unavailable_reason(backend, device):
        pytest.skip(unavailable_reason(backend, device))
    hub = 300  # one row longer than any block or chunk of every backend
    src = torch.cat([torch.arange(hub) % 40, torch.tensor([1, 2, 3])])
    dst = torch.cat([torch.zeros(hub, dtype=torch.long), torch.tensor([5, 5, 6])])
    graph = Graph.from_coo(src.to(device), dst.to(device), 40, 40, drop_self_loops=False)
    g = torch.Generator().manual_seed(17)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    t = rand(graph.num_edges, HEADS)
    t[: 2 * hub // 3] = float("-inf")  # the hub's first two thirds (slots sorted by source)
    t[hub] = float("-inf")  # one of row 5's two edges
    inputs = (rand(40, HEADS, CHANNELS), rand(40, HEADS), rand(40, HEADS), t, None)
    out, lse = run_op(inputs, graph, backend)
    ref_out, ref_lse = reference(inputs, graph)
    assert_close(out, ref_out, torch.float64)
    dout = torch.randn(out.shape, dtype=torch.float64)
    got = grads(lambda x: run_op(x, graph, backend), inputs, dout)
    want = grads(lambda x: reference(x, graph), inputs, dout)
    for g_got, g_want in zip(got, want):
        finite = torch.isfinite(g_want)  # d/dt of a -inf score: 0 for the kernels
        assert_close(g_got.cpu()[finite], g_want[finite], torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS + GPU_BACKENDS)
def test_non_contiguous_inputs_are_rejected_by_the_contract(backend, device):
    """One layout rule for every backend, checked before any kernel: a strided view is an
    error (Triton read a transposed h as if it were contiguous and returned wrong numbers)."""
    if unavailable_reason(backend, device):
        pytest.skip(unavailable_reason(backend, device))
    inputs, graph = make_inputs("random", 31, device)
    for position, name in ((0, "h"), (1, "s"), (3, "t")):
        strided = list(inputs)
        strided[position] = inputs[position].transpose(0, 1).contiguous().transpose(0, 1)
        assert not strided[position].is_contiguous()
        with pytest.raises(ValueError, match=f"{name} must be contiguous"):
            run_op(strided, graph, backend)


@pytest.mark.parametrize("backend,device", BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("heads,channels", [(HEADS, CHANNELS), (2, 8)])
def test_rows_of_one_edge(backend, device, heads, channels):
    """A row of one edge (rows 2-9: the self loop alone; row 0 without its loop) gives that
    edge weight 1: out = h_j and lse = its score, exactly; scored -inf (row 6, one head of row
    7) it weighs nothing, as a row without in-edges."""
    if unavailable_reason(backend, device):
        pytest.skip(unavailable_reason(backend, device))
    graph = Graph.from_coo(torch.tensor([1, 3, 1]).to(device), torch.tensor([0, 1, 1]).to(device),
                           10, 10, drop_self_loops=True, num_loops=10)
    g = torch.Generator().manual_seed(heads)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    h, s, d = rand(10, heads, channels), rand(10, heads), rand(10, heads)
    t, t_loop = rand(graph.num_edges, heads), rand(10, heads)
    t_loop[0] = float("-inf")  # row 0 keeps its edge from node 1 only
    t_loop[6] = float("-inf")
    t_loop[7, 0] = float("-inf")
    out, lse = run_op((h, s, d, t, t_loop), graph, backend)
    score = torch.nn.functional.leaky_relu(s + d + t_loop, 0.2)
    ones = [2, 3, 4, 5, 8, 9]
    assert torch.equal(out[ones], h[ones]) and torch.equal(lse[ones], score[ones])
    assert torch.equal(out[0], h[1])
    assert (out[6] == 0).all() and torch.isneginf(lse[6]).all()
    assert (out[7, 0] == 0).all() and torch.equal(out[7, 1:], h[7, 1:])
    assert_close(out, reference((h, s, d, t, t_loop), graph)[0], torch.float64)


@pytest.mark.parametrize("backend,device", BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_rows_of_one_edge_under_dropout(backend, device, dtype):
    """Self loops alone under attention dropout: out_i = keep_i h_i per head, exactly (0 in a
    row dropped in every head); lse is the score, dropped or not."""
    if unavailable_reason(backend, device):
        pytest.skip(unavailable_reason(backend, device))
    n, heads, p = 64, 2, 0.5
    none = torch.zeros(0, dtype=torch.long, device=device)
    graph = Graph.from_coo(none, none, n, n, drop_self_loops=True, num_loops=n)
    seed = torch.tensor([11], device=device)
    keep = keep_scale(seed, torch.arange(n, device=device), heads, p, torch.float64)
    dropped = (keep == 0).all(1)
    assert 0 < dropped.sum() < n
    g = torch.Generator().manual_seed(3)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    h, s, d = rand(n, heads, 8).to(dtype), rand(n, heads).to(dtype), rand(n, heads).to(dtype)
    out, lse = run_op((h, s, d, None, None), graph, backend, dropout=p, seed=seed)
    assert torch.equal(out.double(), keep.unsqueeze(-1) * h.double())
    assert torch.equal(lse, torch.nn.functional.leaky_relu(s.to(lse.dtype) + d.to(lse.dtype),
                                                           0.2))


@pytest.mark.parametrize("backend,device", BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("hub", [3, 150])  # 150: a row split over chunks, merged
def test_row_of_only_minus_inf_scores_is_empty(backend, device, hub):
    """One rule everywhere: a row whose every score is -inf (masked through t and t_loop)
    gets out = 0 and lse = -inf, as a row without in-edges, and passes zero gradients."""
    if unavailable_reason(backend, device):
        pytest.skip(unavailable_reason(backend, device))
    src = torch.cat([torch.arange(hub) % 20, torch.tensor([1, 2, 3])])
    dst = torch.cat([torch.zeros(hub, dtype=torch.long), torch.tensor([5, 5, 6])])
    graph = Graph.from_coo(src.to(device), dst.to(device), 20, 20, drop_self_loops=True,
                           num_loops=20)
    g = torch.Generator().manual_seed(hub)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    t, t_loop = rand(graph.num_edges, HEADS), rand(20, HEADS)
    t[:hub] = float("-inf")  # row 0's slots come first (CSR by destination)
    t_loop[0] = float("-inf")
    inputs = (rand(20, HEADS, CHANNELS), rand(20, HEADS), rand(20, HEADS), t, t_loop)
    out, lse = run_op(inputs, graph, backend)
    assert (out[0] == 0).all() and (lse[0] == float("-inf")).all()
    ref_out, ref_lse = reference(inputs, graph)
    assert_close(out, ref_out, torch.float64)
    dout = torch.randn(out.shape, dtype=torch.float64)
    dh, ds, dd, dt, dt_loop = grads(lambda x: run_op(x, graph, backend), inputs, dout)
    for grad in (dh, ds, dd, dt, dt_loop):
        assert torch.isfinite(grad).all()
    assert (dd[0] == 0).all() and (dt[:hub] == 0).all() and (dt_loop[0] == 0).all()
    want = grads(lambda x: reference(x, graph), inputs, dout)
    for got, ref in zip((dh, ds, dd, dt, dt_loop), want):
        assert_close(got, ref, torch.float64)
