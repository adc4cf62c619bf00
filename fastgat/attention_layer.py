"""What every fused attention layer (FastGATConv, FastGATv2Conv, FastTransformerConv) does
around its op, once:
constructor checks, PyG's fallback rules, sizes and implicit self loops, graph preparation,
self-loop edge attributes by fill_value, dropout draws, and the attention weights returned
in PyG's edge order and form (docs/design.md §1, §2).

`AttentionLayer` is a mixin placed before the PyG class: it reads the attributes PyG's
constructor sets (heads, out_channels, add_self_loops, fill_value, dropout, negative_slope,
lin_edge) and defines only underscore helpers, so PyG's own methods stay untouched.
"""
import operator
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.utils import add_self_loops, remove_self_loops, scatter, softmax
from torch_geometric.utils.loop import compute_loop_attr
from torch_geometric.utils.sparse import set_sparse_value

from .backends import NAMES as BACKEND_NAMES
from .dropout import draw_seed, keep_scale
from .errors import FeatureTypeError, InputShapeError
from .graph import Graph, SparseTensor, assert_in_range_async, coo_of, prepare

FILL_REDUCTIONS = ("add", "sum", "mean", "min", "max", "mul")
_HOOKS = ("_propagate_forward_pre_hooks", "_propagate_forward_hooks",
          "_message_forward_pre_hooks", "_message_forward_hooks",
          "_aggregate_forward_pre_hooks", "_aggregate_forward_hooks",
          "_message_and_aggregate_forward_pre_hooks", "_message_and_aggregate_forward_hooks",
          "_edge_update_forward_pre_hooks", "_edge_update_forward_hooks")


def is_sparse_tensor(edge_index) -> bool:
    return isinstance(SparseTensor, type) and isinstance(edge_index, SparseTensor)


def is_torch_sparse(edge_index) -> bool:
    return isinstance(edge_index, Tensor) and edge_index.layout != torch.strided


def count(value, name: str, lazy: bool = False) -> int:
    """`value` as a positive int (or -1 where `lazy`); NumPy and other integral types count."""
    kinds = "a positive int or -1 (lazy)" if lazy else "a positive int"
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {kinds}, got {value!r}") from None
    if number < 1 and not (lazy and number == -1):
        raise ValueError(f"{name} must be {kinds}, got {value!r}")
    return number


def in_channels_of(value) -> Union[int, Tuple[int, int]]:
    """An int or a (src, dst) pair; a list pair counts too, as YAML and JSON configs write it."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"in_channels must be an int or a pair (src, dst), got {value!r}")
        return tuple(count(c, "in_channels", lazy=True) for c in value)
    return count(value, "in_channels", lazy=True)


def check_dropout_and_backend(dropout, backend) -> None:
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must lie in [0, 1], got {dropout!r}")
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of "
                         f"{BACKEND_NAMES}")


def check_constructor(dropout, fill_value, backend) -> None:
    check_dropout_and_backend(dropout, backend)
    if isinstance(fill_value, str) and fill_value not in FILL_REDUCTIONS:
        raise ValueError(f"fill_value {fill_value!r} is not one of {FILL_REDUCTIONS}, "
                         f"a number or a tensor")


def check_features(x, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_nodes, channels), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FeatureTypeError(f"{name} must be floating point, got {x.dtype}")


def add_term(out: Tensor, term: Tensor) -> Tensor:
    """out + term, in place where no autograd graph records it (inference: out is a fresh
    output of this layer, and a second N x HC allocation and pass cost as much as the add) and
    the sum keeps out's dtype (a float32 bias beside half-precision out promotes, as in PyG)."""
    if not torch.is_grad_enabled() and torch.result_type(out, term) == out.dtype:
        return out.add_(term)
    return out + term


class AttentionLayer:
    """The steps of a fused attention layer's forward that do not depend on its score."""

    def _needs_messages(self, edge_index) -> bool:
        """Whether PyG's own forward must run: explain mode, message-passing hooks and other
        aggregations or flows observe or change the per-edge messages the fused op never forms.
        PyG's forward cannot read a prepared Graph: that case is an error."""
        # GATConv's default aggregation is spelled "add", GATv2Conv's "sum": the same sum.
        needed = (self._explain or self.decomposed_layers > 1
                  or self.aggr not in ("add", "sum") or self.flow != "source_to_target"
                  or any(len(getattr(self, name)) for name in _HOOKS))
        if needed and isinstance(edge_index, Graph):
            raise ValueError("explain mode, message hooks and aggr/flow other than "
                             "'add'/'source_to_target' need an edge_index tensor, "
                             "not a prepared fastgat.Graph")
        return needed

    def _graph(self, edge_index, x_src: Tensor, x_dst: Optional[Tensor], size
               ) -> Tuple[object, Graph]:
        """(edge_index, its Graph) with PyG's sizes and implicit self loops; edge_index comes
        back changed only where PyG's self-loop step would change it (a coalesced COO)."""
        if self.add_self_loops and is_torch_sparse(edge_index) and \
                edge_index.layout == torch.sparse_coo:
            # PyG's self-loop step merges duplicate entries. Rebuilt first, because PyG marks
            # COO inputs coalesced without coalescing them, so the flag cannot be trusted.
            edge_index = torch.sparse_coo_tensor(edge_index._indices(), edge_index._values(),
                                                 edge_index.shape).coalesce()
        num_src, num_dst = self._sizes(edge_index, x_src, x_dst, size)
        num_loops = self._num_loops(edge_index, x_src, x_dst, size, num_src, num_dst)
        if torch.compiler.is_compiling() and not isinstance(edge_index, Graph):
            src, dst = coo_of(edge_index)  # traced into the graph: no cache, no host sync
            assert_in_range_async(src, dst, num_src, num_dst)
            graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=self.add_self_loops,
                                   num_loops=num_loops, validate=False)
        else:
            graph = prepare(edge_index, num_src, num_dst, drop_self_loops=self.add_self_loops,
                            num_loops=num_loops)
            self._check_graph(graph, num_src, num_dst, num_loops, x_src.device)
        return edge_index, graph

    @staticmethod
    def _sizes(edge_index, x_src, x_dst, size) -> Tuple[int, int]:
        """(num_src, num_dst) by MessagePassing's rules, with its error for a mismatch."""
        if isinstance(edge_index, Graph):
            sizes = [edge_index.num_src, edge_index.num_dst]
        elif is_sparse_tensor(edge_index) or is_torch_sparse(edge_index):
            sizes = [edge_index.size(1), edge_index.size(0)]
        elif hasattr(edge_index, "sparse_size"):  # EdgeIndex
            sizes = list(edge_index.sparse_size())
        else:
            sizes = list(size) if size is not None else [None, None]
        for dim, tensor in ((0, x_src), (1, x_dst)):
            if tensor is None:
                continue
            if sizes[dim] is None:
                sizes[dim] = tensor.size(0)
            elif sizes[dim] != tensor.size(0):
                raise ValueError(f"Encountered tensor with size {tensor.size(0)} in dimension 0, "
                                 f"but expected size {sizes[dim]}.")
        sizes[0] = sizes[1] if sizes[0] is None else sizes[0]
        sizes[1] = sizes[0] if sizes[1] is None else sizes[1]
        return int(sizes[0]), int(sizes[1])

    def _num_loops(self, edge_index, x_src, x_dst, size, num_src, num_dst) -> int:
        """How many self loops PyG adds: nodes present as both source and destination."""
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

    def _check_graph(self, graph: Graph, num_src, num_dst, num_loops, device):
        if (graph.num_src, graph.num_dst) != (num_src, num_dst):
            raise ValueError(f"the graph has {graph.num_src} source and {graph.num_dst} "
                             f"destination nodes, the features {num_src} and {num_dst}")
        if graph.num_loops != num_loops or graph.dropped_self_loops != self.add_self_loops:
            raise ValueError(f"the prepared graph was built with num_loops={graph.num_loops}, "
                             f"drop_self_loops={graph.dropped_self_loops}; this layer needs "
                             f"{num_loops} and {self.add_self_loops}")
        if graph.col.device != device:
            raise ValueError(f"edge_index is on {graph.col.device} but x on {device}")

    def _edge_attr(self, edge_attr: Tensor, graph: Graph) -> Tensor:
        """edge_attr as (E, edge_dim), checked against the graph and lin_edge (a lazy
        edge_dim=-1 weight is materialised, as PyG's first call does)."""
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        if self.lin_edge.in_channels == -1 and edge_attr.dim() == 2:
            self.lin_edge(edge_attr[:0])
        if (edge_attr.dim() != 2 or edge_attr.size(0) != graph.num_edges
                or edge_attr.size(1) != self.lin_edge.in_channels):
            raise InputShapeError(f"edge_attr must have shape ({graph.num_edges}, "
                                  f"{self.edge_dim}) for {graph.num_edges} edges, got "
                                  f"{tuple(edge_attr.shape)}")
        if edge_attr.device != graph.col.device:
            raise ValueError(f"edge_attr is on {edge_attr.device} but edge_index on "
                             f"{graph.col.device}")
        return edge_attr

    def _loop_attr(self, edge_attr: Tensor, graph: Graph) -> Tensor:
        """(num_loops, edge_dim) attributes of the implicit self loops by fill_value, reduced
        from the raw attributes: max/min/mul do not commute with lin_edge."""
        src, dst = graph.coo()
        if isinstance(self.fill_value, str):
            return scatter(edge_attr, graph.loop_bins(src, dst), 0, graph.num_loops + 1,
                           self.fill_value)[:graph.num_loops]
        return compute_loop_attr(dst, edge_attr, graph.num_loops, False, self.fill_value)

    def _dropout(self, device) -> Tuple[float, Optional[Tensor]]:
        """(p, seed) of attention dropout for this call; p >= 1 drops every weight."""
        p = self.dropout if self.training else 0.0
        return p, draw_seed(device) if 0.0 < p < 1.0 else None

    def _combine_heads(self, out: Tensor, res: Optional[Tensor], drop_all: bool) -> Tensor:
        """The op's (N_dst, H, C) output as PyG's: heads concatenated or averaged, then the
        residual and the bias. drop_all (dropout p = 1, which the op is not asked to do)
        zeroes out while still passing PyG's (zero) gradients."""
        if drop_all:
            out = out * 0.0
        out = out.reshape(-1, self.heads * self.out_channels) if self.concat else out.mean(dim=1)
        for term in (res, self.bias):
            if term is not None:
                out = add_term(out, term)
        return out

    def _attention_weights(self, edge_index, graph: Graph,
                           logits: Callable[[Tensor, Tensor, Tensor], Tensor], seed, p):
        """PyG's (edge_index, alpha) in PyG's edge order: kept input edges then self loops
        for tensors; sorted by (destination, source) for sparse adjacencies.
        `logits(src, dst, kept)` scores those edges: src, dst the sources and destinations of
        the kept input edges (input ids `kept`) followed by the self loops."""
        src, dst = graph.coo()
        if graph.dropped_self_loops:
            kept = (src != dst).nonzero().view(-1)
        else:
            kept = torch.arange(graph.num_edges, device=src.device)
        loops = torch.arange(graph.num_loops, device=kept.device)
        src = torch.cat([src[kept], loops])
        dst = torch.cat([dst[kept], loops])
        slots = torch.cat([graph.edge_slots()[kept], loops + graph.num_edges])
        scores = logits(src, dst, kept)
        sparse = is_sparse_tensor(edge_index) or is_torch_sparse(edge_index)
        if sparse:
            order = torch.argsort(dst * graph.num_src + src)
            src, dst, slots, scores = src[order], dst[order], slots[order], scores[order]
        alpha = softmax(scores, dst, num_nodes=graph.num_dst)
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
