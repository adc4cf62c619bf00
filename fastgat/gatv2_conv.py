"""FastGATv2Conv: torch_geometric.nn.GATv2Conv with the edge stage fused (docs/design.md,
"GATv2").

It subclasses GATv2Conv, so the constructor, parameters, initialisation, state_dict keys and
repr are PyG's own; only `forward` differs. PyG forms x_i + x_j (+ e_ij) per edge, an
E x H x C tensor, and the messages, another; the fused op (fastgat::gatv2_attention) forms
neither: it writes out and lse only. With edge_dim, lin_edge(edge_attr) (E x H x C) is still
formed, as the op's input. Falls back to PyG's forward where FastGATConv does (explain mode,
message-passing hooks).
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import GATv2Conv, MessagePassing

from .attention_layer import (AttentionLayer, check_constructor, check_features, count,
                              in_channels_of)
from .backends import resolve
from .graph import Graph
from .ops import gatv2_attention


class FastGATv2Conv(AttentionLayer, GATv2Conv):
    """Drop-in for `torch_geometric.nn.GATv2Conv` (same arguments, parameters and outputs),
    plus `backend`: 'auto' (fused kernels where available) or one of fastgat.backends.NAMES
    that implements GATv2 (fastgat.available_backends says which). `edge_index` may also be a
    prepared `fastgat.Graph`."""

    # As in FastGATConv: PyG's fallback (explain mode, decomposed layers) calls the class's
    # own propagate, which must be MessagePassing's, not GATv2Conv's generated one.
    propagate = MessagePassing.propagate
    edge_updater = MessagePassing.edge_updater

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int,
                 heads: int = 1, concat: bool = True, negative_slope: float = 0.2,
                 dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: Optional[int] = None, fill_value: Union[float, Tensor, str] = "mean",
                 bias: bool = True, share_weights: bool = False, residual: bool = False,
                 backend: str = "auto", **kwargs):
        check_constructor(dropout, fill_value, backend)
        super().__init__(in_channels_of(in_channels), count(out_channels, "out_channels"),
                         heads=count(heads, "heads"), concat=concat,
                         negative_slope=negative_slope, dropout=dropout,
                         add_self_loops=add_self_loops, edge_dim=edge_dim,
                         fill_value=fill_value, bias=bias, share_weights=share_weights,
                         residual=residual, **kwargs)
        self.backend = backend

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None,
                return_attention_weights: Optional[bool] = None):
        if self._needs_messages(edge_index):
            return super().forward(x, edge_index, edge_attr, return_attention_weights)
        xl, xr, res = self._transform(x)
        edge_index, graph = self._graph(edge_index, xl, xr, None)
        e_edges, e_loop = self._edge_values(edge_attr, graph)
        p, seed = self._dropout(xl.device)
        drop_all = p >= 1.0  # as F.dropout(p=1): every weight zeroed, no mask to draw
        backend = resolve(self.backend, xl.device.type, "gatv2")
        # The op takes one dtype: under autocast the projections may be half precision while
        # att stays float32.
        att = self.att.view(self.heads, self.out_channels).to(xl.dtype)
        e = e_edges.index_select(0, graph.perm).to(xl.dtype) if e_edges is not None else None
        e_loop_op = e_loop.to(xl.dtype).contiguous() if e_loop is not None else None
        xr_op = xr.to(xl.dtype)
        # The CSC serves only the backward: not built for a call no backward can follow.
        backward = torch.is_grad_enabled() and any(
            v is not None and v.requires_grad for v in (xl, xr_op, att, e, e_loop_op))
        out, _ = gatv2_attention(xl.contiguous(), xr_op.contiguous(), att.contiguous(), e,
                                 e_loop_op, *graph.op_args(csc=backward), graph.num_loops,
                                 float(self.negative_slope), 0.0 if drop_all else p, seed,
                                 backend)
        out = self._combine_heads(out, res, drop_all)
        if return_attention_weights:
            return out, self._gatv2_attention_weights(edge_index, graph, xl, xr, e_edges,
                                                        e_loop, seed, p)
        return out

    # -- the steps of forward, each mirroring GATv2Conv ----------------------------------
    def _transform(self, x) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """x -> (xl, xr, residual or None), exactly as GATv2Conv.forward (with share_weights
        xr is xl itself for one x: autograd sums the two sides' gradients)."""
        H, C = self.heads, self.out_channels
        if isinstance(x, Tensor):
            check_features(x, "x")
            res = self.res(x) if self.res is not None else None
            xl = self.lin_l(x).view(-1, H, C)
            xr = xl if self.share_weights else self.lin_r(x).view(-1, H, C)
            return xl, xr, res
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise TypeError("x must be a Tensor or a pair (x_src, x_dst)")
        x_src, x_dst = x
        check_features(x_src, "x_src")
        if x_dst is None:  # GATv2's score reads the destination's features
            raise ValueError("GATv2Conv needs destination features: x = (x_src, x_dst) with "
                             "x_dst a Tensor, not None")
        check_features(x_dst, "x_dst")
        if x_dst.device != x_src.device:
            raise ValueError(f"x_src is on {x_src.device} but x_dst on {x_dst.device}")
        res = self.res(x_dst) if self.res is not None else None
        return self.lin_l(x_src).view(-1, H, C), self.lin_r(x_dst).view(-1, H, C), res

    def _edge_values(self, edge_attr, graph: Graph
                     ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """lin_edge(edge_attr) per input edge (E x H x C, input order) and per self loop
        (num_loops x H x C, from attributes reduced by fill_value before the projection).
        Formed even for no edges, as GATv2Conv does: lin_edge then gets zero gradients."""
        if edge_attr is None:
            return None, None
        if self.lin_edge is None:
            raise ValueError("edge_attr was given but the layer has no edge_dim: construct it "
                             "with edge_dim to use edge features")
        edge_attr = self._edge_attr(edge_attr, graph)
        H, C = self.heads, self.out_channels
        e = self.lin_edge(edge_attr).view(-1, H, C)
        if graph.num_loops == 0:
            return e, None
        return e, self.lin_edge(self._loop_attr(edge_attr, graph)).view(-1, H, C)

    def _gatv2_attention_weights(self, edge_index, graph: Graph, xl, xr, e_edges, e_loop,
                                 seed, p):
        """GATv2Conv's returned attention weights: <att, LeakyReLU(xl_j + xr_i + e_ij)>,
        softmaxed (E x H x C for the edges returned, as PyG's)."""
        def logits(src, dst, kept):
            u = xl[src] + xr[dst]
            if e_edges is not None:
                loops = e_loop if e_loop is not None else e_edges.new_zeros(0, *e_edges.shape[1:])
                u = u + torch.cat([e_edges[kept], loops])
            return (torch.nn.functional.leaky_relu(u, self.negative_slope) * self.att).sum(-1)
        return self._attention_weights(edge_index, graph, logits, seed, p)
