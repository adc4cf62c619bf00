"""FastGATConv: torch_geometric.nn.GATConv with the edge stage fused (docs/design.md §1).

It subclasses GATConv, so the constructor, parameters, initialisation, state_dict keys and
repr are PyG's own; only `forward` differs, and it falls back to PyG's when explain mode or
message-passing hooks need the per-edge messages that the fused path never materialises.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import GATConv
from torch_geometric.utils import add_self_loops, remove_self_loops, scatter, softmax
from torch_geometric.utils.loop import compute_loop_attr
from torch_geometric.utils.sparse import set_sparse_value

from .backends import resolve
from .dropout import draw_seed, keep_scale
from .errors import InputShapeError
from .fused_layer import (FusedLayer, check_dropout_and_backend, check_features, count,
                          in_channels_arg, is_sparse_tensor, is_torch_sparse)
from .graph import Graph
from .ops import gat_attention

_FILL_REDUCTIONS = ("add", "sum", "mean", "min", "max", "mul")


def _check_constructor(dropout, fill_value, backend):
    check_dropout_and_backend(dropout, backend)
    if isinstance(fill_value, str) and fill_value not in _FILL_REDUCTIONS:
        raise ValueError(f"fill_value {fill_value!r} is not one of {_FILL_REDUCTIONS}, "
                         f"a number or a tensor")


class FastGATConv(FusedLayer, GATConv):
    """Drop-in for `torch_geometric.nn.GATConv` (same arguments, parameters and outputs),
    plus `backend`: 'auto' (fused kernels where available), 'torch', 'triton', 'cuda', 'cpu'.
    `edge_index` may also be a prepared `fastgat.Graph`, validated once when it was built."""

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int,
                 heads: int = 1, concat: bool = True, negative_slope: float = 0.2,
                 dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: Optional[int] = None, fill_value: Union[float, Tensor, str] = "mean",
                 bias: bool = True, residual: bool = False, backend: str = "auto", **kwargs):
        _check_constructor(dropout, fill_value, backend)
        super().__init__(in_channels_arg(in_channels), count(out_channels, "out_channels"),
                         heads=count(heads, "heads"), concat=concat,
                         negative_slope=negative_slope, dropout=dropout,
                         add_self_loops=add_self_loops, edge_dim=edge_dim,
                         fill_value=fill_value, bias=bias, residual=residual, **kwargs)
        self.backend = backend

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None, size=None,
                return_attention_weights: Optional[bool] = None):
        if self._needs_messages():
            if isinstance(edge_index, Graph):
                raise ValueError("explain mode, message hooks and aggr/flow other than "
                                 "'add'/'source_to_target' need an edge_index tensor, "
                                 "not a prepared fastgat.Graph")
            return super().forward(x, edge_index, edge_attr, size, return_attention_weights)
        if self.add_self_loops and is_torch_sparse(edge_index) and \
                edge_index.layout == torch.sparse_coo:
            # GATConv's self-loop step merges duplicate entries. Rebuilt first, because PyG
            # marks COO inputs coalesced without coalescing them, so the flag cannot be trusted.
            edge_index = torch.sparse_coo_tensor(edge_index._indices(), edge_index._values(),
                                                 edge_index.shape).coalesce()
        H, C = self.heads, self.out_channels
        x_src, x_dst, res = self._transform(x)
        num_src, num_dst = self._sizes(edge_index, x_src, x_dst, size)
        num_loops = self._num_loops(edge_index, x_src, x_dst, size, num_src, num_dst)
        graph = self._graph(edge_index, num_src, num_dst, self.add_self_loops, num_loops,
                            x_src.device)

        s, d = self._node_scores(x_src, x_dst, num_dst)
        t_edges, t_loop = self._edge_scores(edge_attr, graph)
        t = t_edges.index_select(0, graph.perm) if t_edges is not None else None

        p = self.dropout if self.training else 0.0
        drop_all = p >= 1.0  # as F.dropout(p=1): every weight zeroed, no mask to draw
        seed = draw_seed(x_src.device) if 0.0 < p < 1.0 else None
        backend = resolve(self.backend, x_src.device.type)
        # The op takes one dtype: under autocast, h may be half precision while the
        # attention parameters keep the scores in float32.
        s, d = s.to(x_src.dtype), d.to(x_src.dtype)
        t = t.to(x_src.dtype) if t is not None else None
        t_loop = t_loop.to(x_src.dtype) if t_loop is not None else None
        # The CSC serves only the backward: not built for a call no backward can follow.
        backward = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (x_src, s, d, t, t_loop))
        out, _ = gat_attention(x_src.contiguous(), s.contiguous(), d.contiguous(), t, t_loop,
                               *graph.op_args(csc=backward), num_loops,
                               float(self.negative_slope), 0.0 if drop_all else p, seed, backend)
        if drop_all:
            out = out * 0.0  # zeros that still pass GATConv's (zero) gradients
        out = out.reshape(-1, H * C) if self.concat else out.mean(dim=1)
        if res is not None:
            out = out + res
        if self.bias is not None:
            out = out + self.bias
        if return_attention_weights:
            return out, self._attention_weights(edge_index, graph, s, d, t_edges, t_loop, seed, p)
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

    def _node_scores(self, x_src, x_dst, num_dst) -> Tuple[Tensor, Tensor]:
        """s = <h_src, att_src> and d = <h_dst, att_dst> per head (docs/design.md §2) as one
        matrix product of h (N x HC) with the attention vectors laid out block-diagonally
        (HC x 2H): no bmm, no N x H x C temporary, and h stays the contiguous GEMM output."""
        H, C = self.heads, self.out_channels
        eye = torch.eye(H, dtype=self.att_src.dtype, device=self.att_src.device)

        def blocks(att):  # (HC, H): column k holds att[k] in rows k*C .. k*C + C - 1
            return (att.view(H, C, 1) * eye.view(H, 1, H)).reshape(H * C, H)

        if x_dst is x_src:
            sd = x_src.reshape(-1, H * C) @ torch.cat([blocks(self.att_src),
                                                       blocks(self.att_dst)], dim=1)
            return sd[:, :H], sd[:, H:]
        s = x_src.reshape(-1, H * C) @ blocks(self.att_src)
        d = (x_dst.reshape(-1, H * C) @ blocks(self.att_dst) if x_dst is not None
             else s.new_zeros(num_dst, H))
        return s, d

    def _num_loops(self, edge_index, x_src, x_dst, size, num_src, num_dst) -> int:
        """How many self loops GATConv adds: nodes present as both source and destination."""
        if not self.add_self_loops:
            return 0
        if isinstance(edge_index, Graph):
            return edge_index.num_loops
        if is_sparse_tensor(edge_index) or is_torch_sparse(edge_index):
            return min(num_src, num_dst)
        num_nodes = x_src.size(0)
        if x_dst is not None:
            num_nodes = min(num_nodes, x_dst.size(0))
        return min(size) if size is not None else num_nodes

    def _edge_scores(self, edge_attr, graph: Graph):
        """Per input edge and per self loop, the score t = <lin_edge(e), att_edge> (E x H).

        The E x H x C projection is never formed: att_edge is folded into lin_edge's weight.
        Self-loop attributes are reduced from the raw attributes first (fill_value), since
        max/min/mul do not commute with the linear map."""
        if edge_attr is None or self.lin_edge is None or (graph.num_edges == 0
                                                          and graph.num_loops == 0):
            return None, None  # as GATConv, which never reads lin_edge without edges
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        if self.lin_edge.in_channels == -1 and edge_attr.dim() == 2:
            self.lin_edge(edge_attr[:0])  # materialises a lazy edge_dim=-1 weight, as PyG's
        if (edge_attr.dim() != 2 or edge_attr.size(0) != graph.num_edges
                or edge_attr.size(1) != self.lin_edge.in_channels):
            raise InputShapeError(f"edge_attr must have shape ({graph.num_edges}, "
                                  f"{self.edge_dim}) for {graph.num_edges} edges, got "
                                  f"{tuple(edge_attr.shape)}")
        if edge_attr.device != graph.col.device:
            raise ValueError(f"edge_attr is on {edge_attr.device} but edge_index on "
                             f"{graph.col.device}")
        weight = self.lin_edge.weight.view(self.heads, self.out_channels, -1)
        w_t = (weight * self.att_edge.view(self.heads, self.out_channels, 1)).sum(dim=1)
        t_edges = edge_attr @ w_t.t()
        if graph.num_loops == 0:
            return t_edges, None
        src, dst = graph.coo()
        if isinstance(self.fill_value, str):
            loop_attr = scatter(edge_attr, graph.loop_bins(src, dst), 0, graph.num_loops + 1,
                                self.fill_value)[:graph.num_loops]
        else:
            loop_attr = compute_loop_attr(dst, edge_attr, graph.num_loops, False,
                                          self.fill_value)
        return t_edges, loop_attr @ w_t.t()

    def _attention_weights(self, edge_index, graph: Graph, s, d, t_edges, t_loop, seed, p):
        """GATConv's (edge_index, alpha) in PyG's edge order: kept input edges then self loops
        for tensors; sorted by (destination, source) for sparse adjacencies."""
        src, dst = graph.coo()
        if graph.dropped_self_loops:
            kept = (src != dst).nonzero().view(-1)
        else:
            kept = torch.arange(graph.num_edges, device=src.device)
        loops = torch.arange(graph.num_loops, device=kept.device)
        src = torch.cat([src[kept], loops])
        dst = torch.cat([dst[kept], loops])
        slots = torch.cat([graph.edge_slots()[kept], loops + graph.num_edges])
        scores = s[src] + d[dst]
        if t_edges is not None:
            loop_scores = t_loop if t_loop is not None else t_edges.new_zeros(0, self.heads)
            scores = scores + torch.cat([t_edges[kept], loop_scores])
        sparse = is_sparse_tensor(edge_index) or is_torch_sparse(edge_index)
        if sparse:
            order = torch.argsort(dst * graph.num_src + src)
            src, dst, slots, scores = src[order], dst[order], slots[order], scores[order]
        alpha = softmax(torch.nn.functional.leaky_relu(scores, self.negative_slope), dst,
                        num_nodes=graph.num_dst)
        if p >= 1.0:
            alpha = alpha * 0.0
        elif p > 0.0:
            alpha = alpha * keep_scale(seed, slots, self.heads, p, alpha.dtype)
        if isinstance(edge_index, Graph):
            return torch.stack([src, dst]), alpha
        if is_sparse_tensor(edge_index):
            adj = edge_index
            if self.add_self_loops:
                import torch_sparse
                adj = torch_sparse.set_diag(adj)
            return adj.set_value(alpha, layout="coo")
        if self.add_self_loops:
            edge_index, _ = remove_self_loops(edge_index)
            edge_index, _ = add_self_loops(edge_index, num_nodes=graph.num_loops)
        if sparse:
            return set_sparse_value(edge_index, alpha), alpha
        return edge_index, alpha

