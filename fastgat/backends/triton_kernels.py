"""backend='triton': the fused edge stage as Triton programs (kernels in triton_device.py).

CUDA tensors run compiled kernels, autotuned per (H, C, dtype) (a pinned configuration under
torch.use_deterministic_algorithms(True), see pinned_config); CPU tensors run under the
Triton interpreter (TRITON_INTERPRET=1, read when this module is imported) with one fixed
configuration. Launches per call: forward 1 and its merge; GAT's backward 3 (D = <dout, out>,
the CSC pass, the dd segment sum), GATv2's and TransformerConv's 3 (D, the CSR pass, the CSC
pass), the last two each with a merge, launched only when a row is split. The item tables of a
pointer array (`plan`) are built by torch ops on the device: once per graph and sized exactly
for a Graph's own pointer arrays (fastgat/launch_plan.py reads their long rows once), else on
every call with sizes from tensor shapes alone, with no host sync.
"""
import contextlib
import struct
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import launch_plan
from ..dropout import threshold
from . import triton_device as dev
from .torch_ref import accumulation_dtype

# Edges per work item: rows with more in-edges (sources with more out-edges) are split. Small
# under the interpreter, where a program costs milliseconds and tests need hub rows to split.
CHUNK = 64 if dev.INTERPRET else 256
_BLOCK_E_INTERPRET = 64
_TILE_LIMIT = 16384  # BLOCK_E * H_P2 * C_P2 float32 elements per gathered tile (register budget)
_DOT_TILE = 4096  # rows * H_P2 * C_P2 elements per program of the dense D = <dout, out>
_INT32_LIMIT = 2**31
_ZERO_BLOCK = 1024  # elements per program of _zero_dead_slots


class Plan(NamedTuple):
    """Work items of one pointer array (rowptr or colptr) cut into chunks of CHUNK slots."""
    item_row: Tensor    # (num_items,) row of each item; num_rows for the idle tail
    item_ptr: Tensor    # (num_rows + 1,) first item of each row
    split_rows: Tensor  # (num_split,) rows with more than CHUNK slots; num_rows for the tail
    split_ptr: Tensor   # (num_rows + 1,) first partial-state slot of each split row
    num_parts: int      # partial states (a bound, or exact: see plan)


def plan(ptr: Tensor, num_slots: int) -> Plan:
    """The item tables of `ptr`: a row of degree g takes max(1, ceil(g/CHUNK)) items, and only
    rows with g > CHUNK write partial states. For a graph's registered pointer array they are
    built once and sized exactly (fastgat/launch_plan.py); otherwise, on every call, with
    static sizes from shapes alone: at most num_rows + num_slots // CHUNK items, of which the
    unused tail is idle, num_slots // (CHUNK+1) split rows and 2 * (num_slots // CHUNK)
    partial states."""
    exact = launch_plan.derived(ptr, "triton",
                                lambda hubs: _tables(ptr, *_exact_sizes(ptr, hubs)))
    if exact is not None:
        return exact
    num_rows = ptr.numel() - 1
    return _tables(ptr, num_rows + num_slots // CHUNK, num_slots // (CHUNK + 1),
                   2 * (num_slots // CHUNK))


def _exact_sizes(ptr: Tensor, hubs: Tensor) -> Tuple[int, int, int]:
    """(items, split rows, partial states) of ptr's rows from its long segments (launch_plan.hubs:
    every row of more than MIN_SPLIT <= CHUNK edges; chunk 0 takes the self loop, so the loop
    column does not count here)."""
    degree = hubs[:, 0]
    chunks = (degree[degree > CHUNK] + CHUNK - 1) // CHUNK
    return (ptr.numel() - 1 + int(chunks.sum()) - chunks.numel(), chunks.numel(),
            int(chunks.sum()))


def _tables(ptr: Tensor, num_items: int, num_split: int, num_parts: int) -> Plan:
    """Device-side item tables of `ptr` with the given sizes (no host sync)."""
    num_rows = ptr.numel() - 1
    degree = (ptr[1:] - ptr[:-1]).long()
    items = torch.clamp_min((degree + CHUNK - 1) // CHUNK, 1)
    zero = degree.new_zeros(1)
    item_ptr = torch.cat([zero, items.cumsum(0)])
    item_row = torch.searchsorted(item_ptr[1:], torch.arange(num_items, device=ptr.device),
                                  right=True)
    split = degree > CHUNK
    split_ptr = torch.cat([zero, torch.where(split, items, 0).cumsum(0)])
    split_rows = torch.searchsorted(split.long().cumsum(0),
                                    torch.arange(num_split, device=ptr.device), right=True)
    index = lambda x: x.to(ptr.dtype)  # noqa: E731
    return Plan(index(item_row), index(item_ptr), index(split_rows), index(split_ptr),
                num_parts)


def _configs():
    return [triton.Config({"BLOCK_E": block_e}, num_warps=warps)
            for block_e in (8, 16, 32, 64) for warps in (4, 8)]


def _prune(configs, named_args, **kwargs):
    """The two largest edge blocks whose tile fits the register budget (the smallest if none).
    A float64 accumulator takes two registers per element: its tiles count double (ptxas
    spilled kilobytes at the float32 budget). So do GATv2's and TransformerConv's, whose
    programs hold more [BLOCK_E, H, C] tiles at once (u and LeakyReLU(u), du; key and value;
    GATv2's CSR pass spilled kilobytes at GAT's budget)."""
    args = {**named_args, **kwargs}
    tile = args["H_P2"] * args["C_P2"] * (2 if args["ACC"] == tl.float64 else 1)
    if args.get("RULE", dev.GAT.value) != dev.GAT.value:
        tile *= 2
    blocks = sorted({c.kwargs["BLOCK_E"] for c in configs
                     if c.kwargs["BLOCK_E"] * tile <= _TILE_LIMIT})
    keep = blocks[-2:] or [min(c.kwargs["BLOCK_E"] for c in configs)]
    return [c for c in configs if c.kwargs["BLOCK_E"] in keep]


def _tuned(kernel, key=("RULE", "H", "C", "HAS_T", "DROPOUT")):
    if dev.INTERPRET:
        return kernel
    return triton.autotune(_configs(), key=list(key),
                           prune_configs_by={"early_config_prune": _prune})(kernel)


def pinned_config(meta) -> dict:
    """The configuration every process uses under torch.use_deterministic_algorithms(True):
    the largest edge block the budget allows, 4 warps. The block size sets the summation
    order, and autotuning by timing may choose differently in another process."""
    config = max(_prune(_configs(), meta), key=lambda c: (c.kwargs["BLOCK_E"], -c.num_warps))
    return dict(config.kwargs, num_warps=config.num_warps)


def _launcher(kernel, meta):
    """(kernel, extra launch arguments): the autotuner, or its plain kernel with the pinned
    configuration in deterministic mode."""
    if isinstance(kernel, triton.runtime.autotuner.Autotuner) and \
            torch.are_deterministic_algorithms_enabled():
        return kernel.fn, pinned_config(meta)
    return kernel, {}


_forward_kernel = _tuned(dev.forward_kernel)
_backward_csc_kernel = _tuned(dev.backward_csc_kernel, key=("H", "C", "HAS_T", "DROPOUT"))
_backward_rows_kernel = _tuned(dev.backward_rows_kernel)
_backward_cols_kernel = _tuned(dev.backward_cols_kernel, key=("RULE", "H", "C", "HAS_T"))


def _zero_dead_slots(grad: Tensor, ptr: Tensor) -> None:
    """Dead slots (dropped self loops, past rowptr[-1]) carry no edge, and no program visits
    them: their rows of the edge-input gradient are zeroed, that tail alone."""
    if grad.numel():
        dev.zero_dead_slots_kernel[(triton.cdiv(grad.numel(), _ZERO_BLOCK),)](
            grad, ptr, ptr.numel() - 1, grad.numel(), grad[0].numel(), BLOCK=_ZERO_BLOCK)


def _f64_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _acc_dtype(dtype: torch.dtype) -> Tuple[torch.dtype, "tl.dtype"]:
    acc = accumulation_dtype(dtype)
    return acc, (tl.float64 if acc == torch.float64 else tl.float32)


def _meta(h: Tensor, num_dst: int, num_slots: int, t, t_loop, coef: float, dropout: float,
          seed: Optional[Tensor], rule: int = dev.GAT.value):
    """Scalar and constexpr arguments shared by the forward and backward programs; `coef` is
    the rule's scalar: the LeakyReLU slope, or TransformerConv's logit scale."""
    num_src, heads, channels = h.shape
    # GATv2's and TransformerConv's edge inputs (and datt's per-item shares) are E x H x C.
    edge_width = 1 if rule == dev.GAT.value else channels
    wide = max(max(num_src, num_dst, 2 * (num_slots // CHUNK)) * heads * channels,
               (num_slots + num_dst) * heads * edge_width) >= _INT32_LIMIT
    meta = dict(RULE=rule, H=heads, C=channels, H_P2=triton.next_power_of_2(heads),
                C_P2=triton.next_power_of_2(channels), CHUNK=CHUNK, HAS_T=t is not None,
                HAS_T_LOOP=t_loop is not None, DROPOUT=dropout > 0.0, WIDE=wide,
                ACC=_acc_dtype(h.dtype)[1])
    if dev.INTERPRET:
        meta["BLOCK_E"] = _BLOCK_E_INTERPRET
    scalars = dict(coef_bits=_f64_bits(coef),
                   threshold=threshold(dropout) if dropout > 0.0 else 0,
                   scale_bits=_f64_bits(1.0 / (1.0 - dropout)))
    return meta, scalars, seed if dropout > 0.0 else h


def _on(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _without(meta, *keys):
    """meta for a program that takes none of `keys`."""
    return {key: value for key, value in meta.items() if key not in keys}


def _merge_meta(meta):
    return {key: meta[key] for key in ("H", "C", "H_P2", "C_P2", "WIDE", "ACC")}


def gat_forward(
    h: Tensor, s: Tensor, d: Tensor, t: Optional[Tensor], t_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, num_loops: int, negative_slope: float, dropout: float,
    seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    return _forward(dev.GAT.value, h, s, d, None, t, t_loop, rowptr, col, num_loops, negative_slope,
                    dropout, seed)


def gatv2_forward(
    xl: Tensor, xr: Tensor, att: Tensor, e: Optional[Tensor], e_loop: Optional[Tensor],
    rowptr: Tensor, col: Tensor, num_loops: int, negative_slope: float, dropout: float,
    seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    return _forward(dev.GATV2.value, xl, None, xr, att, e, e_loop, rowptr, col, num_loops,
                    negative_slope, dropout, seed)


def transformer_forward(
    q: Tensor, k: Tensor, v: Tensor, e: Optional[Tensor], rowptr: Tensor, col: Tensor,
    scale: float, dropout: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    return _forward(dev.TRANSFORMER.value, v, k, q, None, e, None, rowptr, col, 0, scale, dropout,
                    seed)


def _forward(rule, h, s, d, att, t, t_loop, rowptr, col, num_loops, coef, dropout, seed):
    """The forward of every rule: h the gathered values (GAT h, GATv2 xl, TransformerConv v),
    s the per-source score input (GAT s, TransformerConv k), d the per-destination one (GAT d,
    GATv2 xr, TransformerConv q), t / t_loop the edges' and self loops' (t or e)."""
    num_dst, heads, channels = d.size(0), h.size(1), h.size(2)
    acc = _acc_dtype(h.dtype)[0]
    out = h.new_empty(num_dst, heads, channels)
    lse = h.new_empty(num_dst, heads, dtype=acc)
    num_slots = col.numel()
    work = plan(rowptr, num_slots)
    if work.item_row.numel() == 0:
        return out, lse
    meta, scalars, seed_ptr = _meta(h, num_dst, num_slots, t, t_loop, coef, dropout, seed,
                                    rule)
    ws_m = h.new_empty(work.num_parts, heads, dtype=acc)
    ws_l = torch.empty_like(ws_m)
    ws_acc = h.new_empty(work.num_parts, heads, channels, dtype=acc)
    with _on(h.device):
        kernel, config = _launcher(_forward_kernel, meta)
        kernel[(work.item_row.numel(),)](
            h, s, d, att, t, t_loop, rowptr, col, seed_ptr, out, lse, ws_m, ws_l, ws_acc,
            work.item_row, work.item_ptr, work.split_ptr, num_dst, num_slots, num_loops,
            **scalars, **meta, **config)
        if work.split_rows.numel():
            dev.merge_softmax_kernel[(work.split_rows.numel(),)](
                ws_m, ws_l, ws_acc, work.split_rows, work.split_ptr, out, lse, num_dst,
                **_merge_meta(meta))
    return out, lse


def gat_backward(
    dout: Tensor, out: Tensor, lse: Tensor, h: Tensor, s: Tensor, d: Tensor,
    t: Optional[Tensor], t_loop: Optional[Tensor], rowptr: Tensor, col: Tensor,
    colptr: Tensor, csc_row: Tensor, csc_eid: Tensor, num_loops: int, negative_slope: float,
    dropout: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """D, then one CSC pass (the only gather: dz per CSR slot, ds, dh), then dd as a segment
    sum of dz per CSR row (docs/design.md §2, §5)."""
    num_src, heads, channels = h.shape
    num_dst, num_slots = d.size(0), col.numel()
    acc = _acc_dtype(h.dtype)[0]
    dh, ds, dd = torch.empty_like(h), torch.empty_like(s), torch.empty_like(d)
    dt = torch.empty_like(t) if t is not None else h.new_empty(0)
    dt_loop = torch.empty_like(t_loop) if t_loop is not None else h.new_empty(0)
    # dz is stored in dt / dt_loop when they hold the accumulation dtype, else in scratch: dd
    # sums it, and that sum nearly cancels, so it is never rounded to bfloat16 / float16 first.
    in_place = s.dtype == acc
    dz = dt if t is not None and in_place else h.new_empty(num_slots, heads, dtype=acc)
    dz_loop = (dt_loop if t_loop is not None and in_place
               else h.new_empty(num_loops, heads, dtype=acc))
    copy_t, copy_t_loop = t is not None and not in_place, t_loop is not None and not in_place
    meta, scalars, seed_ptr = _meta(h, num_dst, num_slots, t, t_loop, negative_slope, dropout,
                                    seed)
    D = h.new_empty(num_dst, heads, dtype=acc)
    rows, cols = plan(rowptr, num_slots), plan(colptr, num_slots)
    ws_dd = h.new_empty(rows.num_parts, heads, dtype=acc)
    ws_ds = h.new_empty(cols.num_parts, heads, dtype=acc)
    ws_dh = h.new_empty(cols.num_parts, heads, channels, dtype=acc)
    sums = dict(WIDE=meta["WIDE"], ACC=meta["ACC"])
    with _on(h.device):
        if num_dst:
            dot_rows = max(1, _DOT_TILE // (meta["H_P2"] * meta["C_P2"]))
            dev.row_dot_kernel[(triton.cdiv(num_dst, dot_rows),)](
                dout, out, D, num_dst, ROWS=dot_rows, **_merge_meta(meta))
        _zero_dead_slots(dt, rowptr)
        if cols.item_row.numel():
            csc_meta = _without(meta, "RULE")  # GAT's own backward program
            kernel, config = _launcher(_backward_csc_kernel, csc_meta)
            kernel[(cols.item_row.numel(),)](
                dout, lse, h, s, d, t, t_loop, colptr, csc_row, csc_eid, seed_ptr, D, dz,
                dz_loop, dh, ds, ws_ds, ws_dh, cols.item_row, cols.item_ptr, cols.split_ptr,
                num_src, num_slots, num_loops, **scalars, **csc_meta, **config)
        if cols.split_rows.numel():
            dev.merge_sum_kernel[(cols.split_rows.numel(),)](
                ws_ds, ds, ws_dh, dh, cols.split_rows, cols.split_ptr, num_src,
                WIDTH_A=heads, WIDTH_B=heads * channels, BLOCK_A=meta["H_P2"],
                BLOCK_B=triton.next_power_of_2(heads * channels), HAS_B=True, **sums)
        if rows.item_row.numel():
            dev.segment_sum_kernel[(rows.item_row.numel(),)](
                dz, dz_loop, dt, dt_loop, dd, ws_dd, rowptr, rows.item_row, rows.item_ptr,
                rows.split_ptr, num_dst, num_loops, H=heads, H_P2=meta["H_P2"], CHUNK=CHUNK,
                COPY_T=copy_t, COPY_T_LOOP=copy_t_loop, **sums)
        if rows.split_rows.numel():
            dev.merge_sum_kernel[(rows.split_rows.numel(),)](
                ws_dd, dd, ws_dd, dd, rows.split_rows, rows.split_ptr, num_dst,
                WIDTH_A=heads, WIDTH_B=1, BLOCK_A=meta["H_P2"], BLOCK_B=1, HAS_B=False, **sums)
    return dh, ds, dd, dt, dt_loop


def gatv2_backward(
    dout: Tensor, out: Tensor, lse: Tensor, xl: Tensor, xr: Tensor, att: Tensor,
    e: Optional[Tensor], e_loop: Optional[Tensor], rowptr: Tensor, col: Tensor,
    colptr: Tensor, csc_row: Tensor, csc_eid: Tensor, num_loops: int, negative_slope: float,
    dropout: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dxr, dxl, _, datt_parts, de, de_loop = _two_pass_backward(
        dev.GATV2.value, dout, out, lse, xl, None, xr, att, e, e_loop, rowptr, col, colptr, csc_row,
        csc_eid, num_loops, negative_slope, dropout, seed)
    # A fixed-order sum of the CSR pass's per-item shares (torch reduces without atomics).
    return dxl, dxr, datt_parts.sum(0).to(att.dtype), de, de_loop


def transformer_backward(
    dout: Tensor, out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor,
    e: Optional[Tensor], rowptr: Tensor, col: Tensor, colptr: Tensor, csc_row: Tensor,
    csc_eid: Tensor, scale: float, dropout: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, _, de, _ = _two_pass_backward(
        dev.TRANSFORMER.value, dout, out, lse, v, k, q, None, e, None, rowptr, col, colptr, csc_row,
        csc_eid, 0, scale, dropout, seed)
    return dq, dk, dv, de


def _two_pass_backward(rule, dout, out, lse, h, s, d, att, t, t_loop, rowptr, col, colptr,
                       csc_row, csc_eid, num_loops, coef, dropout, seed):
    """GATv2's and TransformerConv's backward (docs/design.md §10, §11), arguments named as in
    _forward: D, then the CSR pass (dz and w = keep alpha per slot, the destination gradient,
    de, GATv2's datt shares), then the CSC pass over the stored dz and w (the source
    gradients); split rows merge in chunk order. Returns (d of d, first and second source
    gradient (the second only for TransformerConv's dv), datt shares, dt, dt_loop)."""
    num_src, heads, channels = h.shape
    num_dst, num_slots = d.size(0), col.numel()
    acc = _acc_dtype(h.dtype)[0]
    transformer = rule == dev.TRANSFORMER.value
    dd, dh_a = torch.empty_like(d), torch.empty_like(h)
    dh_b = torch.empty_like(h) if transformer else dh_a
    dt = torch.empty_like(t) if t is not None else h.new_empty(0)
    dt_loop = torch.empty_like(t_loop) if t_loop is not None else h.new_empty(0)
    dz = h.new_empty(num_slots, heads, dtype=acc)
    w = torch.empty_like(dz)
    dz_loop = h.new_empty(num_loops, heads, dtype=acc)
    w_loop = torch.empty_like(dz_loop)
    meta, scalars, seed_ptr = _meta(h, num_dst, num_slots, t, t_loop, coef, dropout, seed,
                                    rule)
    D = h.new_empty(num_dst, heads, dtype=acc)
    rows, cols = plan(rowptr, num_slots), plan(colptr, num_slots)
    ws_dd = h.new_empty(rows.num_parts, heads, channels, dtype=acc)
    # Idle items write no share: their rows stay zero.
    num_shares = rows.item_row.numel() if rule == dev.GATV2.value else 0
    datt_parts = h.new_zeros(num_shares, heads, channels, dtype=acc)
    ws_a = h.new_empty(cols.num_parts, heads, channels, dtype=acc)
    ws_b = torch.empty_like(ws_a) if transformer else ws_a
    width = heads * channels
    sums = dict(WIDTH_A=width, WIDTH_B=width, BLOCK_A=triton.next_power_of_2(width),
                BLOCK_B=triton.next_power_of_2(width), WIDE=meta["WIDE"], ACC=meta["ACC"])
    with _on(h.device):
        if num_dst:
            dot_rows = max(1, _DOT_TILE // (meta["H_P2"] * meta["C_P2"]))
            dev.row_dot_kernel[(triton.cdiv(num_dst, dot_rows),)](
                dout, out, D, num_dst, ROWS=dot_rows, **_merge_meta(meta))
        _zero_dead_slots(dt, rowptr)
        if rows.item_row.numel():
            kernel, config = _launcher(_backward_rows_kernel, meta)
            kernel[(rows.item_row.numel(),)](
                dout, lse, D, h, s, d, att, t, t_loop, rowptr, col, seed_ptr, dz, dz_loop, w,
                w_loop, dd, ws_dd, datt_parts, dt, dt_loop, rows.item_row, rows.item_ptr,
                rows.split_ptr, num_dst, num_slots, num_loops, **scalars, **meta, **config)
        if rows.split_rows.numel():
            dev.merge_sum_kernel[(rows.split_rows.numel(),)](
                ws_dd, dd, ws_dd, dd, rows.split_rows, rows.split_ptr, num_dst, HAS_B=False,
                **sums)
        if cols.item_row.numel():
            cols_meta = _without(meta, "DROPOUT")
            kernel, config = _launcher(_backward_cols_kernel, cols_meta)
            kernel[(cols.item_row.numel(),)](
                dout, h, d, att, t, t_loop, colptr, csc_row, csc_eid, dz, dz_loop, w, w_loop,
                dh_a, dh_b, ws_a, ws_b, cols.item_row, cols.item_ptr, cols.split_ptr, num_src,
                num_loops, scalars["coef_bits"], **cols_meta, **config)
        if cols.split_rows.numel():
            dev.merge_sum_kernel[(cols.split_rows.numel(),)](
                ws_a, dh_a, ws_b, dh_b, cols.split_rows, cols.split_ptr, num_src,
                HAS_B=transformer, **sums)
    return dd, dh_a, dh_b, datt_parts, dt, dt_loop
