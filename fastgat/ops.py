"""The fused GAT edge stage as autograd-aware custom ops (docs/design.md §2, §4).

    fastgat::gat_attention(h, s, d, t?, t_loop?, graph..., num_loops, negative_slope,
                           dropout, seed?, backend) -> (out, lse)
    fastgat::gat_attention_backward(dout, out, lse, <same inputs>) -> (dh, ds, dd, dt, dt_loop)

Contract every backend implements (inputs are validated by the caller: FastGATConv / Graph):
  h (N_src, H, C), s (N_src, H), d (N_dst, H), t (E, H) or None, t_loop (num_loops, H) or None,
  all contiguous and of one floating dtype. rowptr (N_dst + 1), col (E): CSR by destination;
  colptr (N_src + 1), csc_row (E), csc_eid (E): the same edges by source, csc_eid giving each
  one's CSR slot. Index tensors share one dtype, int32 or int64. Slots past rowptr[-1] are dead.
  Node i < num_loops also has an implicit in-edge from source i, scored with t_loop[i].
  out (N_dst, H, C) has h's dtype; lse (N_dst, H) is float32 (float64 for float64 h); a node
  without in-edges gets out = 0 and lse = -inf. Dropout (p > 0 needs a 1-element int64 seed on
  h's device) follows fastgat.dropout. lse carries no gradient: it is saved for the backward.
The backward op is differentiable too (double backward, e.g. gradient penalties), through the
torch reference: correct to second order, but not fused.

`gat_attention` (the public entry) applies the op through `_Attention`, an autograd.Function
with setup_context, a forward-mode rule (jvp) and vmap support, because the autograd that
torch.library.register_autograd generates is an old-style Function: torch.func.grad / jacrev
reject it, and forward mode (torch.func.jvp, jacfwd) silently saw zero tangents. The jvp is
the torch reference's explicit formula (E x H x C memory, like double backward). Under
torch.compile the op is called directly with its registered autograd.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .backends import implementation, torch_ref


@torch.library.custom_op("fastgat::gat_attention", mutates_args=())
def attention_op(
    h: Tensor, s: Tensor, d: Tensor, t: Optional[Tensor], t_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, colptr: Tensor, csc_row: Tensor, csc_eid: Tensor,
    num_loops: int, negative_slope: float, dropout: float, seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor]:
    _check_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed)
    impl = implementation(backend)
    return impl.gat_forward(h, s, d, t, t_loop, rowptr, col, num_loops, negative_slope,
                            dropout, seed)


def _check_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed) -> None:
    """Shapes, dtypes and devices of the contract (metadata only: no pass over the data)."""
    if h.dim() != 3 or not h.is_floating_point():
        raise ValueError(f"h must be a floating (N_src, H, C) tensor, got {h.dtype} "
                         f"{tuple(h.shape)}")
    num_src, heads = h.shape[:2]
    # Kernels index rows as dense (row, head, channel) offsets: a strided view would be read
    # as if it were contiguous. The caller copies (FastGATConv does); the op never does silently.
    tensors = {"h": h, "s": s, "d": d, "t": t, "t_loop": t_loop, "rowptr": rowptr, "col": col}
    for name, x in tensors.items():
        if x is not None and not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got strides {x.stride()} for shape "
                             f"{tuple(x.shape)}")
    shapes = {"s": (s, (num_src, heads)), "d": (d, (rowptr.numel() - 1, heads)),
              "t": (t, (col.numel(), heads)), "t_loop": (t_loop, (num_loops, heads))}
    for name, (x, shape) in shapes.items():
        if x is None:
            continue
        if tuple(x.shape) != shape or x.dtype != h.dtype or x.device != h.device:
            raise ValueError(f"{name} must be a {h.dtype} tensor of shape {shape} on "
                             f"{h.device}, got {x.dtype} {tuple(x.shape)} on {x.device}")
    if rowptr.dtype not in (torch.int32, torch.int64) or col.dtype != rowptr.dtype:
        raise ValueError(f"rowptr and col must share an int32 or int64 dtype, got "
                         f"{rowptr.dtype} and {col.dtype}")
    if not 0 <= num_loops <= min(num_src, rowptr.numel() - 1):
        raise ValueError(f"num_loops={num_loops} must lie in [0, min(N_src, N_dst)]")
    if dropout > 0.0 and (seed is None or seed.numel() != 1 or seed.dtype != torch.int64):
        raise ValueError("dropout > 0 needs a 1-element int64 seed tensor")


@attention_op.register_fake
def _(h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid, num_loops, negative_slope,
      dropout, seed, backend):
    num_dst = rowptr.size(0) - 1
    lse_dtype = torch_ref.accumulation_dtype(h.dtype)
    return h.new_empty(num_dst, h.size(1), h.size(2)), h.new_empty(num_dst, h.size(1),
                                                                   dtype=lse_dtype)


@torch.library.custom_op("fastgat::gat_attention_backward", mutates_args=())
def gat_attention_backward(
    dout: Tensor, out: Tensor, lse: Tensor, h: Tensor, s: Tensor, d: Tensor,
    t: Optional[Tensor], t_loop: Optional[Tensor], rowptr: Tensor, col: Tensor, colptr: Tensor,
    csc_row: Tensor, csc_eid: Tensor, num_loops: int, negative_slope: float, dropout: float,
    seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl = implementation(backend)
    return impl.gat_backward(dout.contiguous(), out, lse, h, s, d, t, t_loop, rowptr, col,
                             colptr, csc_row, csc_eid, num_loops, negative_slope, dropout, seed)


@gat_attention_backward.register_fake
def _(dout, out, lse, h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid, num_loops,
      negative_slope, dropout, seed, backend):
    dt = torch.empty_like(t) if t is not None else h.new_empty(0)
    dt_loop = torch.empty_like(t_loop) if t_loop is not None else h.new_empty(0)
    return torch.empty_like(h), torch.empty_like(s), torch.empty_like(d), dt, dt_loop


def _setup_context(ctx, inputs, output):
    (h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid, num_loops, negative_slope,
     dropout, seed, backend) = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid, seed,
                          out, lse)
    ctx.attrs = (num_loops, negative_slope, dropout, backend)


def _backward(ctx, dout, _dlse):
    h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid, seed, out, lse = ctx.saved_tensors
    num_loops, negative_slope, dropout, backend = ctx.attrs
    dh, ds, dd, dt, dt_loop = _call(
        _AttentionBackward, gat_attention_backward, dout, out, lse, h, s, d, t, t_loop, rowptr,
        col, colptr, csc_row, csc_eid, num_loops, negative_slope, dropout, seed, backend)
    return (dh, ds, dd, dt if t is not None else None, dt_loop if t_loop is not None else None,
            None, None, None, None, None, None, None, None, None, None)


attention_op.register_autograd(_backward, setup_context=_setup_context)


def _backward_setup_context(ctx, inputs, output):
    (dout, _out, _lse, h, s, d, t, t_loop, rowptr, col, _colptr, _csc_row, _csc_eid, num_loops,
     negative_slope, dropout, seed, _backend) = inputs
    ctx.save_for_backward(dout, h, s, d, t, t_loop, rowptr, col, seed)
    ctx.attrs = (num_loops, negative_slope, dropout)


def _double_backward(ctx, ddh, dds, ddd, ddt, ddt_loop):
    """Vector-Jacobian product of the backward op, by autograd through the torch reference.

    The backward's outputs are functions of (dout, h, s, d, t, t_loop) alone: out and lse are
    functions of the same inputs, so they get no gradient of their own (it would count twice)."""
    dout, h, s, d, t, t_loop, rowptr, col, seed = ctx.saved_tensors
    num_loops, negative_slope, dropout = ctx.attrs
    primals = [x.detach().requires_grad_() if x is not None else None
               for x in (dout, h, s, d, t, t_loop)]
    differentiable = [x for x in primals[1:] if x is not None]
    cotangents = [c for c, x in zip((ddh, dds, ddd, ddt, ddt_loop), primals[1:]) if x is not None]
    with torch.enable_grad():
        out, _ = torch_ref.gat_forward(*primals[1:], rowptr, col, num_loops, negative_slope,
                                       dropout, seed)
        grads = torch.autograd.grad(out, differentiable, primals[0], create_graph=True)
        second = torch.autograd.grad(grads, primals[:1] + differentiable, cotangents,
                                     allow_unused=True)
    second = iter(second)
    ddout, dh, ds, dd, dt, dt_loop = [next(second) if x is not None else None for x in primals]
    return (ddout, None, None, dh, ds, dd, dt, dt_loop) + (None,) * 10


gat_attention_backward.register_autograd(_double_backward, setup_context=_backward_setup_context)


def _call(function, op, *args):
    """`op` through `function`, which torch.func accepts, except where dynamo traces the op
    and its registered autograd (torch.compile)."""
    return op(*args) if torch.compiler.is_compiling() else function.apply(*args)


class _AttentionBackward(torch.autograd.Function):
    """The backward op with torch.func support (grad of grad, jacrev); as registered."""
    generate_vmap_rule = True
    forward = staticmethod(lambda *args: gat_attention_backward(*args))
    setup_context = staticmethod(_backward_setup_context)
    backward = staticmethod(_double_backward)


class _Attention(torch.autograd.Function):
    """The op with torch.func support: the registered backward, a jvp, and vmap through the
    ops' vmap rules (generate_vmap_rule)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return attention_op(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        h, s, d, t, t_loop, rowptr, col, _colptr, _csc_row, _csc_eid, _, _, _, seed, _ = inputs
        ctx.save_for_forward(h, s, d, t, t_loop, rowptr, col, seed, *output)

    backward = staticmethod(_backward)

    @staticmethod
    def jvp(ctx, dh, ds, dd, dt, dt_loop, *_):
        h, s, d, t, t_loop, rowptr, col, seed, out, lse = ctx.saved_tensors
        num_loops, negative_slope, dropout, _ = ctx.attrs
        dout = torch_ref.gat_jvp(out, lse, h, s, d, t, t_loop, dh, ds, dd, dt, dt_loop, rowptr,
                                 col, num_loops, negative_slope, dropout, seed)
        return dout, None


def gat_attention(
    h: Tensor, s: Tensor, d: Tensor, t: Optional[Tensor], t_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, colptr: Tensor, csc_row: Tensor, csc_eid: Tensor,
    num_loops: int, negative_slope: float, dropout: float, seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor]:
    """The fused edge stage (contract above): differentiable in reverse and forward mode and
    under torch.func transforms."""
    return _call(_Attention, attention_op, h, s, d, t, t_loop, rowptr, col, colptr, csc_row,
                 csc_eid, num_loops, negative_slope, dropout, seed, backend)


def _loop_vmap(op):
    """A vmap rule that runs `op` once per batch entry: correct for any in_dims, not fast."""
    def rule(info, in_dims, *args):
        size = info.batch_size
        results = [op(*[x.select(dim, b).contiguous() if dim is not None else x
                        for x, dim in zip(args, in_dims)]) for b in range(size)]
        return tuple(torch.stack(parts) for parts in zip(*results)), (0,) * len(results[0])
    return rule


attention_op.register_vmap(_loop_vmap(attention_op))
gat_attention_backward.register_vmap(_loop_vmap(gat_attention_backward))
