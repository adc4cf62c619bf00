"""FastTransformerConv against torch_geometric.nn.TransformerConv, and its op against the
float64 reference, per backend that implements it."""
import copy
import math
import zlib

import pytest
import torch
from torch_geometric.nn import TransformerConv
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csr_tensor

from fastgat import FastTransformerConv, Graph
from fastgat.backends import torch_ref
from fastgat.dropout import draw_seed, keep_scale
from fastgat.ops import transformer_attention, transformer_op
from graphs import KINDS, random_graph
from helpers import TOLERANCE, backends, rel_error
from parity import (IN_CHANNELS, OUT_CHANNELS, assert_compiled_matches_eager, assert_parity,
                    assert_sparse_tensor_parity, features, make_pair, run)

# Triton runs its own, smaller grid in test_triton_family.py: this one takes hours under the
# Triton interpreter (gradcheck alone launches per Jacobian column).
BACKENDS = backends(rule="transformer", interpreted=False)
FUSED = [b for b in BACKENDS if b != "torch"]

CONFIGS = [
    dict(heads=1),
    dict(heads=3, concat=False),
    dict(heads=2, beta=True),
    dict(heads=2, beta=True, concat=False),
    dict(heads=2, root_weight=False),
    dict(heads=2, bias=False),
    dict(heads=2, edge_dim=3),
    dict(heads=2, edge_dim=3, beta=True, bias=False),
    dict(heads=3, edge_dim=3, concat=False, root_weight=False),
]
BIPARTITE_CONFIGS = [dict(heads=2), dict(heads=2, edge_dim=3, beta=True),
                     dict(heads=3, concat=False, bias=False)]


def pair(config, in_channels=IN_CHANNELS, backend="torch", dtype=torch.float64):
    return make_pair(TransformerConv, FastTransformerConv, config, in_channels, OUT_CHANNELS,
                     backend, dtype)


def grid(backend):
    cases = [(c, k) for c in CONFIGS for k in KINDS if k != "bipartite"]
    cases += [(c, "bipartite") for c in BIPARTITE_CONFIGS]
    return [pytest.param(backend, c, k, id=f"{backend}-{i}-{k}") for i, (c, k) in enumerate(cases)]


def graph_case(kind, seed, config=None):
    src, dst, num_src, num_dst = random_graph(kind, seed)
    bipartite = kind == "bipartite"
    x, edge_attr = features(seed, num_src, num_dst, src.numel(), bipartite)
    if config is not None and config.get("edge_dim") is None:
        edge_attr = None
    return torch.stack([src, dst]), x, edge_attr, num_src, num_dst


@pytest.mark.parametrize("backend,config,kind", [p for b in BACKENDS for p in grid(b)])
def test_parity_with_pyg(backend, config, kind):
    seed = zlib.crc32(f"{config}-{kind}".encode()) % 1000  # a graph of its own per case
    edge_index, x, edge_attr, _, _ = graph_case(kind, seed, config)
    in_channels = (IN_CHANNELS, IN_CHANNELS + 1) if kind == "bipartite" else IN_CHANNELS
    pyg, fast = pair(config, in_channels, backend)
    assert_parity(pyg, fast, x, edge_index, edge_attr)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_on_a_hub_with_1e4_in_edges(backend):
    g = torch.Generator().manual_seed(4)
    num_nodes, hub_degree = 200, 10_000
    src = torch.cat([torch.randint(0, num_nodes, (hub_degree,), generator=g),
                     torch.randint(0, num_nodes, (2000,), generator=g)])
    dst = torch.cat([torch.zeros(hub_degree, dtype=torch.long),
                     torch.randint(0, num_nodes, (2000,), generator=g)])
    pyg, fast = pair(dict(heads=2, edge_dim=3, beta=True), backend=backend)
    x, edge_attr = features(5, num_nodes, num_nodes, src.numel(), False)
    assert_parity(pyg, fast, x, torch.stack([src, dst]), edge_attr)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["edge_index", "csr", "coo", "graph"])
def test_input_forms_agree(layout, backend):
    src, dst, num_nodes, _ = random_graph("self_loops", 12)
    keys = torch.unique(dst * num_nodes + src)  # sparse adjacencies hold no duplicates
    src, dst = keys % num_nodes, keys // num_nodes
    pyg, fast = pair(dict(heads=2), backend=backend)
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    if layout == "edge_index":
        from torch_geometric import EdgeIndex
        adj = EdgeIndex(torch.stack([src, dst]), sparse_size=(num_nodes, num_nodes))
    elif layout == "graph":
        adj = Graph.from_coo(src, dst, num_nodes, num_nodes, drop_self_loops=False)
    else:  # TransformerConv (PyG 2.8.1) fails on an uncoalesced COO adjacency
        convert = to_torch_csr_tensor if layout == "csr" else to_torch_coo_tensor
        adj = convert(torch.stack([dst, src]), size=(num_nodes, num_nodes))  # adj_t
    want = pyg(x, torch.stack([src, dst]) if layout == "graph" else adj,
               return_attention_weights=True)
    got = fast(x, adj, return_attention_weights=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[0], fast(x, torch.stack([src, dst])), rtol=1e-10,
                               atol=1e-10)
    if layout == "graph":
        assert torch.equal(got[1][0], want[1][0])
    else:
        assert got[1][0] is adj  # TransformerConv returns the adjacency it was given
    torch.testing.assert_close(got[1][1], want[1][1], rtol=1e-10, atol=1e-10)


def test_sparse_tensor_input():
    assert_sparse_tensor_parity(pair)


def test_hybrid_sparse_values_are_the_edge_attributes():
    """MessagePassing takes a torch.sparse adjacency's (E, edge_dim) values as edge_attr."""
    edge_index, x, edge_attr, num_nodes, _ = graph_case("random", 14)
    keys, first = torch.unique(edge_index[1] * num_nodes + edge_index[0], return_inverse=True)
    edge_attr = torch.zeros(keys.numel(), 3, dtype=torch.float64).index_add(0, first, edge_attr)
    adj = torch.sparse_coo_tensor(torch.stack([keys // num_nodes, keys % num_nodes]), edge_attr,
                                  (num_nodes, num_nodes, 3)).coalesce()
    pyg, fast = pair(dict(heads=2, edge_dim=3))
    torch.testing.assert_close(fast(x, adj), pyg(x, adj), rtol=1e-10, atol=1e-10)


def test_edge_attr_without_edge_dim_runs_pyg_forward():
    edge_index, x, _, _, _ = graph_case("random", 15)
    value_shaped = torch.randn(edge_index.size(1), 2, OUT_CHANNELS, dtype=torch.float64)
    pyg, fast = pair(dict(heads=2))
    torch.testing.assert_close(fast(x, edge_index, value_shaped), pyg(x, edge_index,
                                                                      value_shaped))


def test_checkpoint_state_dict_and_initialisation_match_pyg():
    config = dict(heads=3, edge_dim=2, beta=True)
    torch.manual_seed(42)
    pyg = TransformerConv(IN_CHANNELS, OUT_CHANNELS, **config)
    torch.manual_seed(42)
    fast = FastTransformerConv(IN_CHANNELS, OUT_CHANNELS, **config)
    assert list(fast.state_dict()) == list(pyg.state_dict())
    for (name, a), (_, b) in zip(pyg.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(a, b), name
    # PyG 2.8 puts `bias` on key, query, value and skip; older versions on skip only.
    names = set(dict(FastTransformerConv(IN_CHANNELS, 2, bias=False).named_parameters()))
    assert not any(name.endswith("bias") for name in names)
    assert repr(fast) == repr(pyg).replace("TransformerConv", "FastTransformerConv")


@pytest.mark.parametrize("lazy", ["in_channels", "edge_dim"])
def test_lazy_sizes(lazy):
    edge_index, x, edge_attr, _, _ = graph_case("random", 16)
    in_channels, edge_dim = (-1, 3) if lazy == "in_channels" else (IN_CHANNELS, -1)
    torch.manual_seed(0)
    pyg = TransformerConv(in_channels, OUT_CHANNELS, heads=2, edge_dim=edge_dim).double()
    fast = FastTransformerConv(in_channels, OUT_CHANNELS, heads=2, edge_dim=edge_dim).double()
    want = pyg(x, edge_index, edge_attr)
    fast(x, edge_index, edge_attr)  # materialises the lazy weights, then copy PyG's
    fast.load_state_dict(pyg.state_dict())
    torch.testing.assert_close(fast(x, edge_index, edge_attr), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_matches_pyg(backend):
    edge_index, x, edge_attr, _, _ = graph_case("duplicates", 18)
    grads = []
    for conv in pair(dict(heads=2, edge_dim=3, beta=True), backend=backend):
        leaf = x.detach().clone().requires_grad_()
        dx, = torch.autograd.grad((conv(leaf, edge_index, edge_attr) ** 3).sum(), leaf,
                                  create_graph=True)
        grads.append(torch.autograd.grad((dx ** 2).sum(), [leaf, *conv.parameters()]))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jvp_matches_pyg(backend):
    from torch.func import jvp
    edge_index, x, edge_attr, _, _ = graph_case("hub", 19)
    pyg, fast = pair(dict(heads=2, edge_dim=3), backend=backend)
    tangent = torch.randn_like(x)
    want = jvp(lambda x: pyg(x, edge_index, edge_attr), (x,), (tangent,))[1]
    got = jvp(lambda x: fast(x, edge_index, edge_attr), (x,), (tangent,))[1]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# -- dropout --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_dropout_training_only_seeded_and_alpha_reproduces_out(backend):
    edge_index, x, edge_attr, num_nodes, _ = graph_case("duplicates", 20)
    fast = FastTransformerConv(IN_CHANNELS, OUT_CHANNELS, heads=2, dropout=0.5, edge_dim=3,
                               root_weight=False, backend=backend).double()
    evaluated = fast.eval()(x, edge_index, edge_attr)
    no_dropout = copy.deepcopy(fast)
    no_dropout.dropout = 0.0
    torch.testing.assert_close(evaluated, no_dropout.train()(x, edge_index, edge_attr))
    fast.train()
    torch.manual_seed(3)
    seed = draw_seed(torch.device("cpu"))  # the draw the forward below makes
    torch.manual_seed(3)
    first, (_, alpha) = fast(x, edge_index, edge_attr, return_attention_weights=True)
    torch.manual_seed(3)
    assert torch.equal(fast(x, edge_index, edge_attr), first)
    assert not torch.allclose(first, evaluated)
    # The weights returned are PyG's (before dropout); with the mask of fastgat.dropout, keyed
    # by CSR slot, they reproduce the output.
    graph = Graph.from_coo(edge_index[0], edge_index[1], num_nodes, num_nodes,
                           drop_self_loops=False)
    keep = keep_scale(seed, graph.edge_slots(), 2, 0.5, torch.float64)
    assert 0.35 < (keep == 0).double().mean().item() < 0.65
    value = (fast.lin_value(x) + 0).view(-1, 2, OUT_CHANNELS)[edge_index[0]] + \
        fast.lin_edge(edge_attr).view(-1, 2, OUT_CHANNELS)
    manual = torch.zeros(num_nodes, 2, OUT_CHANNELS, dtype=torch.float64).index_add(
        0, edge_index[1], (alpha * keep).unsqueeze(-1) * value)
    torch.testing.assert_close(manual.view(num_nodes, -1), first, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_one_zeroes_attention_like_pyg(backend):
    edge_index, x, edge_attr, _, _ = graph_case("isolated", 21)
    pyg, fast = pair(dict(heads=2, dropout=1.0, edge_dim=3), backend=backend)
    got, want = run(fast.train(), x, edge_index, edge_attr), run(pyg.train(), x, edge_index,
                                                                  edge_attr)
    torch.testing.assert_close(got[0], want[0])
    for name in want[4]:
        torch.testing.assert_close(got[4][name], want[4][name])


# -- fallbacks and bad input ----------------------------------------------------------------
def test_hooks_explain_and_other_aggregations_run_pyg_forward():
    from torch_geometric.explain.algorithm.utils import set_masks
    edge_index, x, _, _, _ = graph_case("random", 22)
    pyg, fast = pair(dict(heads=2))
    seen = []
    fast.register_message_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    torch.testing.assert_close(fast(x, edge_index), pyg(x, edge_index))
    assert seen and seen[0][0] == edge_index.size(1)
    outs = []
    for conv in pair(dict(heads=2)):
        mask = torch.nn.Parameter(torch.linspace(-2, 2, edge_index.size(1), dtype=torch.float64))
        set_masks(conv, mask, edge_index, apply_sigmoid=True)
        outs.append(conv(x, edge_index))
    torch.testing.assert_close(outs[1], outs[0])
    pyg, fast = pair(dict(heads=2, aggr="mean"))
    torch.testing.assert_close(fast(x, edge_index), pyg(x, edge_index))


def test_bad_input_is_named():
    edge_index, x, edge_attr, num_nodes, _ = graph_case("random", 23)
    conv = FastTransformerConv(IN_CHANNELS, OUT_CHANNELS, heads=2, edge_dim=3).double()
    with pytest.raises(ValueError, match="needs edge_attr"):
        conv(x, edge_index)
    with pytest.raises(IndexError, match=r"edge_attr must have shape \(96, 3\)"):
        conv(x, edge_index, edge_attr[:5])
    with pytest.raises(TypeError, match="floating point"):
        conv(x.long(), edge_index, edge_attr)
    with pytest.raises(TypeError, match="pair"):
        conv((x, None), edge_index, edge_attr)
    with pytest.raises(IndexError, match="outside"):
        conv(x, edge_index + num_nodes, edge_attr)
    with pytest.raises(ValueError, match="num_loops"):
        conv(x, Graph.from_coo(edge_index[0], edge_index[1], num_nodes, num_nodes,
                               drop_self_loops=True, num_loops=num_nodes), edge_attr)
    with pytest.raises(ValueError, match="dropout"):
        FastTransformerConv(IN_CHANNELS, OUT_CHANNELS, dropout=1.5)
    with pytest.raises(ValueError, match="heads"):
        FastTransformerConv(IN_CHANNELS, OUT_CHANNELS, heads=0)


# -- the op against the float64 reference ---------------------------------------------------
HEADS, CHANNELS = 3, 5  # C not a power of two


def op_inputs(kind, seed, dtype=torch.float64, edge_values=True, heads=HEADS,
              channels=CHANNELS, graph_size=()):
    src, dst, num_src, num_dst = random_graph(kind, seed, *graph_size)
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=False)
    g = torch.Generator().manual_seed(seed + 1)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    q, k, v = rand(num_dst, heads, channels), rand(num_src, heads, channels), \
        rand(num_src, heads, channels)
    e = rand(graph.num_edges, heads, channels) if edge_values else None
    return (q, k, v, e), graph


def call(inputs, graph, backend, dropout=0.0, seed=None):
    return transformer_attention(*inputs, *graph.op_args(), 1 / math.sqrt(inputs[0].size(2)),
                                 dropout, seed, backend)


def grads(inputs, graph, backend, dout, **kwargs):
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    out = call(leaves, graph, backend, **kwargs)[0]
    return torch.autograd.grad(out, [x for x in leaves if x is not None], dout.to(out.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("edge_values", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_op_matches_reference(backend, kind, edge_values, dtype, dropout):
    inputs, graph = op_inputs(kind, zlib.crc32(kind.encode()) % 100, dtype, edge_values)
    seed = torch.tensor([1234]) if dropout else None
    out, lse = call(inputs, graph, backend, dropout, seed)
    wide = [x.double() if x is not None else None for x in inputs]
    ref_out, ref_lse = torch_ref.transformer_forward(*wide, graph.rowptr, graph.col,
                                                     1 / math.sqrt(CHANNELS), dropout, seed)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64
                                                else torch.float32)
    tol = TOLERANCE[dtype]
    assert rel_error(out, ref_out) < tol
    live = ref_lse > float("-inf")
    assert torch.equal(lse == float("-inf"), ~live)
    assert rel_error(lse[live], ref_lse[live]) < tol
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7),
                       dtype=torch.float64)
    got = grads(inputs, graph, backend, dout, dropout=dropout, seed=seed)
    want = grads(wide, graph, "torch", dout, dropout=dropout, seed=seed)
    for a, b in zip(got, want):
        assert a.dtype == dtype and rel_error(a, b) < tol * (4 if dtype != torch.float64 else 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.slow  # a Jacobian column per input element
def test_gradcheck_gradgradcheck_and_opcheck(backend):
    inputs, graph = op_inputs("hub", 3, heads=2, channels=3, graph_size=(10, 24, 12))
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    seed = torch.tensor([99])
    for dropout in (0.0, 0.4):
        fn = lambda *xs: call(xs, graph, backend, dropout, seed)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradgradcheck(lambda *xs: call(xs, graph, backend)[0], leaves)
    args = (*inputs, *graph.op_args(), 1 / math.sqrt(3), 0.25, seed, backend)
    torch.library.opcheck(transformer_op, args)
    torch.library.opcheck(transformer_op, (*inputs[:3], None, *args[4:]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_bitwise_deterministic(backend):
    inputs, graph = op_inputs("hub", 8, dtype=torch.float32, heads=4, channels=32)
    dout = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(2))
    first = grads(inputs, graph, backend, dout, dropout=0.2, seed=torch.tensor([5]))
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            again = grads(inputs, graph, backend, dout, dropout=0.2, seed=torch.tensor([5]))
            assert all(torch.equal(a, b) for a, b in zip(first, again))
    finally:
        torch.set_num_threads(threads)


def test_op_rejects_bad_shapes():
    (q, k, v, e), graph = op_inputs("random", 4)
    with pytest.raises(ValueError, match="e must be"):
        call((q, k, v, e[:-1]), graph, "torch")
    with pytest.raises(ValueError, match="v must be"):
        call((q, k, v.float(), e), graph, "torch")
    with pytest.raises(ValueError, match="contiguous"):
        call((q, k.transpose(0, 1).contiguous().transpose(0, 1), v, e), graph, "torch")
    with pytest.raises(ValueError, match="seed"):
        call((q, k, v, e), graph, "torch", dropout=0.5)


# -- torch.compile ---------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_torch_compile_fullgraph_matches_eager(dynamic, backend, fresh_dynamo):
    edge_index, x, edge_attr, _, _ = graph_case("self_loops", 24)
    conv = FastTransformerConv(IN_CHANNELS, OUT_CHANNELS, heads=2, edge_dim=3, beta=True,
                               backend=backend).double()
    assert_compiled_matches_eager(conv, x, edge_index, edge_attr, dynamic)
