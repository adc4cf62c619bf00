"""The op in plain torch scatter ops: the CPU fallback and the float64 reference.

Differentiating `gat_forward` with autograd gives the reference gradients; `gat_backward` is the
explicit formula of docs/design.md §2 that the fused kernels implement. Both see the same edge list:
the CSR slots (dead slots, i.e. dropped self loops past rowptr[-1], go to a dummy row N_dst)
followed by the implicit self loops i -> i for i < num_loops, whose dropout slot is E + i.
Materialises E x H x C gathers: fine for a reference, which is why the kernels exist.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..dropout import keep_scale


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Every backend's accumulation and lse dtype for h of `dtype` (csrc/common/checks.h's
    lse_dtype_for says the same in C++)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _edge_list(rowptr: Tensor, col: Tensor, num_loops: int):
    """(src, dst, slot) over CSR slots then self loops; dead slots get dst = N_dst."""
    num_slots = col.numel()
    slots = torch.arange(num_slots, device=col.device)
    dst = torch.searchsorted(rowptr.long(), slots, right=True) - 1
    loops = torch.arange(num_loops, device=col.device)
    src = torch.cat([col.long(), loops])
    dst = torch.cat([dst, loops])
    slot = torch.cat([slots, loops + num_slots])
    return src, dst, slot


def _scores(s, d, t, t_loop, src, dst, num_loops, acc):
    heads = s.size(1)
    d_ext = torch.cat([d.to(acc), d.new_zeros(1, heads, dtype=acc)])
    z = s.to(acc)[src] + d_ext[dst]
    if t is not None:
        loop_scores = t_loop.to(acc) if t_loop is not None else z.new_zeros(num_loops, heads)
        z = z + torch.cat([t.to(acc), loop_scores])
    elif t_loop is not None:
        z = z + torch.cat([z.new_zeros(z.size(0) - num_loops, heads), t_loop.to(acc)])
    return z


def _alpha(x, lse, dst, acc):
    """alpha = exp(x - lse_i) recomputed per edge. Dead slots land on a dummy row and rows of
    -inf scores have lse = -inf: both read lse as +inf, which makes their alpha exactly 0."""
    heads = lse.size(1)
    lse = torch.cat([lse.to(acc), lse.new_full((1, heads), float("inf"), dtype=acc)])
    return torch.exp(x - torch.where(lse == float("-inf"), float("inf"), lse)[dst])


def _keep(seed, slot, heads, dropout, like):
    if dropout == 0.0:
        return None
    return keep_scale(seed, slot, heads, dropout, like.dtype)


def gat_forward(
    h: Tensor, s: Tensor, d: Tensor, t: Optional[Tensor], t_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, num_loops: int, negative_slope: float, dropout: float,
    seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    acc = accumulation_dtype(h.dtype)
    src, dst, slot = _edge_list(rowptr, col, num_loops)
    x = torch.nn.functional.leaky_relu(_scores(s, d, t, t_loop, src, dst, num_loops, acc),
                                       negative_slope)
    return _attend(x, h, src, dst, slot, d.size(0), dropout, seed)


def _attend(x: Tensor, h: Tensor, src: Tensor, dst: Tensor, slot: Tensor, num_dst: int,
            dropout: float, seed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The part every attention rule shares: softmax of the edge scores x (edges x H) over
    each destination's in-edges, dropout, and out_i = sum_j alpha_ij keep_ij h_j; (out, lse)."""
    heads, acc = x.size(1), x.dtype
    index = dst.unsqueeze(1).expand_as(x)
    m = x.new_full((num_dst + 1, heads), float("-inf"))
    m = m.scatter_reduce(0, index, x, "amax", include_self=True).detach()
    # A row of -inf scores only (or none) weighs nothing: shift by 0, not -inf, so its
    # l = 0 instead of NaN; it gets out = 0 and lse = -inf, as a row without in-edges.
    shift = torch.where(m == float("-inf"), 0.0, m)
    p = torch.exp(x - shift[dst])
    l = x.new_zeros(num_dst + 1, heads).scatter_add(0, index, p)
    lse = m + torch.log(l)
    alpha = p / torch.where(l > 0, l, 1.0)[dst]  # not exp(x - lse): log(l) is lost beside a huge m
    keep = _keep(seed, slot, heads, dropout, alpha)
    if keep is not None:
        alpha = alpha * keep
    out = h.new_zeros(num_dst + 1, heads, h.size(2), dtype=acc)
    out = out.index_add(0, dst, alpha.unsqueeze(-1) * h.to(acc)[src])
    # Fresh tensors, not views of the padded ones: an op output that is a view breaks forward AD.
    return out[:num_dst].to(h.dtype, copy=True), lse[:num_dst].clone()


def gat_backward(
    dout: Tensor, out: Tensor, lse: Tensor, h: Tensor, s: Tensor, d: Tensor,
    t: Optional[Tensor], t_loop: Optional[Tensor], rowptr: Tensor, col: Tensor,
    colptr: Tensor, csc_row: Tensor, csc_eid: Tensor, num_loops: int, negative_slope: float,
    dropout: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # The scatter formulation needs no transposed graph: colptr, csc_row, csc_eid are unused.
    num_src, num_dst, heads = h.size(0), d.size(0), h.size(1)
    acc = accumulation_dtype(h.dtype)
    src, dst, slot = _edge_list(rowptr, col, num_loops)
    z = _scores(s, d, t, t_loop, src, dst, num_loops, acc)
    x = torch.nn.functional.leaky_relu(z, negative_slope)
    alpha = _alpha(x, lse, dst, acc)
    keep = _keep(seed, slot, heads, dropout, alpha)
    dout_acc = torch.cat([dout.to(acc), dout.new_zeros(1, heads, dout.size(2), dtype=acc)])
    D = (dout_acc[:num_dst] * out.to(acc)).sum(-1)
    D = torch.cat([D, D.new_zeros(1, heads)])
    dalpha = (dout_acc[dst] * h.to(acc)[src]).sum(-1)
    weight = alpha if keep is None else alpha * keep
    if keep is not None:
        dalpha = dalpha * keep
    dx = alpha * (dalpha - D[dst])
    dz = torch.where(z > 0, dx, dx * negative_slope)
    dd = dz.new_zeros(num_dst + 1, heads).index_add(0, dst, dz)[:num_dst]
    ds = dz.new_zeros(num_src, heads).index_add(0, src, dz)
    dh = dz.new_zeros(num_src, heads, h.size(2)).index_add(
        0, src, weight.unsqueeze(-1) * dout_acc[dst])
    num_slots = col.numel()
    dt = dz[:num_slots].to(t.dtype, copy=True) if t is not None else dz.new_empty(0)
    dt_loop = dz[num_slots:].to(t_loop.dtype, copy=True) if t_loop is not None else dz.new_empty(0)
    return dh.to(h.dtype), ds.to(s.dtype), dd.to(d.dtype), dt, dt_loop


def gat_jvp(
    out: Tensor, lse: Tensor, h: Tensor, s: Tensor, d: Tensor, t: Optional[Tensor],
    t_loop: Optional[Tensor], dh: Optional[Tensor], ds: Optional[Tensor], dd: Optional[Tensor],
    dt: Optional[Tensor], dt_loop: Optional[Tensor], rowptr: Tensor, col: Tensor,
    num_loops: int, negative_slope: float, dropout: float, seed: Optional[Tensor],
) -> Tensor:
    """Forward-mode derivative of out for tangents dh, ds, dd, dt, dt_loop (None: zero):
    with dx_ij = LeakyReLU'(z_ij) (ds_j + dd_i + dt_ij) and the row mean
    dx_i = sum_j alpha_ij dx_ij (the tangent of lse_i),
        dout_i = sum_j alpha_ij keep_ij (dh_j + dx_ij h_j) - dx_i out_i."""
    num_dst, heads, acc = d.size(0), h.size(1), accumulation_dtype(h.dtype)
    src, dst, slot = _edge_list(rowptr, col, num_loops)
    z = _scores(s, d, t, t_loop, src, dst, num_loops, acc)
    alpha = _alpha(torch.nn.functional.leaky_relu(z, negative_slope), lse, dst, acc)
    dz = _scores(ds if ds is not None else torch.zeros_like(s),
                 dd if dd is not None else torch.zeros_like(d), dt, dt_loop, src, dst,
                 num_loops, acc)
    dx = torch.where(z > 0, dz, dz * negative_slope)
    mean = dx.new_zeros(num_dst + 1, heads).index_add(0, dst, alpha * dx)
    keep = _keep(seed, slot, heads, dropout, alpha)
    weight = alpha if keep is None else alpha * keep
    message = dx.unsqueeze(-1) * h.to(acc)[src]
    if dh is not None:
        message = message + dh.to(acc)[src]
    dout = dx.new_zeros(num_dst + 1, heads, h.size(2)).index_add(
        0, dst, weight.unsqueeze(-1) * message)
    return (dout[:num_dst] - mean[:num_dst].unsqueeze(-1) * out.to(acc)).to(h.dtype)


# -- GATv2 (docs/design.md, "GATv2"): the score reads C-vectors, z = <att, LeakyReLU(u)> with
# u_ij = xl_j + xr_i + e_ij; the value is xl_j, as h_j in GAT. --------------------------------
def _gatv2_u(xl, xr, e, e_loop, src, dst, num_loops, acc):
    """u (edges, H, C) over the edge list of _edge_list (dead slots read a zero xr row)."""
    heads, channels = xl.size(1), xl.size(2)
    xr_ext = torch.cat([xr.to(acc), xr.new_zeros(1, heads, channels, dtype=acc)])
    u = xl.to(acc)[src] + xr_ext[dst]
    if e is not None or e_loop is not None:
        edges = e.to(acc) if e is not None else u.new_zeros(u.size(0) - num_loops, heads,
                                                            channels)
        loops = e_loop.to(acc) if e_loop is not None else u.new_zeros(num_loops, heads,
                                                                      channels)
        u = u + torch.cat([edges, loops])
    return u


def gatv2_forward(
    xl: Tensor, xr: Tensor, att: Tensor, e: Optional[Tensor], e_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, num_loops: int, negative_slope: float, dropout: float,
    seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    acc = accumulation_dtype(xl.dtype)
    src, dst, slot = _edge_list(rowptr, col, num_loops)
    u = _gatv2_u(xl, xr, e, e_loop, src, dst, num_loops, acc)
    x = (torch.nn.functional.leaky_relu(u, negative_slope) * att.to(acc)).sum(-1)
    return _attend(x, xl, src, dst, slot, xr.size(0), dropout, seed)


def gatv2_backward(
    dout: Tensor, out: Tensor, lse: Tensor, xl: Tensor, xr: Tensor, att: Tensor,
    e: Optional[Tensor], e_loop: Optional[Tensor], rowptr: Tensor, col: Tensor,
    colptr: Tensor, csc_row: Tensor, csc_eid: Tensor, num_loops: int, negative_slope: float,
    dropout: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dxl, dxr, datt, de, de_loop) by the explicit formulas the fused kernels implement."""
    num_src, num_dst, heads = xl.size(0), xr.size(0), xl.size(1)
    acc = accumulation_dtype(xl.dtype)
    src, dst, slot = _edge_list(rowptr, col, num_loops)
    u = _gatv2_u(xl, xr, e, e_loop, src, dst, num_loops, acc)
    act = torch.nn.functional.leaky_relu(u, negative_slope)
    att_acc = att.to(acc)
    alpha = _alpha((act * att_acc).sum(-1), lse, dst, acc)
    keep = _keep(seed, slot, heads, dropout, alpha)
    dout_acc = torch.cat([dout.to(acc), dout.new_zeros(1, heads, dout.size(2), dtype=acc)])
    D = (dout_acc[:num_dst] * out.to(acc)).sum(-1)
    D = torch.cat([D, D.new_zeros(1, heads)])
    xl_src = xl.to(acc)[src]
    dalpha = (dout_acc[dst] * xl_src).sum(-1)
    weight = alpha if keep is None else alpha * keep
    if keep is not None:
        dalpha = dalpha * keep
    dz = alpha * (dalpha - D[dst])
    da = dz.unsqueeze(-1) * att_acc  # dz * att, then * LeakyReLU'(u), branching on u
    du = torch.where(u > 0, da, da * negative_slope)
    dxr = du.new_zeros(num_dst + 1, *xr.shape[1:]).index_add(0, dst, du)[:num_dst]
    dxl = du.new_zeros(num_src, *xl.shape[1:]).index_add(
        0, src, weight.unsqueeze(-1) * dout_acc[dst] + du)
    datt = (dz.unsqueeze(-1) * act).sum(0)
    num_slots = col.numel()
    de = du[:num_slots].to(e.dtype, copy=True) if e is not None else du.new_empty(0)
    de_loop = du[num_slots:].to(e_loop.dtype, copy=True) if e_loop is not None else \
        du.new_empty(0)
    return dxl.to(xl.dtype), dxr.to(xr.dtype), datt.to(att.dtype), de, de_loop
