"""FastGATv2Conv against torch_geometric.nn.GATv2Conv with copied weights, and the
fastgat::gatv2_attention op against its float64 reference, on every backend implementing it."""
import zlib

import pytest
import torch
from torch_geometric.nn import GATv2Conv
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csr_tensor

from fastgat import FastGATv2Conv, Graph
from fastgat.backends import torch_ref
from fastgat.errors import InputShapeError
from fastgat.ops import gatv2_attention, gatv2_attention_op
from graphs import KINDS, random_graph
from helpers import TOLERANCE, backends, rel_error
# The parity helpers and the fresh_dynamo fixture are FastGATConv's own (tests/test_conv.py).
from parity import assert_compiled_matches_eager, assert_sparse_tensor_parity
from test_conv import (IN_CHANNELS, OUT_CHANNELS, assert_parity, features,  # noqa: F401
                       fresh_dynamo, run)

# Triton runs its own, smaller grid in test_triton_family.py: this one takes hours under the
# Triton interpreter (gradcheck alone launches per Jacobian column).
BACKENDS = backends(rule="gatv2", interpreted=False)

CONFIGS = [
    dict(heads=1),
    dict(heads=3, concat=False),
    dict(heads=2, negative_slope=-0.7),  # any slope: the derivative branches on u, not the output
    dict(heads=2, add_self_loops=False),
    dict(heads=2, share_weights=True),
    dict(heads=2, edge_dim=3),
    dict(heads=2, edge_dim=3, fill_value="add"),
    dict(heads=2, edge_dim=3, fill_value="max"),
    dict(heads=2, edge_dim=3, fill_value="min"),
    dict(heads=2, edge_dim=3, fill_value="mul"),
    dict(heads=2, edge_dim=3, fill_value=0.5),
    dict(heads=2, edge_dim=3, fill_value=torch.tensor([1.0, -2.0, 0.5])),
    dict(heads=2, edge_dim=3, add_self_loops=False),
    dict(heads=2, bias=False, residual=True),
    dict(heads=2, concat=False, residual=True, edge_dim=3, share_weights=True),
]
BIPARTITE_CONFIGS = [dict(heads=2), dict(heads=2, edge_dim=3, residual=True),
                     dict(heads=2, add_self_loops=False, concat=False),
                     dict(heads=2, edge_dim=3, fill_value="min", bias=False)]


def pair(config, in_channels=IN_CHANNELS, backend="torch", dtype=torch.float64):
    torch.manual_seed(0)
    pyg = GATv2Conv(in_channels, OUT_CHANNELS, **config).to(dtype)
    fast = FastGATv2Conv(in_channels, OUT_CHANNELS, backend=backend, **config).to(dtype)
    fast.load_state_dict(pyg.state_dict())
    return pyg, fast


def grid():
    cases = [(c, k) for c in CONFIGS for k in KINDS if k != "bipartite"]
    cases += [(c, "bipartite") for c in BIPARTITE_CONFIGS]
    return [pytest.param(b, c, k, id=f"{b}-{i}-{k}") for b in BACKENDS
            for i, (c, k) in enumerate(cases)]


@pytest.mark.parametrize("backend,config,kind", grid())
def test_parity_with_pyg(backend, config, kind):
    """Outputs, returned (edge_index, alpha) in PyG's order, and the gradients of x and of
    every parameter, in float64 at 1e-10."""
    seed = zlib.crc32(f"v2-{config}-{kind}".encode()) % 1000  # a graph of its own per case
    src, dst, num_src, num_dst = random_graph(kind, seed)
    bipartite = kind == "bipartite"
    in_channels = (IN_CHANNELS, IN_CHANNELS + 1) if bipartite else IN_CHANNELS
    pyg, fast = pair(config, in_channels, backend)
    x, edge_attr = features(seed, num_src, num_dst, src.numel(), bipartite)
    assert_parity(pyg, fast, x, torch.stack([src, dst]),
                  edge_attr if "edge_dim" in config else None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_on_a_hub_with_1e5_in_edges(backend):
    g = torch.Generator().manual_seed(4)
    num_nodes, hub_degree = 300, 100_000
    src = torch.cat([torch.randint(0, num_nodes, (hub_degree,), generator=g),
                     torch.randint(0, num_nodes, (2000,), generator=g)])
    dst = torch.cat([torch.zeros(hub_degree, dtype=torch.long),
                     torch.randint(0, num_nodes, (2000,), generator=g)])
    pyg, fast = pair(dict(heads=2, edge_dim=3), backend=backend)
    x, edge_attr = features(5, num_nodes, num_nodes, src.numel(), False)
    assert_parity(pyg, fast, x, torch.stack([src, dst]), edge_attr)


@pytest.mark.parametrize("layout", ["edge_index", "csr", "coo"])
@pytest.mark.parametrize("config", [dict(heads=2), dict(heads=2, add_self_loops=False)])
def test_input_forms_agree(layout, config):
    src, dst, num_nodes, _ = random_graph("self_loops", 12)
    keys = torch.unique(dst * num_nodes + src)  # sparse adjacencies hold no duplicates
    src, dst = keys % num_nodes, keys // num_nodes
    pyg, fast = pair(config)
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    if layout == "edge_index":
        from torch_geometric import EdgeIndex
        adj = EdgeIndex(torch.stack([src, dst]), sparse_size=(num_nodes, num_nodes))
    else:
        convert = to_torch_csr_tensor if layout == "csr" else to_torch_coo_tensor
        adj = convert(torch.stack([dst, src]), size=(num_nodes, num_nodes))  # adj_t
    want = pyg(x, adj, return_attention_weights=True)
    got = fast(x, adj, return_attention_weights=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[0], fast(x, torch.stack([src, dst])), rtol=1e-10, atol=1e-10)
    if layout == "edge_index":
        assert torch.equal(got[1][0], want[1][0])
    else:
        assert got[1][0].layout == want[1][0].layout
        torch.testing.assert_close(got[1][0].to_dense(), want[1][0].to_dense())
    torch.testing.assert_close(got[1][1], want[1][1], rtol=1e-10, atol=1e-10)


def test_sparse_tensor_input():
    assert_sparse_tensor_parity(pair)


def test_prepared_graph_input():
    src, dst, num_nodes, _ = random_graph("duplicates", 14)
    edge_index = torch.stack([src, dst])
    pyg, fast = pair(dict(heads=2, edge_dim=3))
    x, edge_attr = features(2, num_nodes, num_nodes, src.numel(), False)
    graph = Graph.from_coo(src, dst, num_nodes, num_nodes, drop_self_loops=True,
                           num_loops=num_nodes)
    torch.testing.assert_close(fast(x, graph, edge_attr), pyg(x, edge_index, edge_attr),
                               rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="num_loops"):
        pair(dict(heads=2, add_self_loops=False))[1](x, graph)


def test_checkpoint_state_dict_and_initialisation_match_pyg():
    for config in (dict(heads=3, edge_dim=2, residual=True), dict(heads=2, share_weights=True)):
        torch.manual_seed(42)
        pyg = GATv2Conv(IN_CHANNELS, OUT_CHANNELS, **config)
        torch.manual_seed(42)
        fast = FastGATv2Conv(IN_CHANNELS, OUT_CHANNELS, **config)
        assert list(fast.state_dict()) == list(pyg.state_dict())
        for (name, a), (_, b) in zip(pyg.state_dict().items(), fast.state_dict().items()):
            assert torch.equal(a, b), name
        assert repr(fast) == repr(pyg).replace("GATv2Conv", "FastGATv2Conv")
    assert fast.lin_r is fast.lin_l  # share_weights: one module, as PyG's


def test_share_weights_sums_both_sides_gradients():
    """With share_weights one projection feeds both the source and the destination side;
    its gradient is the sum, so it differs from either side's alone."""
    src, dst, num_nodes, _ = random_graph("random", 15)
    x, _ = features(15, num_nodes, num_nodes, src.numel(), False)
    pyg, fast = pair(dict(heads=2, share_weights=True))
    assert_parity(pyg, fast, x, torch.stack([src, dst]), None)
    fast.zero_grad()
    fast(x, torch.stack([src, dst])).square().sum().backward()
    assert fast.lin_l.weight.grad.abs().sum() > 0


def test_lazy_input_sizes_and_edge_dim():
    src, dst, num_nodes, _ = random_graph("random", 21)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(21, num_nodes, num_nodes, src.numel(), False)
    torch.manual_seed(0)
    pyg = GATv2Conv(-1, OUT_CHANNELS, heads=2, edge_dim=3).double()
    fast = FastGATv2Conv(-1, OUT_CHANNELS, heads=2, edge_dim=3).double()
    want = pyg(x, edge_index, edge_attr)
    fast(x, edge_index, edge_attr)  # materialises the lazy weights, then copy PyG's
    fast.load_state_dict(pyg.state_dict())
    torch.testing.assert_close(fast(x, edge_index, edge_attr), want, rtol=1e-10, atol=1e-10)


def test_gradient_penalty_matches_pyg():
    """Double backward (through the torch reference) trains the same parameters as PyG."""
    src, dst, num_nodes, _ = random_graph("duplicates", 18)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(18, num_nodes, num_nodes, src.numel(), False)
    grads = []
    for conv in pair(dict(heads=2, edge_dim=3), backend=BACKENDS[-1]):
        leaf = x.detach().clone().requires_grad_()
        out = conv(leaf, edge_index, edge_attr)
        dx, = torch.autograd.grad((out ** 3).sum(), leaf, create_graph=True)
        grads.append(torch.autograd.grad((dx ** 2).sum(), [leaf, *conv.parameters()]))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_mode_matches_pyg(backend):
    """torch.func.jvp (forward AD through the torch reference) gives PyG's tangent."""
    src, dst, num_nodes, _ = random_graph("hub", 19)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(19, num_nodes, num_nodes, src.numel(), False)
    tangent = torch.randn_like(x)
    pyg, fast = pair(dict(heads=2, edge_dim=3), backend=backend)
    want = torch.func.jvp(lambda x: pyg(x, edge_index, edge_attr), (x,), (tangent,))[1]
    got = torch.func.jvp(lambda x: fast(x, edge_index, edge_attr), (x,), (tangent,))[1]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_dropout_training_only_seeded_and_returned(backend):
    src, dst, num_nodes, _ = random_graph("random", 16)
    edge_index = torch.stack([src, dst])
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    fast = FastGATv2Conv(IN_CHANNELS, OUT_CHANNELS, heads=2, dropout=0.5,
                         backend=backend).double()
    fast.eval()
    evaluated = fast(x, edge_index)
    fast.train()
    torch.manual_seed(3)
    first, (_, alpha) = fast(x, edge_index, return_attention_weights=True)
    torch.manual_seed(3)
    assert torch.equal(fast(x, edge_index), first)  # torch.manual_seed reproduces the mask
    assert not torch.allclose(first, evaluated)
    assert 0.35 < (alpha == 0).double().mean().item() < 0.65
    # The returned weights are the ones applied: re-aggregating them reproduces the output.
    xl = fast.lin_l(x).view(-1, 2, OUT_CHANNELS)
    loops = torch.arange(num_nodes)
    keep = src != dst
    full_src, full_dst = torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])
    manual = torch.zeros(num_nodes, 2, OUT_CHANNELS, dtype=torch.float64).index_add(
        0, full_dst, alpha.unsqueeze(-1) * xl[full_src])
    torch.testing.assert_close(manual.view(num_nodes, -1) + fast.bias, first)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_one_zeroes_attention_like_pyg(backend):
    src, dst, num_nodes, _ = random_graph("isolated", 20)
    x, _ = features(20, num_nodes, num_nodes, src.numel(), False)
    pyg, fast = pair(dict(heads=2, dropout=1.0, residual=True), backend=backend)
    got = run(fast.train(), x, torch.stack([src, dst]), None)
    want = run(pyg.train(), x, torch.stack([src, dst]), None)
    torch.testing.assert_close(got[0], want[0])
    assert not got[2].any() and not want[2].any()
    for name in want[4]:  # zero gradients where PyG's are zero, not None
        torch.testing.assert_close(got[4][name], want[4][name])


def test_hooks_explain_and_other_aggregations_fall_back_to_pyg():
    from torch_geometric.explain.algorithm.utils import set_masks
    src, dst, num_nodes, _ = random_graph("random", 17)
    edge_index = torch.stack([src, dst])
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    pyg, fast = pair(dict(heads=2))
    seen = []
    fast.register_message_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    torch.testing.assert_close(fast(x, edge_index), pyg(x, edge_index))
    assert seen and seen[0][0] == src.numel() - int((src == dst).sum()) + num_nodes
    outs, grads = [], []
    for conv in pair(dict(heads=2)):
        mask = torch.nn.Parameter(torch.linspace(-2, 2, src.numel(), dtype=torch.float64))
        set_masks(conv, mask, edge_index, apply_sigmoid=True)
        outs.append(conv(x, edge_index))
        grads.append(torch.autograd.grad(outs[-1].square().sum(), mask)[0])
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[1].abs().sum() > 0
    pyg, fast = pair(dict(heads=2, aggr="mean"))
    torch.testing.assert_close(fast(x, edge_index), pyg(x, edge_index))


def test_bad_inputs_raise_clear_errors():
    src, dst, num_nodes, _ = random_graph("random", 22)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(22, num_nodes, num_nodes, src.numel(), False)
    fast = FastGATv2Conv((IN_CHANNELS, IN_CHANNELS), OUT_CHANNELS, heads=2).double()
    with pytest.raises(ValueError, match="destination features"):
        fast((x, None), edge_index)
    with pytest.raises(ValueError, match="no edge_dim"):
        fast(x, edge_index, edge_attr)
    with_edges = FastGATv2Conv(IN_CHANNELS, OUT_CHANNELS, heads=2, edge_dim=3).double()
    with pytest.raises(InputShapeError, match="edge_attr must have shape"):
        with_edges(x, edge_index, edge_attr[:-1])
    with pytest.raises(ValueError, match="fill_value"):
        FastGATv2Conv(IN_CHANNELS, OUT_CHANNELS, fill_value="median")
    with pytest.raises(ValueError, match="heads"):
        FastGATv2Conv(IN_CHANNELS, OUT_CHANNELS, heads=0)
    out_of_range = edge_index.clone()
    out_of_range[1, 0] = num_nodes
    with pytest.raises(IndexError, match="outside"):
        fast((x, x), out_of_range)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_torch_compile_fullgraph_matches_eager(dynamic, backend, fresh_dynamo):
    src, dst, num_nodes, _ = random_graph("self_loops", 18)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(2, num_nodes, num_nodes, src.numel(), False)
    conv = FastGATv2Conv(IN_CHANNELS, OUT_CHANNELS, heads=2, edge_dim=3,
                         backend=backend).double()
    assert_compiled_matches_eager(conv, x, edge_index, edge_attr, dynamic)


# -- the op ---------------------------------------------------------------------------------
HEADS, CHANNELS = 3, 5  # C not a power of two


def op_inputs(kind, seed, dtype=torch.float64, edges=True, loops=True):
    src, dst, num_src, num_dst = random_graph(kind, seed)
    num_loops = min(num_src, num_dst) if loops else 0
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=loops,
                           num_loops=num_loops)
    g = torch.Generator().manual_seed(seed + 1)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    xl, xr = rand(num_src, HEADS, CHANNELS), rand(num_dst, HEADS, CHANNELS)
    e = rand(graph.num_edges, HEADS, CHANNELS) if edges else None
    e_loop = rand(num_loops, HEADS, CHANNELS) if edges and loops else None
    return (xl, xr, rand(HEADS, CHANNELS), e, e_loop), graph


def run_op(inputs, graph, backend, dropout=0.0, seed=None, slope=0.2):
    return gatv2_attention(*inputs, *graph.op_args(), graph.num_loops, slope, dropout, seed,
                           backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("edges,loops,dropout", [(True, True, 0.0), (False, False, 0.0),
                                                 (True, True, 0.3), (False, True, 0.0)])
def test_op_matches_reference(backend, kind, dtype, edges, loops, dropout):
    """Forward, lse and every gradient against autograd through the float64 reference."""
    case = zlib.crc32(f"{kind}-{edges}-{loops}-{dropout}".encode()) % 1000
    inputs, graph = op_inputs(kind, case, dtype, edges, loops)
    seed = torch.tensor([case * 7919 + 13]) if dropout else None
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    out, lse = run_op(leaves, graph, backend, dropout, seed)
    ref_leaves = [x.detach().double().requires_grad_() if x is not None else None
                  for x in inputs]
    ref_out, ref_lse = torch_ref.gatv2_forward(*ref_leaves, graph.rowptr, graph.col,
                                               graph.num_loops, 0.2, dropout, seed)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64
                                                else torch.float32)
    assert rel_error(out, ref_out) < TOLERANCE[dtype]
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert rel_error(lse[finite], ref_lse[finite]) < TOLERANCE[dtype]
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(case), dtype=dtype)
    live = [x for x in leaves if x is not None]
    ref_live = [x for x in ref_leaves if x is not None]
    got = torch.autograd.grad(out, live, dout)
    want = torch.autograd.grad(ref_out, ref_live, dout.double())
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and a.dtype == dtype
        assert rel_error(a, b) < TOLERANCE[dtype], rel_error(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.slow  # a Jacobian column per input element
def test_op_gradcheck_and_gradgradcheck(backend):
    inputs, graph = op_inputs("self_loops", 3)
    seed = torch.tensor([99])
    leaves = tuple(x.detach().clone().requires_grad_() for x in inputs)
    for dropout in (0.0, 0.4):  # a fixed seed fixes the mask: backward must match forward
        fn = lambda *x: run_op(x, graph, backend, dropout, seed)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves, atol=1e-8, rtol=1e-6)
        assert torch.autograd.gradgradcheck(fn, leaves, atol=1e-8, rtol=1e-6, fast_mode=True)
    fn = lambda *x: run_op(x, graph, backend, 0.0, None, slope=-0.7)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edges", [True, False])
def test_op_opcheck(backend, edges):
    inputs, graph = op_inputs("duplicates", 5, torch.float32, edges=edges)
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    torch.library.opcheck(gatv2_attention_op, (*leaves, *graph.op_args(), graph.num_loops, 0.2,
                                               0.0, None, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_backward_is_bitwise_deterministic(backend):
    inputs, graph = op_inputs("hub", 21, torch.float32)
    seed = torch.tensor([5])
    dout = torch.randn(graph.num_dst, HEADS, CHANNELS)
    results = []
    for threads in (1, 2, 1):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            leaves = [x.detach().clone().requires_grad_() for x in inputs]
            out, _ = run_op(leaves, graph, backend, 0.2, seed)
            results.append(torch.autograd.grad(out, leaves, dout))
        finally:
            torch.set_num_threads(previous)
    # Fused kernels: the same bits on 1 and 2 threads. torch's index_add may order a sum by
    # thread count: the same bits on repeated runs with one thread count.
    other = results[2] if backend == "torch" else results[1]
    for a, b in zip(results[0], other):
        assert torch.equal(a, b)


def test_op_rejects_bad_inputs():
    inputs, graph = op_inputs("random", 6)
    xl, xr, att, e, e_loop = inputs
    bad = {"xr": (xl, xr[:-1], att, e, e_loop), "att": (xl, xr, att[:1], e, e_loop),
           "e": (xl, xr, att, e[:-1], e_loop), "e_loop": (xl, xr, att, e, e_loop.float()),
           "xl must be contiguous": (xl.transpose(0, 1).contiguous().transpose(0, 1), xr, att,
                                     e, e_loop)}
    for name, args in bad.items():
        with pytest.raises(ValueError, match=name):
            run_op(args, graph, "torch")
    with pytest.raises(ValueError, match="seed"):
        run_op(inputs, graph, "torch", dropout=0.5)
