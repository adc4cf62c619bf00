"""GAT's node scores as a custom op: s = <h_j, att_src> and d = <h_i, att_dst> per head
(docs/design.md §2), for every node at once.

    fastgat::node_scores(x (N, H, C), att (K, H, C), backend) -> y (K, N, H),
        y[k, n, h] = <x[n, h, :], att[k, h, :]>
    fastgat::node_scores_backward(grad (K, N, H), x, att, backend) -> (dx, datt)

x and att share one floating dtype and device and are contiguous; y[k] is contiguous, so GAT's
s and d are y[0] and y[1] without a copy. backend "cpu" runs the one-pass kernels of
csrc/cpu/head_dots.cpp; every other backend the matrix product with att laid out
block-diagonally ((H C) x (K H)), which a GPU's GEMM does well and which on the CPU spent H
times the arithmetic on zeros (a third of the layer's own GEMM time at C = 8).

Both ops are bilinear, so their reverse-mode derivatives of every order are the ops
themselves: the backward's own backward calls them again. The forward-mode rule is the same
products in torch ops, which forward-mode transforms can batch.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .ops import _call, differentiable_pair


def _check(x: Tensor, att: Tensor) -> None:
    if x.dim() != 3 or not x.is_floating_point() or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous floating (N, H, C) tensor, got {x.dtype} "
                         f"{tuple(x.shape)}")
    if (att.dim() != 3 or att.shape[1:] != x.shape[1:] or att.dtype != x.dtype
            or att.device != x.device or not att.is_contiguous()):
        raise ValueError(f"att must be a contiguous {x.dtype} (K, {x.size(1)}, {x.size(2)}) "
                         f"tensor on {x.device}, got {att.dtype} {tuple(att.shape)} on "
                         f"{att.device}")


def _blocks(att: Tensor) -> Tensor:
    """(H C, K H): column k H + h holds att[k, h] in rows h C .. h C + C - 1, zeros elsewhere."""
    K, H, C = att.shape
    eye = torch.eye(H, dtype=att.dtype, device=att.device)
    return (att.permute(1, 2, 0).reshape(H, C, K, 1) * eye.view(H, 1, 1, H)).reshape(H * C,
                                                                                   K * H)


def _kernels(x: Tensor, backend: str) -> bool:
    return backend == "cpu" and x.device.type == "cpu"


@torch.library.custom_op("fastgat::node_scores", mutates_args=())
def node_scores_op(x: Tensor, att: Tensor, backend: str) -> Tensor:
    _check(x, att)
    if _kernels(x, backend):
        return torch.ops.fastgat.head_dots(x, att)
    return _products(x, att).contiguous()


def _products(x: Tensor, att: Tensor) -> Tensor:
    """y as a (K, N, H) view of one matrix product, in torch ops (which torch.func can batch)."""
    N, H, C = x.shape
    with _no_autocast(x):
        y = x.reshape(N, H * C) @ _blocks(att)
    return y.view(N, att.size(0), H).transpose(0, 1)


def _no_autocast(x: Tensor):
    """Autocast stays on inside an op's implementation; it would round the products of
    float32 scores to half precision."""
    return torch.autocast(x.device.type, enabled=False)


@node_scores_op.register_fake
def _(x, att, backend):
    return x.new_empty(att.size(0), x.size(0), x.size(1))


@torch.library.custom_op("fastgat::node_scores_backward", mutates_args=())
def node_scores_backward_op(grad: Tensor, x: Tensor, att: Tensor,
                            backend: str) -> Tuple[Tensor, Tensor]:
    _check(x, att)
    if _kernels(x, backend):
        return torch.ops.fastgat.head_dots_backward(grad, x, att)
    (K, H, C), N = att.shape, x.size(0)
    g = grad.transpose(0, 1).reshape(N, K * H)
    with _no_autocast(x):
        dx = (g @ _blocks(att).t()).view(N, H, C)
        # datt[k, h, c] is entry (h C + c, k H + h) of x^T g: the diagonal blocks.
        full = (x.reshape(N, H * C).t() @ g).view(H, C, K, H)
    datt = full.diagonal(dim1=0, dim2=3).permute(1, 2, 0).contiguous()
    return dx, datt


@node_scores_backward_op.register_fake
def _(grad, x, att, backend):
    return torch.empty_like(x), torch.empty_like(att)


def _vjp(ctx, grad):
    x, att = ctx.saved_tensors
    dx, datt = node_scores_backward(grad.contiguous(), x, att, ctx.backend)
    return dx, datt, None


def _setup(ctx, inputs, output):
    x, att, backend = inputs
    ctx.save_for_backward(x, att)
    ctx.backend = backend


def _double_vjp(ctx, ddx, ddatt):
    """The backward is bilinear: dx = B(grad, att), datt = R(grad, x). Its cotangents go to
    grad through the forward op and to x and att through the backward op itself."""
    grad, x, att = ctx.saved_tensors
    dgrad = dx = datt = None
    if ddx is not None:
        ddx = ddx.contiguous()
        dgrad = node_scores(ddx, att, ctx.backend)
        datt = node_scores_backward(grad, ddx, att, ctx.backend)[1]
    if ddatt is not None:
        ddatt = ddatt.contiguous()
        term = node_scores(x, ddatt, ctx.backend)
        dgrad = term if dgrad is None else dgrad + term
        dx = node_scores_backward(grad, x, ddatt, ctx.backend)[0]
    return dgrad, dx, datt, None


def _backward_setup(ctx, inputs, output):
    grad, x, att, backend = inputs
    ctx.save_for_backward(grad, x, att)
    ctx.backend = backend


_NodeScoresBackward = differentiable_pair("NodeScoresBackward", node_scores_op,
                                          node_scores_backward_op, _vjp, _setup, _double_vjp,
                                          _backward_setup)


class _NodeScores(torch.autograd.Function):
    """The op under torch.func: the registered backward, and a jvp (bilinear: the products
    again, in torch ops, which forward-mode transforms such as jacfwd batch)."""
    generate_vmap_rule = True
    forward = staticmethod(lambda *args: node_scores_op(*args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:2])

    backward = staticmethod(_vjp)

    @staticmethod
    def jvp(ctx, tx: Optional[Tensor], tatt: Optional[Tensor], _):
        x, att = ctx.saved_tensors
        y = _products(tx, att) if tx is not None else None
        if tatt is not None:
            term = _products(x, tatt)
            y = term if y is None else y + term
        return y


def node_scores(x: Tensor, att: Tensor, backend: str) -> Tensor:
    """y[k, n, h] = <x[n, h, :], att[k, h, :]> (module doc), differentiable in reverse mode to
    any order, in forward mode (jvp, jacfwd) and under torch.func's other transforms; not
    forward-over-reverse (a Hessian by jacfwd(jacrev)), as for the attention ops."""
    return _call(_NodeScores, node_scores_op, x, att, backend)


def node_scores_backward(grad: Tensor, x: Tensor, att: Tensor,
                         backend: str) -> Tuple[Tensor, Tensor]:
    return _call(_NodeScoresBackward, node_scores_backward_op, grad, x, att, backend)
