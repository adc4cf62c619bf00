"""FastTransformerConv: torch_geometric.nn.TransformerConv with the edge stage fused
(docs/design.md §11).

It subclasses TransformerConv, so the constructor, parameters, initialisation, state_dict keys
and repr are PyG's own, and so are the bias semantics of the installed PyG (2.8: `bias` on
lin_key, lin_query, lin_value and lin_skip). Only `forward` differs: the attention softmax and
the weighted sum run in one op that never forms the E x H x C keys, values or messages (only
`e = lin_edge(edge_attr)` is E x H x C, when edge_dim is set); beta gating and root_weight stay
in torch. PyG's forward runs where the fused path cannot reproduce it (AttentionLayer).
"""
import math
from typing import Optional

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing, TransformerConv
from torch_geometric.utils import softmax

from .attention_layer import (AttentionLayer, add_term, check_dropout_and_backend,
                              check_features, count, in_channels_of, is_sparse_tensor,
                              is_torch_sparse)
from .backends import resolve
from .graph import Graph
from .ops import transformer_attention


class FastTransformerConv(AttentionLayer, TransformerConv):
    """Drop-in for `torch_geometric.nn.TransformerConv` (same arguments, parameters and
    outputs), plus `backend`: 'auto', 'torch' or 'cpu' (the backends with its kernels).
    `edge_index` may also be a prepared `fastgat.Graph` built with drop_self_loops=False and
    num_loops=0 (TransformerConv adds no self loops).

    Attention dropout draws its mask from fastgat's Philox rule (docs/design.md §7), not from
    F.dropout; the returned attention weights are, as PyG's, the softmax before dropout."""

    # PyG stores a class's own `propagate` as the fallback explain mode and decomposed layers
    # switch to: MessagePassing's, not TransformerConv's generated one.
    propagate = MessagePassing.propagate
    edge_updater = MessagePassing.edge_updater
    add_self_loops = False  # TransformerConv adds none: AttentionLayer's graph has no loops

    def __init__(self, in_channels, out_channels: int, heads: int = 1, concat: bool = True,
                 beta: bool = False, dropout: float = 0.0, edge_dim: Optional[int] = None,
                 bias: bool = True, root_weight: bool = True, backend: str = "auto", **kwargs):
        check_dropout_and_backend(dropout, backend)
        super().__init__(in_channels_of(in_channels), count(out_channels, "out_channels"),
                         heads=count(heads, "heads"), concat=concat, beta=beta, dropout=dropout,
                         edge_dim=edge_dim, bias=bias, root_weight=root_weight, **kwargs)
        self.backend = backend

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None,
                return_attention_weights: Optional[bool] = None):
        # Without lin_edge, PyG adds raw edge attributes to the values only, broadcast as
        # they happen to fit: a rule of its own, left to PyG's forward.
        raw_edge_values = self.lin_edge is None and _edge_attr(edge_index, edge_attr) is not None
        if raw_edge_values and isinstance(edge_index, Graph):
            raise ValueError("edge_attr without edge_dim needs an edge_index tensor, not a "
                             "prepared fastgat.Graph")
        if self._needs_messages(edge_index) or raw_edge_values:
            return super().forward(x, edge_index, edge_attr, return_attention_weights)
        edge_attr = _edge_attr(edge_index, edge_attr)
        H, C = self.heads, self.out_channels
        x_src, x_dst = self._features(x)
        edge_index, graph = self._graph(edge_index, x_src, x_dst, None)
        q = self.lin_query(x_dst).view(-1, H, C)
        k = self.lin_key(x_src).view(-1, H, C).to(q.dtype)
        v = self.lin_value(x_src).view(-1, H, C).to(q.dtype)
        e = self._edge_values(edge_attr, graph, q.dtype)

        p, seed = self._dropout(q.device)
        drop_all = p >= 1.0  # as F.dropout(p=1): every weight zeroed, no mask to draw
        backend = resolve(self.backend, q.device.type, "transformer")
        # The CSC serves only the backward: not built for a call no backward can follow.
        backward = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, e))
        out, _ = transformer_attention(q.contiguous(), k.contiguous(), v.contiguous(), e,
                                       *graph.op_args(csc=backward), 1.0 / math.sqrt(C),
                                       0.0 if drop_all else p, seed, backend)
        if drop_all:
            out = out * 0.0  # zeros that still pass TransformerConv's (zero) gradients
        out = self._combine(out, x_dst)
        if isinstance(return_attention_weights, bool):  # PyG's test: False returns them too
            return out, self._returned_weights(edge_index, graph, q, k, e)
        return out

    # -- the steps of forward, each mirroring TransformerConv ------------------------------
    @staticmethod
    def _features(x):
        if isinstance(x, Tensor):
            check_features(x, "x")
            return x, x
        if not isinstance(x, (tuple, list)) or len(x) != 2 or x[1] is None:
            raise TypeError("x must be a Tensor or a pair (x_src, x_dst) of Tensors")
        check_features(x[0], "x_src")
        check_features(x[1], "x_dst")
        if x[0].device != x[1].device:
            raise ValueError(f"x_src is on {x[0].device} but x_dst on {x[1].device}")
        return x[0], x[1]

    def _edge_values(self, edge_attr, graph: Graph, dtype) -> Optional[Tensor]:
        """e = lin_edge(edge_attr) by CSR slot (E, H, C): the attributes are permuted before
        the projection, which moves edge_dim numbers per edge instead of H x C."""
        if self.lin_edge is None:
            return None
        if edge_attr is None:
            raise ValueError("this layer has edge_dim set: forward needs edge_attr")
        edge_attr = self._edge_attr(edge_attr, graph)  # checked, lazy weight materialised
        e = self.lin_edge(edge_attr.index_select(0, graph.perm))
        return e.view(-1, self.heads, self.out_channels).to(dtype)

    def _combine(self, out: Tensor, x_dst: Tensor) -> Tensor:
        """Heads concatenated or averaged, then the root term: added, or gated by beta."""
        out = out.reshape(-1, self.heads * self.out_channels) if self.concat else out.mean(dim=1)
        if not self.root_weight:
            return out
        x_r = self.lin_skip(x_dst)
        if self.lin_beta is None:
            return add_term(out, x_r)
        beta = self.lin_beta(torch.cat([out, x_r, out - x_r], dim=-1)).sigmoid()
        return beta * x_r + (1 - beta) * out

    def _returned_weights(self, edge_index, graph: Graph, q, k, e):
        """TransformerConv's attention weights (before dropout), in the caller's edge order:
        the order coo_of reads, which is PyG's for every edge form (no edges are added or
        dropped). Forms the per-edge scores in torch: only when asked for."""
        slots = torch.arange(graph.num_edges, device=q.device)
        dst = torch.searchsorted(graph.rowptr.long(), slots, right=True) - 1
        src = graph.col.long()
        key = k[src] if e is None else k[src] + e
        scores = (q[dst] * key).sum(dim=-1) / math.sqrt(self.out_channels)
        alpha = softmax(scores, dst, num_nodes=graph.num_dst)[graph.edge_slots()]
        if isinstance(edge_index, Graph):
            return torch.stack(graph.coo()), alpha
        if is_sparse_tensor(edge_index):
            return edge_index.set_value(alpha, layout="coo")
        return edge_index, alpha


def _edge_attr(edge_index, edge_attr):
    """edge_attr as MessagePassing collects it: a sparse adjacency's values stand in when none
    is given (a torch.sparse tensor's only when they are multi-dimensional)."""
    if edge_attr is not None:
        return edge_attr
    if is_sparse_tensor(edge_index):
        return edge_index.storage.value()
    if is_torch_sparse(edge_index):
        values = edge_index.values() if edge_index.layout != torch.sparse_coo \
            else edge_index._values()
        return values if values.dim() > 1 else None
    return None
