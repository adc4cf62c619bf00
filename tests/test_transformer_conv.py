"""FastTransformerConv against torch_geometric.nn.TransformerConv, and its op, per backend that
implements it: what only TransformerConv has. The checks all three layers share, parity over
every option among them and the op against its float64 reference, are in
test_layer_family.py."""
import copy
import math

import pytest
import torch
from torch_geometric.nn import TransformerConv

from fastgat import FastTransformerConv, Graph
from fastgat.dropout import draw_seed, keep_scale
from fastgat.ops import transformer_op
from graphs import random_graph
from layer_families import TRANSFORMER
from layer_families import run_transformer_op as call
from layer_families import transformer_op_inputs as op_inputs
from parity import IN_CHANNELS, OUT_CHANNELS, features

BACKENDS = TRANSFORMER.backends
pair = TRANSFORMER.pair


def graph_case(kind, seed):
    """(edge_index, x, edge_attr, num_src, num_dst): a fresh graph of `kind` and its features."""
    src, dst, num_src, num_dst = random_graph(kind, seed)
    x, edge_attr = features(seed, num_src, num_dst, src.numel(), False)
    return torch.stack([src, dst]), x, edge_attr, num_src, num_dst


def test_hybrid_sparse_values_are_the_edge_attributes():
    """MessagePassing takes a torch.sparse adjacency's (E, edge_dim) values as edge_attr."""
    edge_index, x, edge_attr, num_nodes, _ = graph_case("random", 14)
    keys, first = torch.unique(edge_index[1] * num_nodes + edge_index[0], return_inverse=True)
    edge_attr = torch.zeros(keys.numel(), 3, dtype=torch.float64).index_add(0, first, edge_attr)
    adj = torch.sparse_coo_tensor(torch.stack([keys // num_nodes, keys % num_nodes]), edge_attr,
                                  (num_nodes, num_nodes, 3)).coalesce()
    pyg, fast = pair(dict(heads=2, edge_dim=3))
    torch.testing.assert_close(fast(x, adj), pyg(x, adj), rtol=1e-10, atol=1e-10)


def test_bias_false_leaves_no_bias_parameter():
    # PyG 2.8 puts `bias` on key, query, value and skip; older versions on skip only.
    names = set(dict(FastTransformerConv(IN_CHANNELS, 2, bias=False).named_parameters()))
    assert not any(name.endswith("bias") for name in names)


def test_edge_attr_without_edge_dim_runs_pyg_forward():
    edge_index, x, _, _, _ = graph_case("random", 15)
    value_shaped = torch.randn(edge_index.size(1), 2, OUT_CHANNELS, dtype=torch.float64)
    pyg, fast = pair(dict(heads=2))
    torch.testing.assert_close(fast(x, edge_index, value_shaped), pyg(x, edge_index,
                                                                      value_shaped))


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


# -- the op ---------------------------------------------------------------------------------
def grads(inputs, graph, backend, dout, **kwargs):
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    out = call(leaves, graph, backend, **kwargs)[0]
    return torch.autograd.grad(out, [x for x in leaves if x is not None], dout.to(out.dtype))


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
