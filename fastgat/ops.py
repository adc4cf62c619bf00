"""The fused attention edge stages as autograd-aware custom ops (docs/design.md §2, §4, §10,
§11): GAT's below, then GATv2's and TransformerConv's; all share one input check (`_check_inputs`)
and one autograd plumbing (`_autograd`).

    fastgat::gat_attention(h, s, d, t?, t_loop?, graph..., num_loops, negative_slope,
                           dropout, seed?, backend) -> (out, lse)
    fastgat::gat_attention_backward(dout, out, lse, <same inputs>) -> (dh, ds, dd, dt, dt_loop)

Contract every backend implements (inputs are validated by the caller: FastGATConv / Graph):
  h (N_src, H, C), s (N_src, H), d (N_dst, H), t (E, H) or None, t_loop (num_loops, H) or None,
  all contiguous and on one device. The scores s, d, t, t_loop share one floating dtype: h's, or
  float32 beside bfloat16 / float16 h (autocast keeps the logits in float32, docs/design.md §4);
  their gradients come back in that dtype. rowptr (N_dst + 1), col (E): CSR by destination;
  colptr (N_src + 1), csc_row (E), csc_eid (E): the same edges by source, csc_eid giving each
  one's CSR slot. Index tensors share one dtype, int32 or int64. Slots past rowptr[-1] are dead.
  Node i < num_loops also has an implicit in-edge from source i, scored with t_loop[i].
  out (N_dst, H, C) has h's dtype; lse (N_dst, H) is float32 (float64 for float64 h); a node
  without in-edges gets out = 0 and lse = -inf. Dropout (p > 0 needs a 1-element int64 seed on
  h's device) follows fastgat.dropout. lse carries no gradient: it is saved for the backward.
The backward op is differentiable too (double backward, e.g. gradient penalties), through the
torch reference: correct to second order, but not fused.

The public entries (`gat_attention`, `gatv2_attention`, `transformer_attention`) apply an op through an
autograd.Function with setup_context, a forward-mode rule (jvp) and vmap support, because the
autograd that torch.library.register_autograd generates is an old-style Function: torch.func.grad
/ jacrev reject it, and forward mode (torch.func.jvp, jacfwd) silently saw zero tangents. The
jvp is the torch reference's explicit formula (E x H x C memory, like double backward). Under
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
    num_src, heads, _ = _value_shape("h", h)
    _check_inputs("h", h, {"s": (s, (num_src, heads)), "d": (d, (rowptr.numel() - 1, heads)),
                      "t": (t, (col.numel(), heads)), "t_loop": (t_loop, (num_loops, heads))},
                  rowptr, col, num_loops, dropout, seed, float32_scores=True)
    impl = implementation(backend)
    return impl.gat_forward(h, s, d, t, t_loop, rowptr, col, num_loops, negative_slope,
                            dropout, seed)


def _value_shape(name: str, h: Tensor) -> Tuple[int, int, int]:
    """(N_src, H, C) of the gathered value tensor, which sets every other input's dtype."""
    if h.dim() != 3 or not h.is_floating_point():
        raise ValueError(f"{name} must be a floating (N_src, H, C) tensor, got {h.dtype} "
                         f"{tuple(h.shape)}")
    return tuple(h.shape)


def _check_inputs(name, h, tensors, rowptr, col, num_loops, dropout, seed,
                  float32_scores=False) -> None:
    """Shapes, dtypes and devices of the contract (metadata only: no pass over the data):
    `h` the values (named `name`), `tensors` maps each other float input's name to
    (tensor or None, its expected shape). With `float32_scores` (GAT's s, d, t, t_loop) those
    may instead all be float32 when h is bfloat16 / float16."""
    # Kernels index rows as dense (row, head, channel) offsets: a strided view would be read
    # as if it were contiguous. The caller copies (the layers do); the op never does silently.
    named = {name: h, **{k: x for k, (x, _) in tensors.items()}, "rowptr": rowptr, "col": col}
    for key, x in named.items():
        if x is not None and not x.is_contiguous():
            raise ValueError(f"{key} must be contiguous, got strides {x.stride()} for shape "
                             f"{tuple(x.shape)}")
    dtype = h.dtype
    if float32_scores:
        dtype = next(iter(tensors.values()))[0].dtype
        if dtype != h.dtype and not (dtype == torch.float32 and h.dtype in _HALF):
            raise ValueError(f"the scores must be {h.dtype}"
                             f"{' or float32' if h.dtype in _HALF else ''} for {h.dtype} "
                             f"{name}, got {dtype}")
    for name, (x, shape) in tensors.items():
        if x is None:
            continue
        if tuple(x.shape) != shape or x.dtype != dtype or x.device != h.device:
            raise ValueError(f"{name} must be a {dtype} tensor of shape {shape} on "
                             f"{h.device}, got {x.dtype} {tuple(x.shape)} on {x.device}")
    if rowptr.dtype not in (torch.int32, torch.int64) or col.dtype != rowptr.dtype:
        raise ValueError(f"rowptr and col must share an int32 or int64 dtype, got "
                         f"{rowptr.dtype} and {col.dtype}")
    if not 0 <= num_loops <= min(h.size(0), rowptr.numel() - 1):
        raise ValueError(f"num_loops={num_loops} must lie in [0, min(N_src, N_dst)]")
    if dropout > 0.0 and (seed is None or seed.numel() != 1 or seed.dtype != torch.int64):
        raise ValueError("dropout > 0 needs a 1-element int64 seed tensor")


_HALF = (torch.bfloat16, torch.float16)  # h dtypes that may take float32 scores


def _fake_outputs(h: Tensor, rowptr: Tensor) -> Tuple[Tensor, Tensor]:
    """Empty (out, lse) of the contract's shapes and dtypes."""
    num_dst = rowptr.size(0) - 1
    lse_dtype = torch_ref.accumulation_dtype(h.dtype)
    return h.new_empty(num_dst, h.size(1), h.size(2)), h.new_empty(num_dst, h.size(1),
                                                                   dtype=lse_dtype)


@attention_op.register_fake
def _(h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid, num_loops, negative_slope,
      dropout, seed, backend):
    return _fake_outputs(h, rowptr)


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


def _loop_vmap(op):
    """A vmap rule that runs `op` (one tensor or a tuple out) once per batch entry: correct for
    any in_dims, not fast."""
    def rule(info, in_dims, *args):
        size = info.batch_size
        results = [op(*[x.select(dim, b).contiguous() if dim is not None else x
                        for x, dim in zip(args, in_dims)]) for b in range(size)]
        if isinstance(results[0], Tensor):
            return torch.stack(results), 0
        return tuple(torch.stack(parts) for parts in zip(*results)), (0,) * len(results[0])
    return rule


_NUM_INDEX = 5  # rowptr, col, colptr, csc_row, csc_eid


class _Layout:
    """Where things sit in an attention op's arguments, shared by every rule:
    forward (*primals, *index, *attrs, seed, backend) -> (out, lse) and
    backward (dout, out, lse, <the forward's arguments>) -> one gradient per primal
    (an empty tensor for a primal that is None: custom ops return no None)."""

    def __init__(self, num_primals: int, reference, jvp):
        self.n = num_primals
        self.reference = reference  # torch_ref's forward: (*primals, rowptr, col, *attrs, seed)
        self.jvp = jvp              # (out, lse, primals, tangents, rowptr, col, attrs, seed)

    def split(self, inputs):
        n = self.n
        return (inputs[:n], inputs[n:n + _NUM_INDEX], inputs[n + _NUM_INDEX:-2], inputs[-2],
                inputs[-1])


def _autograd(op, backward_op, layout: _Layout):
    """Registers the autograd of `op` (its backward is `backward_op`, whose own backward runs
    autograd through the torch reference) and vmap rules, and returns the autograd.Function
    the public entry applies outside torch.compile (see the module doc)."""

    def setup_ctx(ctx, inputs, output):
        primals, index, attrs, seed, backend = layout.split(inputs)
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(*primals, *index, seed, out, lse)
        ctx.attrs = (*attrs, backend)

    def vjp(ctx, dout, _dlse):
        saved = ctx.saved_tensors
        primals, index = saved[:layout.n], saved[layout.n:layout.n + _NUM_INDEX]
        seed, out, lse = saved[layout.n + _NUM_INDEX:]
        grads = _call(AttentionBackward, backward_op, dout, out, lse, *primals, *index,
                      *ctx.attrs[:-1], seed, ctx.attrs[-1])
        grads = [g if x is not None else None for g, x in zip(grads, primals)]
        return (*grads, *(None,) * (_NUM_INDEX + len(ctx.attrs) + 1))

    def backward_setup_ctx(ctx, inputs, output):
        primals, index, attrs, seed, _backend = layout.split(inputs[3:])
        ctx.save_for_backward(inputs[0], *primals, *index[:2], seed)
        ctx.attrs = attrs
        ctx.num_inputs = len(inputs)

    def double_vjp(ctx, *cotangents):
        """Vector-Jacobian product of the backward op, by autograd through the torch reference.

        The backward's outputs are functions of dout and the primals alone: out and lse are
        functions of the primals, so they get no gradient of their own (it would count twice)."""
        dout, *primals, rowptr, col, seed = ctx.saved_tensors
        leaves = [x.detach().requires_grad_() if x is not None else None
                  for x in (dout, *primals)]
        live = [x for x in leaves[1:] if x is not None]
        live_cotangents = [c for c, x in zip(cotangents, leaves[1:]) if x is not None]
        with torch.enable_grad():
            out, _ = layout.reference(*leaves[1:], rowptr, col, *ctx.attrs, seed)
            grads = torch.autograd.grad(out, live, leaves[0], create_graph=True)
            second = torch.autograd.grad(grads, [leaves[0], *live], live_cotangents,
                                         allow_unused=True)
        second = iter(second)
        ddout, *dprimals = [next(second) if x is not None else None for x in leaves]
        return (ddout, None, None, *dprimals, *(None,) * (ctx.num_inputs - 3 - layout.n))

    AttentionBackward = differentiable_pair("AttentionBackward", op, backward_op, vjp, setup_ctx,
                                            double_vjp, backward_setup_ctx)

    class Attention(torch.autograd.Function):
        """The op with torch.func support: the registered backward, a jvp, and vmap through
        the ops' vmap rules (generate_vmap_rule)."""
        generate_vmap_rule = True
        forward = staticmethod(lambda *args: op(*args))

        @staticmethod
        def setup_context(ctx, inputs, output):
            primals, index, attrs, seed, _ = layout.split(inputs)
            setup_ctx(ctx, inputs, output)
            ctx.save_for_forward(*primals, *index[:2], seed, *output)
            ctx.forward_attrs = attrs

        backward = staticmethod(vjp)

        @staticmethod
        def jvp(ctx, *tangents):
            *primals, rowptr, col, seed, out, lse = ctx.saved_tensors
            rule = layout.jvp or _reference_jvp(layout.reference)
            dout = rule(out, lse, primals, tangents[:layout.n], rowptr, col, ctx.forward_attrs,
                        seed)
            return dout, None

    return Attention


def differentiable_pair(name, op, backward_op, vjp, setup, double_vjp, backward_setup):
    """Registers the autograd of an op and of its backward op (whose vjp is the double
    backward) and their vmap rules; returns the autograd.Function `name` (as profiles and
    tracebacks show it) that applies the backward op under torch.func transforms (grad of
    grad, jacrev), as registered."""
    op.register_autograd(vjp, setup_context=setup)
    backward_op.register_autograd(double_vjp, setup_context=backward_setup)
    op.register_vmap(_loop_vmap(op))
    backward_op.register_vmap(_loop_vmap(backward_op))
    return type(name, (torch.autograd.Function,), dict(
        generate_vmap_rule=True, forward=staticmethod(lambda *args: backward_op(*args)),
        setup_context=staticmethod(backward_setup), backward=staticmethod(double_vjp)))


def _reference_jvp(reference):
    """A forward-mode rule for a rule without an explicit one: forward AD through its torch
    reference (E x H x C memory, as the explicit formulas)."""
    def rule(out, lse, primals, tangents, rowptr, col, attrs, seed):
        live = [i for i, x in enumerate(primals) if x is not None]

        def forward(*xs):
            args = list(primals)
            for i, x in zip(live, xs):
                args[i] = x
            return reference(*args, rowptr, col, *attrs, seed)[0]
        dots = [tangents[i] if tangents[i] is not None else torch.zeros_like(primals[i])
                for i in live]
        return torch.func.jvp(forward, tuple(primals[i] for i in live), tuple(dots))[1]
    return rule


def _call(function, op, *args):
    """`op` through `function`, which torch.func accepts, except where dynamo traces the op
    and its registered autograd (torch.compile). Outside torch.func transforms, `args` is
    already complete and positional, so it goes to autograd's C apply directly:
    Function.apply would first bind it to forward's signature (inspect.signature, a large
    part of a small graph's per-call cost)."""
    if torch.compiler.is_compiling():
        return op(*args)
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    args = torch._functorch.utils.unwrap_dead_wrappers(args)  # as Function.apply does here
    return super(torch.autograd.Function, function).apply(*args)


def _gat_jvp(out, lse, primals, tangents, rowptr, col, attrs, seed):
    num_loops, negative_slope, dropout = attrs
    return torch_ref.gat_jvp(out, lse, *primals, *tangents, rowptr, col, num_loops,
                             negative_slope, dropout, seed)


def _transformer_jvp(out, lse, primals, tangents, rowptr, col, attrs, seed):
    return torch_ref.transformer_jvp(out, lse, *primals, *tangents, rowptr, col, *attrs, seed)


_Attention = _autograd(attention_op, gat_attention_backward,
                       _Layout(5, torch_ref.gat_forward, _gat_jvp))


def gat_attention(
    h: Tensor, s: Tensor, d: Tensor, t: Optional[Tensor], t_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, colptr: Tensor, csc_row: Tensor, csc_eid: Tensor,
    num_loops: int, negative_slope: float, dropout: float, seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor]:
    """The fused edge stage (contract above): differentiable in reverse and forward mode and
    under torch.func transforms."""
    return _call(_Attention, attention_op, h, s, d, t, t_loop, rowptr, col, colptr, csc_row,
                 csc_eid, num_loops, negative_slope, dropout, seed, backend)


# -- GATv2 (docs/design.md, "GATv2") --------------------------------------------------------
#     fastgat::gatv2_attention(xl, xr, att, e?, e_loop?, graph..., num_loops, negative_slope,
#                              dropout, seed?, backend) -> (out, lse)
#     fastgat::gatv2_attention_backward(dout, out, lse, <same inputs>)
#                                       -> (dxl, dxr, datt, de, de_loop)
# xl (N_src, H, C) the source rows (the gathered values), xr (N_dst, H, C), att (H, C),
# e (E, H, C) by CSR slot or None, e_loop (num_loops, H, C) or None; the score of edge j -> i
# is <att, LeakyReLU(xl_j + xr_i + e_ij)>. Graph, dropout, out and lse as for gat_attention.
@torch.library.custom_op("fastgat::gatv2_attention", mutates_args=())
def gatv2_attention_op(
    xl: Tensor, xr: Tensor, att: Tensor, e: Optional[Tensor], e_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, colptr: Tensor, csc_row: Tensor, csc_eid: Tensor,
    num_loops: int, negative_slope: float, dropout: float, seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor]:
    num_src, heads, channels = _value_shape("xl", xl)
    _check_inputs("xl", xl, {"xr": (xr, (rowptr.numel() - 1, heads, channels)),
                             "att": (att, (heads, channels)),
                             "e": (e, (col.numel(), heads, channels)),
                             "e_loop": (e_loop, (num_loops, heads, channels))},
                  rowptr, col, num_loops, dropout, seed)
    return implementation(backend).gatv2_forward(xl, xr, att, e, e_loop, rowptr, col, num_loops,
                                                 negative_slope, dropout, seed)


@gatv2_attention_op.register_fake
def _(xl, xr, att, e, e_loop, rowptr, col, colptr, csc_row, csc_eid, num_loops, negative_slope,
      dropout, seed, backend):
    return _fake_outputs(xl, rowptr)


@torch.library.custom_op("fastgat::gatv2_attention_backward", mutates_args=())
def gatv2_attention_backward(
    dout: Tensor, out: Tensor, lse: Tensor, xl: Tensor, xr: Tensor, att: Tensor,
    e: Optional[Tensor], e_loop: Optional[Tensor], rowptr: Tensor, col: Tensor, colptr: Tensor,
    csc_row: Tensor, csc_eid: Tensor, num_loops: int, negative_slope: float, dropout: float,
    seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return implementation(backend).gatv2_backward(
        dout.contiguous(), out, lse, xl, xr, att, e, e_loop, rowptr, col, colptr, csc_row,
        csc_eid, num_loops, negative_slope, dropout, seed)


@gatv2_attention_backward.register_fake
def _(dout, out, lse, xl, xr, att, e, e_loop, rowptr, col, colptr, csc_row, csc_eid, num_loops,
      negative_slope, dropout, seed, backend):
    de = torch.empty_like(e) if e is not None else xl.new_empty(0)
    de_loop = torch.empty_like(e_loop) if e_loop is not None else xl.new_empty(0)
    return torch.empty_like(xl), torch.empty_like(xr), torch.empty_like(att), de, de_loop


# Forward mode (jvp) runs forward AD through the torch reference (_reference_jvp).
_GATv2Attention = _autograd(gatv2_attention_op, gatv2_attention_backward,
                            _Layout(5, torch_ref.gatv2_forward, None))


def gatv2_attention(
    xl: Tensor, xr: Tensor, att: Tensor, e: Optional[Tensor], e_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, colptr: Tensor, csc_row: Tensor, csc_eid: Tensor,
    num_loops: int, negative_slope: float, dropout: float, seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor]:
    """The fused GATv2 edge stage (contract above), differentiable in reverse mode, twice."""
    return _call(_GATv2Attention, gatv2_attention_op, xl, xr, att, e, e_loop, rowptr, col,
                 colptr, csc_row, csc_eid, num_loops, negative_slope, dropout, seed, backend)


# -- TransformerConv's rule (docs/design.md §11) ---------------------------------------------
#   transformer_attention(q, k, v, e?, graph..., scale, dropout, seed?, backend) -> (out, lse)
#   transformer_attention_backward(dout, out, lse, <the same inputs>) -> (dq, dk, dv, de)
# q (N_dst, H, C), k and v (N_src, H, C), e (E, H, C) by CSR slot or None; one floating dtype,
# contiguous. z_ij = scale <q_i, k_j + e_ij>, out_i = sum_j softmax_i(z)_ij keep_ij (v_j + e_ij);
# no implicit self loops. lse, rows without in-edges, dropout and index tensors as above.
@torch.library.custom_op("fastgat::transformer_attention", mutates_args=())
def transformer_op(
    q: Tensor, k: Tensor, v: Tensor, e: Optional[Tensor], rowptr: Tensor, col: Tensor,
    colptr: Tensor, csc_row: Tensor, csc_eid: Tensor, scale: float, dropout: float,
    seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor]:
    _check_transformer_inputs(q, k, v, e, rowptr, col, dropout, seed)
    return implementation(backend).transformer_forward(q, k, v, e, rowptr, col, scale, dropout,
                                                       seed)


def _check_transformer_inputs(q, k, v, e, rowptr, col, dropout, seed) -> None:
    _, heads, channels = _value_shape("k", k)
    _check_inputs("k", k, {"q": (q, (rowptr.numel() - 1, heads, channels)), "v": (v, k.shape),
                           "e": (e, (col.numel(), heads, channels))},
                  rowptr, col, 0, dropout, seed)


@transformer_op.register_fake
def _(q, k, v, e, rowptr, col, colptr, csc_row, csc_eid, scale, dropout, seed, backend):
    return _fake_outputs(q, rowptr)


@torch.library.custom_op("fastgat::transformer_attention_backward", mutates_args=())
def transformer_attention_backward(
    dout: Tensor, out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor, e: Optional[Tensor],
    rowptr: Tensor, col: Tensor, colptr: Tensor, csc_row: Tensor, csc_eid: Tensor, scale: float,
    dropout: float, seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return implementation(backend).transformer_backward(
        dout.contiguous(), out, lse, q, k, v, e, rowptr, col, colptr, csc_row, csc_eid, scale,
        dropout, seed)


@transformer_attention_backward.register_fake
def _(dout, out, lse, q, k, v, e, rowptr, col, colptr, csc_row, csc_eid, scale, dropout, seed,
      backend):
    de = torch.empty_like(e) if e is not None else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), de


_TransformerAttention = _autograd(
    transformer_op, transformer_attention_backward,
    _Layout(4, torch_ref.transformer_forward, _transformer_jvp))


def transformer_attention(
    q: Tensor, k: Tensor, v: Tensor, e: Optional[Tensor], rowptr: Tensor, col: Tensor,
    colptr: Tensor, csc_row: Tensor, csc_eid: Tensor, scale: float, dropout: float,
    seed: Optional[Tensor], backend: str,
) -> Tuple[Tensor, Tensor]:
    """TransformerConv's fused edge stage (contract above), differentiable as gat_attention."""
    return _call(_TransformerAttention, transformer_op, q, k, v, e, rowptr, col, colptr, csc_row,
                 csc_eid, scale, dropout, seed, backend)
