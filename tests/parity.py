"""Parity with a PyG layer: the same weights, features and upstream gradient through both, and
every output, attention weight and gradient compared (tests/test_layer_family.py, the layers'
own test files and tests/test_triton_family.py)."""
import torch

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


def assert_edge_masks_match(pyg, fast, x, edge_index):
    """An explainer's edge mask (set via set_masks) gives PyG's output and a mask gradient
    equal to PyG's and not zero."""
    from torch_geometric.explain.algorithm.utils import set_masks
    outs, grads = [], []
    for conv in (pyg, fast):
        mask = torch.nn.Parameter(torch.linspace(-2, 2, edge_index.size(1), dtype=torch.float64))
        set_masks(conv, mask, edge_index, apply_sigmoid=True)
        outs.append(conv(x, edge_index))
        grads.append(torch.autograd.grad(outs[-1].square().sum(), mask)[0])
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[1].abs().sum() > 0
