"""GAT's node-scores op (fastgat/node_scores.py) on every backend: values against a float64
einsum, gradients of first and second order, forward mode, torch.func, torch.compile, opcheck,
and the CPU kernel's vector paths (heads in lanes, a lone head, channels off the lane width)."""
import pytest
import torch

from fastgat.node_scores import node_scores, node_scores_backward, node_scores_op
from fastgat.node_scores import node_scores_backward_op
from helpers import DEVICES, assert_close

# Every backend but "cpu" runs the same torch products (on a GPU, a GEMM does them well).
BACKENDS = [pytest.param("cpu", "cpu", id="cpu-cpu")] + [
    pytest.param("torch", device, id=f"torch-{device}") for device in DEVICES]
# (N, H, C, K): 8 heads of 8 (the lane-sum tree, full), 12 heads of 16 (one full tree and a
# partial one), a lone head of 40, channels off the lane width (the per-head dots), no nodes.
SHAPES = [(37, 8, 8, 2), (19, 12, 16, 2), (23, 1, 40, 1), (11, 3, 5, 2), (0, 4, 8, 2)]


def inputs(shape, device, dtype=torch.float64, seed=0):
    N, H, C, K = shape
    g = torch.Generator().manual_seed(seed)
    rand = lambda *size: torch.randn(*size, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731,E501
    return rand(N, H, C), rand(K, H, C), rand(K, N, H)


def expected(x, att, grad):
    x, att, grad = (v.double().cpu() for v in (x, att, grad))
    return (torch.einsum("nhc,khc->knh", x, att), torch.einsum("knh,khc->nhc", grad, att),
            torch.einsum("knh,nhc->khc", grad, x))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_values_and_gradients_match_float64(backend, device, shape, dtype):
    x, att, grad = inputs(shape, device, dtype)
    y = node_scores(x, att, backend)
    dx, datt = node_scores_backward(grad, x, att, backend)
    assert y.dtype == dx.dtype == datt.dtype == dtype
    for got, want in zip((y, dx, datt), expected(x, att, grad)):
        assert got.shape == want.shape
        assert_close(got, want, dtype)
    assert y[0].is_contiguous()  # GAT's s and d are y[0] and y[1], no copy


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] > 0], ids=str)
def test_gradients_of_every_order_and_forward_mode(backend, device, shape):
    x, att, _ = inputs(shape, device)
    x.requires_grad_()
    att.requires_grad_()
    fn = lambda x, att: node_scores(x, att, backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, att), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x, att))
    jac = torch.func.jacrev(fn, argnums=(0, 1))(x, att)
    for got, want in zip(jac, torch.func.jacfwd(fn, argnums=(0, 1))(x, att)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck_and_vmap(backend, device):
    x, att, grad = inputs((9, 8, 8, 2), device)
    torch.library.opcheck(node_scores_op, (x, att, backend))
    torch.library.opcheck(node_scores_op, (x.requires_grad_(), att, backend))
    torch.library.opcheck(node_scores_backward_op, (grad, x.detach(), att, backend))
    batch = torch.randn(3, *x.shape, dtype=x.dtype, device=device)
    got = torch.vmap(lambda x: node_scores(x, att, backend))(batch)
    torch.testing.assert_close(got, torch.stack([node_scores(b, att, backend) for b in batch]))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compiled_gradients_match_eager(backend, device):
    x, att, _ = inputs((13, 4, 8, 2), device, torch.float32)

    def loss(x, att):
        return node_scores(x, att, backend).square().sum()
    leaves = [x.requires_grad_(), att.requires_grad_()]
    eager = torch.autograd.grad(loss(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(*leaves), leaves)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want)


def test_cpu_kernel_does_not_depend_on_the_thread_count():
    """The att gradient sums fixed pieces of rows in order: bitwise the same on 1 and 2
    threads, over more rows than one piece holds."""
    x, att, grad = inputs((5000, 8, 8, 2), "cpu", torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = node_scores_backward(grad, x, att, "cpu")
        torch.set_num_threads(2)
        two = node_scores_backward(grad, x, att, "cpu")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    assert_close(one[1], expected(x, att, grad)[2], torch.float32)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bad_inputs_raise_value_errors(backend):
    x, att, grad = inputs((4, 2, 8, 2), "cpu")
    for bad_x, bad_att in [(x.float(), att),                   # dtypes differ
                           (x, att[:, :1].contiguous()),      # heads differ
                           (x.transpose(0, 1).contiguous().transpose(0, 1), att),  # strided
                           (x[:, :, 0].contiguous(), att)]:   # not (N, H, C)
        with pytest.raises(ValueError, match="must be a contiguous"):
            node_scores(bad_x, bad_att, backend)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_layer_scores_a_strided_lin_output(backend):
    """A custom `lin` may hand back a row-strided view (here the first half of a wider
    product); the layer gives the op dense rows and matches GATConv."""
    from torch_geometric.nn import GATConv

    from fastgat import FastGATConv

    class FirstHalf(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            out = self.lin(x)
            return torch.cat([out, out], 1)[:, :out.size(1)]

    torch.manual_seed(0)
    pyg = GATConv(6, 4, heads=2).double()
    fast = FastGATConv(6, 4, heads=2, backend=backend).double()
    fast.load_state_dict(pyg.state_dict())
    pyg.lin, fast.lin = FirstHalf(pyg.lin), FirstHalf(fast.lin)
    x, edge_index = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 10, (2, 30))
    assert not fast.lin(x).is_contiguous()
    torch.testing.assert_close(fast(x, edge_index), pyg(x, edge_index))
