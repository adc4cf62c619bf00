"""FastGATv2Conv against torch_geometric.nn.GATv2Conv with copied weights, on every backend
implementing it: what only GATv2 has. The checks all three layers share (parity over every
option among them, dropout, fallbacks to PyG's forward) and those of its op are in
test_layer_family.py."""
import pytest
import torch
from torch_geometric.nn import GATv2Conv

from fastgat import FastGATv2Conv, Graph
from fastgat.errors import InputShapeError
from graphs import random_graph
from layer_families import GATV2
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


