"""FastGATv2Conv against torch_geometric.nn.GATv2Conv with copied weights, and the
fastgat::gatv2_attention op, on every backend implementing it: what only GATv2 has. The checks
all three layers share, parity over every option among them and the op against its float64
reference, are in test_layer_family.py."""
import pytest
import torch
from torch_geometric.nn import GATv2Conv

from fastgat import FastGATv2Conv, Graph
from fastgat.errors import InputShapeError
from fastgat.ops import gatv2_attention_op
from graphs import random_graph
from layer_families import CHANNELS, GATV2, HEADS
from layer_families import gatv2_op_inputs as op_inputs
from layer_families import run_gatv2_op as run_op
from parity import IN_CHANNELS, OUT_CHANNELS, assert_parity, features

BACKENDS = GATV2.backends
pair = GATV2.pair


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


def test_share_weights_sums_both_sides_gradients():
    """With share_weights one projection module, as PyG's, feeds both the source and the
    destination side; its gradient is the sum, so it differs from either side's alone."""
    src, dst, num_nodes, _ = random_graph("random", 15)
    x, _ = features(15, num_nodes, num_nodes, src.numel(), False)
    pyg, fast = pair(dict(heads=2, share_weights=True))
    assert fast.lin_r is fast.lin_l
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


# -- the op ---------------------------------------------------------------------------------
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
