"""torch.func and forward-mode AD through FastGATConv, against GATConv with copied weights.

GATConv differentiates in every mode; the fused op must too, and never return zero tangents."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap
from torch_geometric.nn import GATConv

from fastgat import FastGATConv
from helpers import backends

CPU_BACKENDS = backends()
CONFIGS = [dict(heads=2), dict(heads=2, edge_dim=3, residual=True, concat=False)]
NUM_NODES, NUM_EDGES, IN_CHANNELS = 6, 14, 4


def setup(config, backend, seed=0):
    torch.manual_seed(seed)
    pyg = GATConv(IN_CHANNELS, 2, **config).double()
    fast = FastGATConv(IN_CHANNELS, 2, backend=backend, **config).double()
    fast.load_state_dict(pyg.state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(NUM_NODES, IN_CHANNELS, generator=g, dtype=torch.float64)
    edge_index = torch.randint(0, NUM_NODES, (2, NUM_EDGES), generator=g)
    edge_attr = (torch.randn(NUM_EDGES, 3, generator=g, dtype=torch.float64)
                 if "edge_dim" in config else None)
    return pyg, fast, x, edge_index, edge_attr


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_jvp_matches_gatconv_and_finite_differences(backend, config):
    pyg, fast, x, edge_index, edge_attr = setup(config, backend)
    v = torch.randn_like(x)
    want = jvp(lambda x: pyg(x, edge_index, edge_attr), (x,), (v,))[1]
    got = jvp(lambda x: fast(x, edge_index, edge_attr), (x,), (v,))[1]
    eps = 1e-6
    fd = (fast(x + eps * v, edge_index, edge_attr) - fast(x - eps * v, edge_index, edge_attr)) / (2 * eps)
    assert got.abs().max() > 1e-3
    close(got, want)
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-7)
    # Tangents of the parameters (attention vectors, lin_edge) reach the scores too.
    params = dict(fast.named_parameters())
    tangents = {n: torch.randn_like(p) for n, p in params.items()}
    call = lambda conv: lambda p: functional_call(conv, p, (x, edge_index, edge_attr))  # noqa: E731
    close(jvp(call(fast), (params,), (tangents,))[1],
          jvp(call(pyg), (dict(pyg.named_parameters()),), (tangents,))[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_forward_ad_and_jacfwd_match_gatconv(backend):
    pyg, fast, x, edge_index, edge_attr = setup(dict(heads=2, edge_dim=3), backend, seed=3)
    v = torch.randn_like(x)
    with fwAD.dual_level():
        got = fwAD.unpack_dual(fast(fwAD.make_dual(x, v), edge_index, edge_attr)).tangent
        want = fwAD.unpack_dual(pyg(fwAD.make_dual(x, v), edge_index, edge_attr)).tangent
    close(got, want)
    if backend != "triton":  # one interpreted launch per Jacobian column: minutes
        close(jacfwd(lambda x: fast(x, edge_index, edge_attr))(x),
              jacfwd(lambda x: pyg(x, edge_index, edge_attr))(x))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_func_grad_jacrev_and_per_sample_grads_match_gatconv(backend):
    pyg, fast, x, edge_index, edge_attr = setup(dict(heads=2, edge_dim=3), backend, seed=5)
    loss = lambda conv: lambda p, x: functional_call(conv, p, (x, edge_index, edge_attr)).square().sum()  # noqa: E731,E501
    fast_params, pyg_params = dict(fast.named_parameters()), dict(pyg.named_parameters())
    got, want = grad(loss(fast))(fast_params, x), grad(loss(pyg))(pyg_params, x)
    for name in want:
        close(got[name], want[name])
    batch = torch.randn(3, NUM_NODES, IN_CHANNELS, dtype=torch.float64)
    got = vmap(grad(loss(fast)), in_dims=(None, 0))(fast_params, batch)
    want = vmap(grad(loss(pyg)), in_dims=(None, 0))(pyg_params, batch)
    for name in want:
        close(got[name], want[name])
    if backend != "triton":
        close(jacrev(lambda x: fast(x, edge_index, edge_attr))(x),
              jacrev(lambda x: pyg(x, edge_index, edge_attr))(x))
