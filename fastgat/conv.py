"""FastGATConv: torch_geometric.nn.GATConv with the edge stage fused (docs/design.md §1).

It subclasses GATConv, so the constructor, parameters, initialisation, state_dict keys and
repr are PyG's own; only `forward` differs, and it falls back to PyG's when explain mode or
message-passing hooks need the per-edge messages that the fused path never materialises.
"""
import contextlib
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import GATConv, MessagePassing

from .attention_layer import (AttentionLayer, check_constructor, check_features, count,
                              in_channels_of)
from .backends import resolve
from .graph import Graph
from .node_scores import node_scores
from .ops import gat_attention


class FastGATConv(AttentionLayer, GATConv):
    """Drop-in for `torch_geometric.nn.GATConv` (same arguments, parameters and outputs),
    plus `backend`: 'auto' (fused kernels where available), 'torch', 'triton', 'cuda', 'cpu'.
    `edge_index` may also be a prepared `fastgat.Graph`, validated once when it was built."""

    # PyG stores a class's own `propagate` as the fallback explain mode and decomposed layers
    # switch to; inherited, it would be GATConv's generated one, which skips explain masks.
    propagate = MessagePassing.propagate
    edge_updater = MessagePassing.edge_updater

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int,
                 heads: int = 1, concat: bool = True, negative_slope: float = 0.2,
                 dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: Optional[int] = None, fill_value: Union[float, Tensor, str] = "mean",
                 bias: bool = True, residual: bool = False, backend: str = "auto", **kwargs):
        check_constructor(dropout, fill_value, backend)
        super().__init__(in_channels_of(in_channels), count(out_channels, "out_channels"),
                         heads=count(heads, "heads"), concat=concat,
                         negative_slope=negative_slope, dropout=dropout,
                         add_self_loops=add_self_loops, edge_dim=edge_dim,
                         fill_value=fill_value, bias=bias, residual=residual, **kwargs)
        self.backend = backend

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None, size=None,
                return_attention_weights: Optional[bool] = None):
        if self._needs_messages(edge_index):
            return super().forward(x, edge_index, edge_attr, size, return_attention_weights)
        x_src, x_dst, res = self._transform(x)
        edge_index, graph = self._graph(edge_index, x_src, x_dst, size)
        num_loops = graph.num_loops

        backend = resolve(self.backend, x_src.device.type)
        dtype = score_dtype(x_src.dtype, self.att_src.dtype)
        s, d = self._node_scores(x_src, x_dst, graph.num_dst, dtype, backend)
        t_edges, t_loop = self._edge_scores(edge_attr, graph, dtype)
        t = t_edges.index_select(0, graph.perm) if t_edges is not None else None

        p, seed = self._dropout(x_src.device)
        drop_all = p >= 1.0  # as F.dropout(p=1): every weight zeroed, no mask to draw
        # The CSC serves only the backward: not built for a call no backward can follow.
        backward = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (x_src, s, d, t, t_loop))
        out, _ = gat_attention(x_src.contiguous(), s.contiguous(), d.contiguous(), t, t_loop,
                               *graph.op_args(csc=backward), num_loops,
                               float(self.negative_slope), 0.0 if drop_all else p, seed, backend)
        out = self._combine_heads(out, res, drop_all)
        if return_attention_weights:
            return out, self._gat_attention_weights(edge_index, graph, s, d, t_edges, t_loop,
                                                      seed, p)
        return out

    # -- the steps of forward, each mirroring GATConv ------------------------------------
    def _transform(self, x):
        """x -> (x_src, x_dst or None, residual or None), exactly as GATConv.forward."""
        H, C = self.heads, self.out_channels
        res = None
        if isinstance(x, Tensor):
            check_features(x, "x")
            if self.res is not None:
                res = self.res(x)
            if self.lin is not None:
                x_src = x_dst = self.lin(x).view(-1, H, C)
            else:
                x_src = self.lin_src(x).view(-1, H, C)
                x_dst = self.lin_dst(x).view(-1, H, C)
            return x_src, x_dst, res
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise TypeError("x must be a Tensor or a pair (x_src, x_dst or None)")
        x_src, x_dst = x
        check_features(x_src, "x_src")
        if x_dst is not None:
            check_features(x_dst, "x_dst")
            if x_dst.device != x_src.device:
                raise ValueError(f"x_src is on {x_src.device} but x_dst on {x_dst.device}")
            if self.res is not None:
                res = self.res(x_dst)
        lin_src = self.lin if self.lin is not None else self.lin_src
        lin_dst = self.lin if self.lin is not None else self.lin_dst
        x_src = lin_src(x_src).view(-1, H, C)
        if x_dst is not None:
            x_dst = lin_dst(x_dst).view(-1, H, C)
        return x_src, x_dst, res

    def _node_scores(self, x_src, x_dst, num_dst, dtype, backend) -> Tuple[Tensor, Tensor]:
        """s = <h_src, att_src> and d = <h_dst, att_dst> per head (docs/design.md §2), one op
        over h (fastgat/node_scores.py): no bmm, no N x H x C temporary. Formed in `dtype`
        (score_dtype)."""
        def rows(x):  # the op reads dense rows: a custom `lin` may give a strided view
            return x.to(dtype).contiguous()

        if x_dst is x_src:
            att = torch.cat([self.att_src, self.att_dst]).to(dtype)
            return node_scores(rows(x_src), att, backend).unbind(0)
        s = node_scores(rows(x_src), self.att_src.to(dtype), backend)[0]
        d = (node_scores(rows(x_dst), self.att_dst.to(dtype), backend)[0]
             if x_dst is not None else s.new_zeros(num_dst, self.heads))
        return s, d

    def _edge_scores(self, edge_attr, graph: Graph, dtype):
        """Per input edge and per self loop, the score t = <lin_edge(e), att_edge> (E x H), in
        `dtype` (score_dtype).

        The E x H x C projection is never formed: att_edge is folded into lin_edge's weight.
        Self-loop attributes are reduced from the raw attributes first (fill_value), since
        max/min/mul do not commute with the linear map."""
        if edge_attr is None or self.lin_edge is None or (graph.num_edges == 0
                                                          and graph.num_loops == 0):
            return None, None  # as GATConv, which never reads lin_edge without edges
        edge_attr = self._edge_attr(edge_attr, graph)
        weight = self.lin_edge.weight.view(self.heads, self.out_channels, -1)
        w_t = (weight * self.att_edge.view(self.heads, self.out_channels, 1)).sum(dim=1)
        t_edges = scores_matmul(edge_attr, w_t.t(), dtype)
        if graph.num_loops == 0:
            return t_edges, None
        return t_edges, scores_matmul(self._loop_attr(edge_attr, graph), w_t.t(), dtype)

    def _gat_attention_weights(self, edge_index, graph: Graph, s, d, t_edges, t_loop, seed, p):
        """GATConv's returned attention weights: LeakyReLU(s_j + d_i + t_ij), softmaxed."""
        def logits(src, dst, kept):
            scores = s[src] + d[dst]
            if t_edges is not None:
                loop_scores = t_loop if t_loop is not None else t_edges.new_zeros(0, self.heads)
                scores = scores + torch.cat([t_edges[kept], loop_scores])
            return torch.nn.functional.leaky_relu(scores, self.negative_slope)
        return self._attention_weights(edge_index, graph, logits, seed, p)


def score_dtype(h_dtype: torch.dtype, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the op's scores s, d, t: float32 where autocast gave half-precision h beside
    float32 attention parameters (as GATConv, whose float32 att promotes its logits), else
    h's (docs/design.md §4)."""
    if h_dtype in (torch.bfloat16, torch.float16) and param_dtype == torch.float32:
        return torch.float32
    return h_dtype


def scores_matmul(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """a @ b in `dtype`. Autocast would round the product of float32 operands to half
    precision, so where it is on, the product runs with it off."""
    on = torch.is_autocast_enabled(a.device.type)
    with torch.autocast(a.device.type, enabled=False) if on else contextlib.nullcontext():
        return a.to(dtype) @ b.to(dtype)
