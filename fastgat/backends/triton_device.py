"""The Triton programs of the fused attention edge stages (docs/design.md §2, §5, §10, §11);
launched by triton_kernels.

A program owns one work item: a chunk of at most CHUNK in-edges of one destination row (forward,
the backward's CSR passes) or out-edges of one source row (the backward's CSC passes), all heads
at once as [BLOCK_E, H_P2, C_P2] tiles gathered coalesced over C. A row longer than CHUNK is
split over several programs that write partial states; a merge program per split row combines
them in chunk order, so results are bitwise deterministic (no atomics). Chunk 0 of a row also
takes its implicit self loop. Item and split tables come from triton_kernels.plan. The scoring
rule (GAT, GATv2, TransformerConv) is the constexpr RULE: `_edge_logits` forms the logits and
values, and one source compiles to a kernel per rule.

Programs assume valid input (validated by the layers / Graph) and never read dead slots.
ACC is the accumulation dtype (float64 for float64 data, else float32); WIDE switches offsets
to int64 when N*H*C or (E+N)*H (E*H*C for C-vector edge values) can exceed 2^31. Scalars that
must stay exact in float64 (the rule's coefficient, 1/(1-p)) arrive as the int64 bits of a
float64.
"""
import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Graph sizes and scalars change from call to call: one compiled kernel serves them all.
_SCALARS = ["num_slots", "num_loops", "coef_bits", "threshold", "scale_bits"]
# The scoring rules (docs/design.md §5): a constexpr argument of the programs, so each rule
# compiles to its own kernel from one source.
GAT = tl.constexpr(0)
GATV2 = tl.constexpr(1)
TRANSFORMER = tl.constexpr(2)


@triton.jit
def _f64(bits):
    return tl.cast(tl.cast(bits, tl.int64), tl.float64, bitcast=True)


@triton.jit
def _keep(seed, idx, threshold, scale):
    """fastgat.dropout: keep iff (philox word0 >> 1) >= threshold; kept weights scaled."""
    r = tl.randint(seed, idx)
    return tl.where((r >> 1).to(tl.int32) >= threshold, scale, 0.0)


@triton.jit
def _dropped(dalpha, alpha, seed, idx, threshold, scale, DROPOUT: tl.constexpr):
    """(keep dalpha, keep alpha) at dropout counters idx: the backward's dropped <dout, value>
    and weight; both unchanged without dropout."""
    if DROPOUT:
        keep = _keep(seed, idx, threshold, scale)
        dalpha *= keep
        alpha *= keep
    return dalpha, alpha


@triton.jit
def _head_channel_tiles(H: tl.constexpr, C: tl.constexpr, H_P2: tl.constexpr,
                        C_P2: tl.constexpr):
    """Head indices, their mask, the (head, channel) offsets within a node's row of h, and
    their mask: H and C padded to powers of two."""
    heads = tl.arange(0, H_P2)
    hmask = heads < H
    hc = heads[:, None] * C + tl.arange(0, C_P2)[None, :]
    hcmask = hmask[:, None] & (tl.arange(0, C_P2) < C)[None, :]
    return heads, hmask, hc, hcmask


@triton.jit
def _wide(x, WIDE: tl.constexpr):
    """An index loaded from an int32 table, as int64 in WIDE mode: products with H or H * C
    (slot * H + head, part * H * C) must not wrap even when the index itself fits int32."""
    if WIDE:
        x = x.to(tl.int64)
    return x


@triton.jit
def _item(item_row, item_ptr, ptr, pid, num_rows, CHUNK: tl.constexpr, WIDE: tl.constexpr):
    """(row, chunk, start, end, split) of work item pid; row == num_rows marks an idle item.
    In WIDE mode all are int64, so the slots k = start + ... are too."""
    row = _wide(tl.load(item_row + pid), WIDE)
    row_start = _wide(tl.load(ptr + row, mask=row < num_rows, other=0), WIDE)
    row_end = _wide(tl.load(ptr + row + 1, mask=row < num_rows, other=0), WIDE)
    chunk = _wide(pid - tl.load(item_ptr + row), WIDE)
    start = row_start + chunk * CHUNK
    end = tl.minimum(row_end, start + CHUNK)
    return row, chunk, start, end, row_end - row_start > CHUNK


@triton.jit
def _part(split_ptr, row, chunk, WIDE: tl.constexpr):
    """The partial-state slot of chunk `chunk` of split row `row` (int64 in WIDE mode)."""
    return _wide(tl.load(split_ptr + row), WIDE) + chunk


@triton.jit(do_not_specialize=["num_dst"] + _SCALARS)
def forward_kernel(h, s, d, att, t, t_loop, ptr, col, seed_ptr, out, lse, ws_m, ws_l, ws_acc,
                   item_row, item_ptr, split_ptr, num_dst, num_slots, num_loops, coef_bits,
                   threshold, scale_bits, RULE: tl.constexpr, H: tl.constexpr, C: tl.constexpr,
                   H_P2: tl.constexpr, C_P2: tl.constexpr, CHUNK: tl.constexpr,
                   BLOCK_E: tl.constexpr, HAS_T: tl.constexpr, HAS_T_LOOP: tl.constexpr,
                   DROPOUT: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr):
    """Online softmax (m, l, acc) over one chunk of destination row i's in-edges, each edge's
    logit and value formed by RULE (_edge_logits)."""
    row, chunk, start, end, split = _item(item_row, item_ptr, ptr, tl.program_id(0), num_dst,
                                          CHUNK, WIDE)
    if row < num_dst:
        # Padded heads see finite zeros, so their (unused) state never turns to NaN.
        coef, scale, seed, heads, hmask, hc, hcmask, d_i, a = _row_setup(
            d, att, row, seed_ptr, coef_bits, scale_bits, RULE, H, C, H_P2, C_P2, DROPOUT, ACC)
        m = tl.full([H_P2], float("-inf"), ACC)
        l = tl.zeros([H_P2], ACC)
        acc = tl.zeros([H_P2, C_P2], ACC)
        if RULE != TRANSFORMER:  # TransformerConv adds no self loops
            if (chunk == 0) & (row < num_loops):
                h_i = tl.load(h + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
                m, _ = _loop_logits(s, t_loop, row, h_i, d_i, a, heads, hmask, hc, hcmask,
                                    coef, RULE, H, C, HAS_T_LOOP, ACC)
                # A loop scored -inf weighs 0, also in a row without other entries.
                weighs = m != float("-inf")
                l = tl.where(weighs, 1.0, 0.0).to(ACC)
                acc = tl.where(weighs[:, None], h_i, 0.0)
                if DROPOUT:
                    acc *= _keep(seed, (num_slots + row) * H + heads, threshold, scale)[:, None]
        for e0 in range(start, end, BLOCK_E):
            k, emask, x, value, _ = _edge_block(h, s, t, col, e0, end, d_i, a, heads, hmask, hc,
                                                hcmask, coef, RULE, H, C, BLOCK_E, HAS_T, WIDE,
                                                ACC)
            x = tl.where(emask[:, None], x, float("-inf"))
            m_new = tl.maximum(m, tl.max(x, 0))
            shift = _finite_or_zero(m_new)  # -inf scores weigh 0, even while all are -inf
            rescale = tl.exp(m - shift)
            p = tl.exp(x - shift[None, :])
            l = l * rescale + tl.sum(p, 0)
            if DROPOUT:
                p *= _keep(seed, k[:, None] * H + heads[None, :], threshold, scale)
            acc = acc * rescale[:, None] + tl.sum(p[:, :, None] * value, 0)
            m = m_new
        if split:
            part = _part(split_ptr, row, chunk, WIDE)
            tl.store(ws_m + part * H + heads, m, mask=hmask)
            tl.store(ws_l + part * H + heads, l, mask=hmask)
            tl.store(ws_acc + part * (H * C) + hc, acc, mask=hcmask)
        else:
            _finish_softmax(out, lse, row, m, l, acc, heads, hmask, hc, hcmask, H, C)


@triton.jit
def _row_setup(d, att, row, seed_ptr, coef_bits, scale_bits, RULE: tl.constexpr,
               H: tl.constexpr, C: tl.constexpr, H_P2: tl.constexpr, C_P2: tl.constexpr,
               DROPOUT: tl.constexpr, ACC: tl.constexpr):
    """What a destination row's program reads once: the rule's coefficient, the dropout scale
    and seed, the head / channel tiles, the row's score input and GATv2's att."""
    heads, hmask, hc, hcmask = _head_channel_tiles(H, C, H_P2, C_P2)
    return (_f64(coef_bits).to(ACC), _f64(scale_bits).to(ACC),
            tl.load(seed_ptr) if DROPOUT else 0, heads, hmask, hc, hcmask,
            _row_input(d, row, heads, hmask, hc, hcmask, RULE, H, C, ACC),
            _att(att, hc, hcmask, RULE, ACC))


@triton.jit
def _edge_block(h, s, t, col, e0, end, d_i, a, heads, hmask, hc, hcmask, coef,
                RULE: tl.constexpr, H: tl.constexpr, C: tl.constexpr, BLOCK_E: tl.constexpr,
                HAS_T: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr):
    """The block of CSR slots k = e0 + [0, BLOCK_E) of a destination row (live while k < end):
    its sources' rows h_j gathered once, then _edge_logits. Returns (k, emask, x, value, aux)."""
    k = e0 + tl.arange(0, BLOCK_E)
    emask = k < end
    j = _wide(tl.load(col + k, mask=emask, other=0), WIDE)
    h_j = tl.load(h + j[:, None, None] * (H * C) + hc[None, :, :],
                  mask=emask[:, None, None] & hcmask[None, :, :], other=0.0).to(ACC)
    x, value, aux = _edge_logits(s, t, k, j, emask, h_j, d_i, a, heads, hmask, hc, hcmask, coef,
                                 RULE, H, C, HAS_T, ACC)
    return k, emask, x, value, aux


@triton.jit
def _row_input(d, row, heads, hmask, hc, hcmask, RULE: tl.constexpr, H: tl.constexpr,
               C: tl.constexpr, ACC: tl.constexpr):
    """Destination row i's score input, read once per program: d_i (H) for GAT, the C-vectors
    xr_i (GATv2) or q_i (TransformerConv) as (H, C)."""
    if RULE == GAT:
        d_i = tl.load(d + row * H + heads, mask=hmask, other=0.0).to(ACC)
    else:
        d_i = tl.load(d + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
    return d_i


@triton.jit
def _att(att, hc, hcmask, RULE: tl.constexpr, ACC: tl.constexpr):
    """GATv2's attention vectors (H, C); a zero tile for the rules without them."""
    if RULE == GATV2:
        a = tl.load(att + hc, mask=hcmask, other=0.0).to(ACC)
    else:
        a = tl.zeros(hc.shape, ACC)
    return a


@triton.jit
def _leaky(u, slope):
    return tl.where(u > 0, u, u * slope)


@triton.jit
def _edge_logits(s, t, k, j, emask, h_j, d_i, a, heads, hmask, hc, hcmask, coef,
                 RULE: tl.constexpr, H: tl.constexpr, C: tl.constexpr, HAS_T: tl.constexpr,
                 ACC: tl.constexpr):
    """For a block of CSR slots k (live where emask) of destination row i with sources j and
    their gathered rows h_j (BLOCK_E, H, C): (x, value, aux), x the logit (BLOCK_E, H) before
    the softmax, value the vector the row sums (BLOCK_E, H, C), aux what the backward
    differentiates through (docs/design.md §2, §10, §11):
      GAT          x = LeakyReLU(z), z = s_j + d_i + t_k,        value h_j,       aux z
      GATv2        x = <att, LeakyReLU(u)>, u = xl_j + xr_i + e_k,  value xl_j,   aux u
      Transformer  x = coef <q_i, k_j + e_k>,                    value v_j + e_k, aux k_j + e_k
    with coef the LeakyReLU slope (GAT, GATv2) or the logit scale (TransformerConv)."""
    ehmask = emask[:, None] & hmask[None, :]
    ehcmask = emask[:, None, None] & hcmask[None, :, :]
    value = h_j
    if RULE == GAT:
        aux = tl.load(s + j[:, None] * H + heads[None, :], mask=ehmask, other=0.0).to(ACC)
        aux += d_i[None, :]
        if HAS_T:
            aux += tl.load(t + k[:, None] * H + heads[None, :], mask=ehmask, other=0.0).to(ACC)
        x = _leaky(aux, coef)
    elif RULE == GATV2:
        aux = h_j + d_i[None, :, :]
        if HAS_T:
            aux += tl.load(t + k[:, None, None] * (H * C) + hc[None, :, :], mask=ehcmask,
                           other=0.0).to(ACC)
        x = tl.sum(a[None, :, :] * _leaky(aux, coef), 2)
    else:
        aux = tl.load(s + j[:, None, None] * (H * C) + hc[None, :, :], mask=ehcmask,
                      other=0.0).to(ACC)
        if HAS_T:
            e_k = tl.load(t + k[:, None, None] * (H * C) + hc[None, :, :], mask=ehcmask,
                          other=0.0).to(ACC)
            aux += e_k
            value = h_j + e_k
        x = tl.sum(d_i[None, :, :] * aux, 2) * coef
    return x, value, aux


@triton.jit
def _loop_logits(s, t_loop, row, h_i, d_i, a, heads, hmask, hc, hcmask, coef,
                 RULE: tl.constexpr, H: tl.constexpr, C: tl.constexpr,
                 HAS_T_LOOP: tl.constexpr, ACC: tl.constexpr):
    """(x, aux) of node i's implicit self loop (GAT, GATv2; its value is h_i): _edge_logits
    for the one edge i -> i, scored with t_loop[i]."""
    if RULE == GAT:
        aux = tl.load(s + row * H + heads, mask=hmask, other=0.0).to(ACC) + d_i
        if HAS_T_LOOP:
            aux += tl.load(t_loop + row * H + heads, mask=hmask, other=0.0).to(ACC)
        x = _leaky(aux, coef)
    else:
        aux = h_i + d_i
        if HAS_T_LOOP:
            aux += tl.load(t_loop + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
        x = tl.sum(a * _leaky(aux, coef), 1)
    return x, aux


@triton.jit
def _finite_or_zero(m):
    """The running max as a shift for exp: 0 while no finite score was seen, so exp(-inf - m)
    is 0 instead of NaN (the state it rescales is then empty: l = 0, acc = 0)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _finish_softmax(out, lse, row, m, l, acc, heads, hmask, hc, hcmask, H: tl.constexpr,
                    C: tl.constexpr):
    """out = acc / l and lse = m + log l; a row without in-edges (l = 0, acc = 0) gets out = 0
    and lse = -inf."""
    l_safe = tl.where(l > 0, l, 1.0)
    tl.store(lse + row * H + heads, tl.where(l > 0, m + tl.log(l_safe), m), mask=hmask)
    o = acc / l_safe[:, None]
    tl.store(out + row * (H * C) + hc, o.to(out.dtype.element_ty), mask=hcmask)


@triton.jit(do_not_specialize=["num_dst"])
def merge_softmax_kernel(ws_m, ws_l, ws_acc, split_rows, split_ptr, out, lse, num_dst,
                         H: tl.constexpr, C: tl.constexpr, H_P2: tl.constexpr,
                         C_P2: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr):
    """Combine the partial (m, l, acc) of a split row in chunk order."""
    row = _wide(tl.load(split_rows + tl.program_id(0)), WIDE)
    if row < num_dst:
        heads, hmask, hc, hcmask = _head_channel_tiles(H, C, H_P2, C_P2)
        m = tl.full([H_P2], float("-inf"), ACC)
        l = tl.zeros([H_P2], ACC)
        acc = tl.zeros([H_P2, C_P2], ACC)
        for part in range(_wide(tl.load(split_ptr + row), WIDE),
                          _wide(tl.load(split_ptr + row + 1), WIDE)):
            # m_p is -inf only for a chunk of -inf scores, whose l and acc are 0.
            m_p = tl.load(ws_m + part * H + heads, mask=hmask, other=0.0)
            m_new = tl.maximum(m, m_p)
            shift = _finite_or_zero(m_new)
            a = tl.exp(m - shift)
            b = tl.exp(m_p - shift)
            l = l * a + tl.load(ws_l + part * H + heads, mask=hmask, other=0.0) * b
            acc_p = tl.load(ws_acc + part * (H * C) + hc, mask=hcmask, other=0.0)
            acc = acc * a[:, None] + acc_p * b[:, None]
            m = m_new
        _finish_softmax(out, lse, row, m, l, acc, heads, hmask, hc, hcmask, H, C)


@triton.jit
def _alpha(x, lse):
    """alpha = exp(x - lse), recomputed; a row of -inf scores only has lse = -inf and weighs
    nothing: read as +inf, its alpha is 0 instead of exp(-inf + inf) = NaN."""
    return tl.exp(x - tl.where(lse == float("-inf"), float("inf"), lse))


@triton.jit
def _dz(z, alpha, dalpha, D, slope):
    """dz = alpha (dalpha - D) LeakyReLU'(z), branching on the pre-activation z."""
    dx = alpha * (dalpha - D)
    return tl.where(z > 0, dx, dx * slope)


@triton.jit(do_not_specialize=["num_rows"])
def row_dot_kernel(dout, out, D, num_rows, H: tl.constexpr, C: tl.constexpr,
                   H_P2: tl.constexpr, C_P2: tl.constexpr, ROWS: tl.constexpr,
                   WIDE: tl.constexpr, ACC: tl.constexpr):
    """D_i = <dout_i, out_i> per head for ROWS destination rows: the dense part of dz."""
    rows = _wide(tl.program_id(0), WIDE) * ROWS + tl.arange(0, ROWS)
    rmask = rows < num_rows
    heads, hmask, hc, hcmask = _head_channel_tiles(H, C, H_P2, C_P2)
    offs = rows[:, None, None] * (H * C) + hc[None, :, :]
    mask = rmask[:, None, None] & hcmask[None, :, :]
    prod = tl.load(dout + offs, mask=mask, other=0.0).to(ACC) * \
        tl.load(out + offs, mask=mask, other=0.0).to(ACC)
    tl.store(D + rows[:, None] * H + heads[None, :], tl.sum(prod, 2),
             mask=rmask[:, None] & hmask[None, :])


@triton.jit(do_not_specialize=["num_src"] + _SCALARS)
def backward_csc_kernel(dout, lse, h, s, d, t, t_loop, ptr, csc_row, csc_eid, seed_ptr, D_buf,
                        dz, dz_loop, dh, ds, ws_ds, ws_dh, item_row, item_ptr, split_ptr,
                        num_src, num_slots, num_loops, coef_bits, threshold, scale_bits,
                        H: tl.constexpr, C: tl.constexpr, H_P2: tl.constexpr,
                        C_P2: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr,
                        HAS_T: tl.constexpr, HAS_T_LOOP: tl.constexpr, DROPOUT: tl.constexpr,
                        WIDE: tl.constexpr, ACC: tl.constexpr):
    """Per source chunk, the backward's one gather (of dout_i): dz_ij = alpha_ij (keep_ij
    <dout_i, h_j> - D_i) LeakyReLU'(z_ij) stored at the edge's CSR slot csc_eid (row j's self
    loop: dz_loop[j]), ds_j = sum_i dz_ij and dh_j = sum_i alpha_ij keep_ij dout_i over j's
    out-edges (t and the dropout slot addressed by the CSR slot too)."""
    row, chunk, start, end, split = _item(item_row, item_ptr, ptr, tl.program_id(0), num_src,
                                          CHUNK, WIDE)
    if row < num_src:
        slope = _f64(coef_bits).to(ACC)
        scale = _f64(scale_bits).to(ACC)
        seed = tl.load(seed_ptr) if DROPOUT else 0
        heads, hmask, hc, hcmask = _head_channel_tiles(H, C, H_P2, C_P2)
        h_j = tl.load(h + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
        s_j = tl.load(s + row * H + heads, mask=hmask, other=0.0).to(ACC)
        ds_j = tl.zeros([H_P2], ACC)
        dh_j = tl.zeros([H_P2, C_P2], ACC)
        if (chunk == 0) & (row < num_loops):
            z = s_j + tl.load(d + row * H + heads, mask=hmask, other=0.0).to(ACC)
            if HAS_T_LOOP:
                z += tl.load(t_loop + row * H + heads, mask=hmask, other=0.0).to(ACC)
            lse_i = tl.load(lse + row * H + heads, mask=hmask, other=0.0).to(ACC)
            alpha = _alpha(tl.where(z > 0, z, z * slope), lse_i)
            dout_i = tl.load(dout + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
            dalpha = tl.sum(dout_i * h_j, 1)
            dalpha, weight = _dropped(dalpha, alpha, seed, (num_slots + row) * H + heads,
                                     threshold, scale, DROPOUT)
            D_i = tl.load(D_buf + row * H + heads, mask=hmask, other=0.0)
            ds_j = _dz(z, alpha, dalpha, D_i, slope)
            tl.store(dz_loop + row * H + heads, ds_j, mask=hmask)
            dh_j = weight[:, None] * dout_i
        for e0 in range(start, end, BLOCK_E):
            q = e0 + tl.arange(0, BLOCK_E)
            emask = q < end
            ehmask = emask[:, None] & hmask[None, :]
            i = tl.load(csc_row + q, mask=emask, other=0)
            k = tl.load(csc_eid + q, mask=emask, other=0)
            if WIDE:
                i = i.to(tl.int64)
                k = k.to(tl.int64)
            eh_i = i[:, None] * H + heads[None, :]
            z = s_j[None, :] + tl.load(d + eh_i, mask=ehmask, other=0.0).to(ACC)
            if HAS_T:
                z += tl.load(t + k[:, None] * H + heads[None, :], mask=ehmask, other=0.0).to(ACC)
            lse_i = tl.load(lse + eh_i, mask=ehmask, other=0.0).to(ACC)
            alpha = tl.where(ehmask, _alpha(tl.where(z > 0, z, z * slope), lse_i), 0.0)
            dout_i = tl.load(dout + i[:, None, None] * (H * C) + hc[None, :, :],
                             mask=emask[:, None, None] & hcmask[None, :, :], other=0.0).to(ACC)
            dalpha = tl.sum(dout_i * h_j[None, :, :], 2)
            dalpha, weight = _dropped(dalpha, alpha, seed, k[:, None] * H + heads[None, :],
                                     threshold, scale, DROPOUT)
            D_i = tl.load(D_buf + eh_i, mask=ehmask, other=0.0)
            dz_e = _dz(z, alpha, dalpha, D_i, slope)
            tl.store(dz + k[:, None] * H + heads[None, :], dz_e, mask=ehmask)
            ds_j += tl.sum(dz_e, 0)
            dh_j += tl.sum(weight[:, :, None] * dout_i, 0)
        if split:
            part = _part(split_ptr, row, chunk, WIDE)
            tl.store(ws_ds + part * H + heads, ds_j, mask=hmask)
            tl.store(ws_dh + part * (H * C) + hc, dh_j, mask=hcmask)
        else:
            tl.store(ds + row * H + heads, ds_j.to(ds.dtype.element_ty), mask=hmask)
            tl.store(dh + row * (H * C) + hc, dh_j.to(dh.dtype.element_ty), mask=hcmask)


@triton.jit(do_not_specialize=["num_dst", "num_loops"])
def segment_sum_kernel(dz, dz_loop, dt, dt_loop, dd, ws_dd, ptr, item_row, item_ptr, split_ptr,
                       num_dst, num_loops, H: tl.constexpr, H_P2: tl.constexpr,
                       CHUNK: tl.constexpr, COPY_T: tl.constexpr, COPY_T_LOOP: tl.constexpr,
                       WIDE: tl.constexpr, ACC: tl.constexpr):
    """Per destination chunk: dd_i = sum_j dz_ij over its CSR slots (chunk 0 adds the self
    loop's), reading the dz the CSC pass stored; with COPY_T(_LOOP) also dt = dz rounded to
    dt's dtype (dz is kept in ACC, since dd nearly cancels)."""
    row, chunk, start, end, split = _item(item_row, item_ptr, ptr, tl.program_id(0), num_dst,
                                          CHUNK, WIDE)
    if row < num_dst:
        heads = tl.arange(0, H_P2)
        hmask = heads < H
        dd_i = tl.zeros([H_P2], ACC)
        if (chunk == 0) & (row < num_loops):
            dd_i = tl.load(dz_loop + row * H + heads, mask=hmask, other=0.0)
            if COPY_T_LOOP:
                tl.store(dt_loop + row * H + heads, dd_i.to(dt_loop.dtype.element_ty),
                         mask=hmask)
        k = start + tl.arange(0, CHUNK)
        ehmask = (k < end)[:, None] & hmask[None, :]
        dz_k = tl.load(dz + k[:, None] * H + heads[None, :], mask=ehmask, other=0.0)
        dd_i += tl.sum(dz_k, 0)
        if COPY_T:
            tl.store(dt + k[:, None] * H + heads[None, :], dz_k.to(dt.dtype.element_ty),
                     mask=ehmask)
        if split:
            tl.store(ws_dd + _part(split_ptr, row, chunk, WIDE) * H + heads, dd_i, mask=hmask)
        else:
            tl.store(dd + row * H + heads, dd_i.to(dd.dtype.element_ty), mask=hmask)


@triton.jit(do_not_specialize=["num_rows"])
def merge_sum_kernel(ws_a, out_a, ws_b, out_b, split_rows, split_ptr, num_rows,
                     WIDTH_A: tl.constexpr, WIDTH_B: tl.constexpr, BLOCK_A: tl.constexpr,
                     BLOCK_B: tl.constexpr, HAS_B: tl.constexpr, WIDE: tl.constexpr,
                     ACC: tl.constexpr):
    """Sum a split row's partial gradients in chunk order: (dd) or (ds, dh)."""
    row = _wide(tl.load(split_rows + tl.program_id(0)), WIDE)
    if row < num_rows:
        offs_a = tl.arange(0, BLOCK_A)
        offs_b = tl.arange(0, BLOCK_B)
        sum_a = tl.zeros([BLOCK_A], ACC)
        sum_b = tl.zeros([BLOCK_B], ACC)
        for part in range(_wide(tl.load(split_ptr + row), WIDE),
                          _wide(tl.load(split_ptr + row + 1), WIDE)):
            sum_a += tl.load(ws_a + part * WIDTH_A + offs_a, mask=offs_a < WIDTH_A, other=0.0)
            if HAS_B:
                sum_b += tl.load(ws_b + part * WIDTH_B + offs_b, mask=offs_b < WIDTH_B,
                                 other=0.0)
        tl.store(out_a + row * WIDTH_A + offs_a, sum_a.to(out_a.dtype.element_ty),
                 mask=offs_a < WIDTH_A)
        if HAS_B:
            tl.store(out_b + row * WIDTH_B + offs_b, sum_b.to(out_b.dtype.element_ty),
                     mask=offs_b < WIDTH_B)


@triton.jit
def _gatv2_du(dz, a, u, slope):
    """(du, LeakyReLU(u)): du = dz att LeakyReLU'(u), branching on u (docs/design.md §10)."""
    da = dz * a
    return tl.where(u > 0, da, da * slope), _leaky(u, slope)


@triton.jit(do_not_specialize=["num_dst"] + _SCALARS)
def backward_rows_kernel(dout, lse, D_buf, h, s, d, att, t, t_loop, ptr, col, seed_ptr, dz,
                         dz_loop, w, w_loop, dd, ws_dd, datt_parts, dt, dt_loop, item_row,
                         item_ptr, split_ptr, num_dst, num_slots, num_loops, coef_bits,
                         threshold, scale_bits, RULE: tl.constexpr, H: tl.constexpr,
                         C: tl.constexpr, H_P2: tl.constexpr, C_P2: tl.constexpr,
                         CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, HAS_T: tl.constexpr,
                         HAS_T_LOOP: tl.constexpr, DROPOUT: tl.constexpr, WIDE: tl.constexpr,
                         ACC: tl.constexpr):
    """The CSR pass of GATv2 and TransformerConv, per destination chunk (the gather of the
    sources' rows, as in the forward): recompute each logit and alpha, store
    dz_ij = alpha (keep <dout_i, value_ij> - D_i) (times the scale for TransformerConv) and
    w_ij = keep alpha at the edge's CSR slot (self loop: dz_loop[i], w_loop[i]), write dt = de,
    and sum the destination's gradient dd_i: GATv2 dxr_i = sum_j du_ij, TransformerConv
    dq_i = sum_j dz_ij (k_j + e_ij). GATv2 also stores this item's share of datt =
    sum dz LeakyReLU(u) at datt_parts[item], summed in item order by the launcher."""
    row, chunk, start, end, split = _item(item_row, item_ptr, ptr, tl.program_id(0), num_dst,
                                          CHUNK, WIDE)
    if row < num_dst:
        coef, scale, seed, heads, hmask, hc, hcmask, d_i, a = _row_setup(
            d, att, row, seed_ptr, coef_bits, scale_bits, RULE, H, C, H_P2, C_P2, DROPOUT, ACC)
        dout_i = tl.load(dout + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
        lse_i = tl.load(lse + row * H + heads, mask=hmask, other=0.0).to(ACC)
        D_i = tl.load(D_buf + row * H + heads, mask=hmask, other=0.0)
        dd_i = tl.zeros([H_P2, C_P2], ACC)
        datt_i = tl.zeros([H_P2, C_P2], ACC)
        if RULE == GATV2:
            if (chunk == 0) & (row < num_loops):
                h_i = tl.load(h + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
                x, u = _loop_logits(s, t_loop, row, h_i, d_i, a, heads, hmask, hc, hcmask,
                                    coef, RULE, H, C, HAS_T_LOOP, ACC)
                alpha = _alpha(x, lse_i)
                dalpha = tl.sum(dout_i * h_i, 1)
                dalpha, weight = _dropped(dalpha, alpha, seed, (num_slots + row) * H + heads,
                                         threshold, scale, DROPOUT)
                dz_i = alpha * (dalpha - D_i)
                tl.store(dz_loop + row * H + heads, dz_i, mask=hmask)
                tl.store(w_loop + row * H + heads, weight, mask=hmask)
                dd_i, act = _gatv2_du(dz_i[:, None], a, u, coef)
                datt_i = dz_i[:, None] * act
                if HAS_T_LOOP:
                    tl.store(dt_loop + row * (H * C) + hc, dd_i.to(dt_loop.dtype.element_ty),
                             mask=hcmask)
        for e0 in range(start, end, BLOCK_E):
            k, emask, x, value, aux = _edge_block(h, s, t, col, e0, end, d_i, a, heads, hmask,
                                                  hc, hcmask, coef, RULE, H, C, BLOCK_E, HAS_T,
                                                  WIDE, ACC)
            ehmask = emask[:, None] & hmask[None, :]
            ehcmask = emask[:, None, None] & hcmask[None, :, :]
            alpha = tl.where(ehmask, _alpha(x, lse_i[None, :]), 0.0)
            dalpha = tl.sum(dout_i[None, :, :] * value, 2)
            dalpha, weight = _dropped(dalpha, alpha, seed, k[:, None] * H + heads[None, :],
                                     threshold, scale, DROPOUT)
            dz_e = alpha * (dalpha - D_i[None, :])
            if RULE == GATV2:
                de, act = _gatv2_du(dz_e[:, :, None], a[None, :, :], aux, coef)
                dd_i += tl.sum(de, 0)
                datt_i += tl.sum(dz_e[:, :, None] * act, 0)
            else:
                dz_e = dz_e * coef
                dd_i += tl.sum(dz_e[:, :, None] * aux, 0)
                de = dz_e[:, :, None] * d_i[None, :, :] + weight[:, :, None] * dout_i[None, :, :]
            tl.store(dz + k[:, None] * H + heads[None, :], dz_e, mask=ehmask)
            tl.store(w + k[:, None] * H + heads[None, :], weight, mask=ehmask)
            if HAS_T:
                tl.store(dt + k[:, None, None] * (H * C) + hc[None, :, :],
                         de.to(dt.dtype.element_ty), mask=ehcmask)
        if split:
            tl.store(ws_dd + _part(split_ptr, row, chunk, WIDE) * (H * C) + hc, dd_i,
                     mask=hcmask)
        else:
            tl.store(dd + row * (H * C) + hc, dd_i.to(dd.dtype.element_ty), mask=hcmask)
        if RULE == GATV2:
            tl.store(datt_parts + _wide(tl.program_id(0), WIDE) * (H * C) + hc, datt_i,
                     mask=hcmask)


@triton.jit(do_not_specialize=["num_src", "num_loops", "coef_bits"])
def backward_cols_kernel(dout, h, d, att, t, t_loop, ptr, csc_row, csc_eid, dz, dz_loop, w,
                         w_loop, dh_a, dh_b, ws_a, ws_b, item_row, item_ptr, split_ptr, num_src,
                         num_loops, coef_bits, RULE: tl.constexpr, H: tl.constexpr,
                         C: tl.constexpr, H_P2: tl.constexpr, C_P2: tl.constexpr,
                         CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, HAS_T: tl.constexpr,
                         HAS_T_LOOP: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr):
    """The CSC pass of GATv2 and TransformerConv, per source chunk, from the dz and w the CSR
    pass stored per slot (no logit is recomputed): GATv2 dh_a = dxl_j = sum_i (w_ij dout_i +
    du_ij), du recomputed from u = xl_j + xr_i + e_ij (chunk 0 adds j's self loop);
    TransformerConv dh_a = dk_j = sum_i dz_ij q_i and dh_b = dv_j = sum_i w_ij dout_i."""
    row, chunk, start, end, split = _item(item_row, item_ptr, ptr, tl.program_id(0), num_src,
                                          CHUNK, WIDE)
    if row < num_src:
        slope = _f64(coef_bits).to(ACC)
        heads, hmask, hc, hcmask = _head_channel_tiles(H, C, H_P2, C_P2)
        a = _att(att, hc, hcmask, RULE, ACC)
        sum_a = tl.zeros([H_P2, C_P2], ACC)
        sum_b = tl.zeros([H_P2, C_P2], ACC)
        if RULE == GATV2:
            h_j = tl.load(h + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
            if (chunk == 0) & (row < num_loops):
                u = h_j + tl.load(d + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
                if HAS_T_LOOP:
                    u += tl.load(t_loop + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
                dz_j = tl.load(dz_loop + row * H + heads, mask=hmask, other=0.0)
                w_j = tl.load(w_loop + row * H + heads, mask=hmask, other=0.0)
                du, _ = _gatv2_du(dz_j[:, None], a, u, slope)
                dout_j = tl.load(dout + row * (H * C) + hc, mask=hcmask, other=0.0).to(ACC)
                sum_a = w_j[:, None] * dout_j + du
        for e0 in range(start, end, BLOCK_E):
            q = e0 + tl.arange(0, BLOCK_E)
            emask = q < end
            ehmask = emask[:, None] & hmask[None, :]
            ehcmask = emask[:, None, None] & hcmask[None, :, :]
            i = _wide(tl.load(csc_row + q, mask=emask, other=0), WIDE)
            k = _wide(tl.load(csc_eid + q, mask=emask, other=0), WIDE)
            ihc = i[:, None, None] * (H * C) + hc[None, :, :]
            dout_i = tl.load(dout + ihc, mask=ehcmask, other=0.0).to(ACC)
            d_i = tl.load(d + ihc, mask=ehcmask, other=0.0).to(ACC)
            dz_e = tl.load(dz + k[:, None] * H + heads[None, :], mask=ehmask, other=0.0)
            w_e = tl.load(w + k[:, None] * H + heads[None, :], mask=ehmask, other=0.0)
            if RULE == GATV2:
                u = h_j[None, :, :] + d_i
                if HAS_T:
                    u += tl.load(t + k[:, None, None] * (H * C) + hc[None, :, :], mask=ehcmask,
                                 other=0.0).to(ACC)
                du, _ = _gatv2_du(dz_e[:, :, None], a[None, :, :], u, slope)
                sum_a += tl.sum(w_e[:, :, None] * dout_i + du, 0)
            else:
                sum_a += tl.sum(dz_e[:, :, None] * d_i, 0)
                sum_b += tl.sum(w_e[:, :, None] * dout_i, 0)
        if split:
            part = _part(split_ptr, row, chunk, WIDE)
            tl.store(ws_a + part * (H * C) + hc, sum_a, mask=hcmask)
            if RULE == TRANSFORMER:
                tl.store(ws_b + part * (H * C) + hc, sum_b, mask=hcmask)
        else:
            tl.store(dh_a + row * (H * C) + hc, sum_a.to(dh_a.dtype.element_ty), mask=hcmask)
            if RULE == TRANSFORMER:
                tl.store(dh_b + row * (H * C) + hc, sum_b.to(dh_b.dtype.element_ty),
                         mask=hcmask)


@triton.jit(do_not_specialize=["num_rows", "numel", "width"])
def zero_dead_slots_kernel(grad, ptr, num_rows, numel, width, BLOCK: tl.constexpr):
    """Zero the rows of a per-slot gradient past ptr[num_rows] (dead slots, docs/design.md §2):
    the start is read here, on the device, so the launch needs no host sync."""
    first = tl.load(ptr + num_rows).to(tl.int64) * width
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(grad + k, tl.zeros([BLOCK], grad.dtype.element_ty), mask=(k >= first) & (k < numel))
