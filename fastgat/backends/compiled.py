"""backend='cpu' and backend='cuda': the fused C++/CUDA kernels of fastgat._C.

Each rule is one op pair, `torch.ops.fastgat.fused_forward` / `fused_backward` (GAT),
`gatv2_fused_forward` / `_backward` and `transformer_forward` / `transformer_backward`; the
dispatcher picks the CPU or CUDA kernel from the tensors' device. The CUDA kernels also get a
graph's long segments (fastgat/launch_plan.py) to size their split buffers; the CPU kernels
split nothing and are not given them.
"""
import torch

from .. import launch_plan


def _hubs(ptr):
    return launch_plan.hubs(ptr) if ptr.is_cuda else None


def gat_forward(h, s, d, t, t_loop, rowptr, col, num_loops, negative_slope, dropout, seed):
    return torch.ops.fastgat.fused_forward(h, s, d, t, t_loop, rowptr, col, num_loops,
                                           negative_slope, dropout, seed, _hubs(rowptr))


def gat_backward(dout, out, lse, h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid,
                 num_loops, negative_slope, dropout, seed):
    return torch.ops.fastgat.fused_backward(dout, out, lse, h, s, d, t, t_loop, rowptr, col,
                                            colptr, csc_row, csc_eid, num_loops, negative_slope,
                                            dropout, seed, _hubs(rowptr), _hubs(colptr))


def gatv2_forward(xl, xr, att, e, e_loop, rowptr, col, num_loops, negative_slope, dropout, seed):
    return torch.ops.fastgat.gatv2_fused_forward(xl, xr, att, e, e_loop, rowptr, col, num_loops,
                                                 negative_slope, dropout, seed, _hubs(rowptr))


def gatv2_backward(dout, out, lse, xl, xr, att, e, e_loop, rowptr, col, colptr, csc_row,
                   csc_eid, num_loops, negative_slope, dropout, seed):
    return torch.ops.fastgat.gatv2_fused_backward(dout, out, lse, xl, xr, att, e, e_loop, rowptr,
                                                  col, colptr, csc_row, csc_eid, num_loops,
                                                  negative_slope, dropout, seed)


def transformer_forward(q, k, v, e, rowptr, col, scale, dropout, seed):
    return torch.ops.fastgat.transformer_forward(q, k, v, e, rowptr, col, scale, dropout, seed,
                                                 _hubs(rowptr))


def transformer_backward(dout, out, lse, q, k, v, e, rowptr, col, colptr, csc_row, csc_eid,
                         scale, dropout, seed):
    return torch.ops.fastgat.transformer_backward(dout, out, lse, q, k, v, e, rowptr, col,
                                                  colptr, csc_row, csc_eid, scale, dropout, seed,
                                                  _hubs(rowptr), _hubs(colptr))
