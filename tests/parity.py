"""Parity with a PyG layer: the same weights, features and upstream gradient through both, and
every output, attention weight and gradient compared (tests/test_conv.py,
tests/test_gatv2_conv.py, tests/test_transformer_conv.py)."""
import copy

import pytest
import torch

from graphs import random_graph

IN_CHANNELS, OUT_CHANNELS = 6, 4


def make_pair(pyg_cls, fast_cls, config, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS,
              backend="torch", dtype=torch.float64):
    torch.manual_seed(0)
    pyg = pyg_cls(in_channels, out_channels, **config).to(dtype)
    fast = fast_cls(in_channels, out_channels, backend=backend, **config).to(dtype)
    fast.load_state_dict(pyg.state_dict())
    return pyg, fast


def features(graph_seed, num_src, num_dst, num_edges, bipartite):
    g = torch.Generator().manual_seed(graph_seed + 100)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x = (rand(num_src, IN_CHANNELS), rand(num_dst, IN_CHANNELS + 1)) if bipartite else \
        rand(num_src, IN_CHANNELS)
    return x, rand(num_edges, 3)


def run(conv, x, edge_index, edge_attr, **kwargs):
    x = tuple(v.detach().clone().requires_grad_() for v in x) if isinstance(x, tuple) else \
        x.detach().clone().requires_grad_()
    out, (ei, alpha) = conv(x, edge_index, edge_attr, return_attention_weights=True, **kwargs)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * dout).sum().backward()
    x_grads = [v.grad for v in (x if isinstance(x, tuple) else (x,))]
    return out, ei, alpha, x_grads, {n: p.grad for n, p in conv.named_parameters()}


def assert_parity(pyg, fast, x, edge_index, edge_attr, tol=1e-10, **kwargs):
    want, got = run(pyg, x, edge_index, edge_attr, **kwargs), run(fast, x, edge_index, edge_attr,
                                                                  **kwargs)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=tol, atol=tol)  # noqa: E731
    close(got[0], want[0])
    assert torch.equal(got[1], want[1])  # same edges, same order (self loops appended last)
    close(got[2], want[2])
    for a, b in zip(got[3], want[3]):
        close(a, b)
    assert got[4].keys() == want[4].keys()
    for name in want[4]:
        assert (got[4][name] is None) == (want[4][name] is None), name
        if want[4][name] is not None:
            close(got[4][name], want[4][name])


def assert_sparse_tensor_parity(pair):
    """A torch_sparse SparseTensor adj_t gives PyG's output and attention weights; `pair(config)`
    makes the (PyG, fastgat) layers."""
    torch_sparse = pytest.importorskip("torch_sparse", reason="torch_sparse is not installed "
                                       "(no wheel for this torch): SparseTensor is untestable")
    src, dst, num_nodes, _ = random_graph("random", 13)
    adj = torch_sparse.SparseTensor(row=dst, col=src, sparse_sizes=(num_nodes, num_nodes))
    pyg, fast = pair(dict(heads=2))
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    want, got = pyg(x, adj, return_attention_weights=True), fast(x, adj,
                                                                return_attention_weights=True)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1].storage.value(), want[1].storage.value())


def assert_compiled_matches_eager(conv, x, edge_index, edge_attr, dynamic):
    """torch.compile(fullgraph=True) of the layer gives eager's output and input gradient, on
    the graph and on one twice its size (a recompile, or the dynamic graph reused)."""
    compiled = torch.compile(copy.deepcopy(conv), fullgraph=True, dynamic=dynamic)
    for scale in (1, 2):
        ei, ea = edge_index.repeat(1, scale), edge_attr.repeat(scale, 1)
        want = run(conv, x, ei, ea)
        xg = x.clone().requires_grad_()
        out = compiled(xg, ei, ea)
        torch.testing.assert_close(out, want[0])
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        (out * dout).sum().backward()
        torch.testing.assert_close(xg.grad, want[3][0])
