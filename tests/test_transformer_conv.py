"""FastTransformerConv against torch_geometric.nn.TransformerConv, per backend that implements
it: what only TransformerConv has. The checks all three layers share (parity over every option
among them, dropout, fallbacks to PyG's forward) and those of its op are in
test_layer_family.py."""
import pytest
import torch
from torch_geometric.nn import TransformerConv

from fastgat import FastTransformerConv, Graph
from graphs import random_graph
from layer_families import TRANSFORMER
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


# -- bad input ------------------------------------------------------------------------------
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


