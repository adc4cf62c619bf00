"""FastGATConv: torch_geometric.nn.GATConv with the edge stage fused (docs/design.md §1).

It subclasses GATConv, so the constructor, parameters, initialisation, state_dict keys and
repr are PyG's own; only `forward` differs, and it falls back to PyG's when explain mode or
message-passing hooks need the per-edge messages that the fused path never materialises.
"""
import operator
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import GATConv, MessagePassing
from torch_geometric.utils import add_self_loops, remove_self_loops, scatter, softmax
from torch_geometric.utils.loop import compute_loop_attr
from torch_geometric.utils.sparse import set_sparse_value

from .backends import NAMES as BACKEND_NAMES, resolve
from .dropout import draw_seed, keep_scale
from .errors import FeatureTypeError, InputShapeError
from .graph import Graph, SparseTensor, assert_in_range_async, coo_of, prepare
from .ops import gat_attention

_FILL_REDUCTIONS = ("add", "sum", "mean", "min", "max", "mul")
_HOOKS = ("_propagate_forward_pre_hooks", "_propagate_forward_hooks",
          "_message_forward_pre_hooks", "_message_forward_hooks",
          "_aggregate_forward_pre_hooks", "_aggregate_forward_hooks",
          "_message_and_aggregate_forward_pre_hooks", "_message_and_aggregate_forward_hooks",
          "_edge_update_forward_pre_hooks", "_edge_update_forward_hooks")


def _is_sparse_tensor(edge_index) -> bool:
    return isinstance(SparseTensor, type) and isinstance(edge_index, SparseTensor)


def _is_torch_sparse(edge_index) -> bool:
    return isinstance(edge_index, Tensor) and edge_index.layout != torch.strided


def _count(value, name: str, lazy: bool = False) -> int:
    """`value` as a positive int (or -1 where `lazy`); NumPy and other integral types count."""
    kinds = "a positive int or -1 (lazy)" if lazy else "a positive int"
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {kinds}, got {value!r}") from None
    if count < 1 and not (lazy and count == -1):
        raise ValueError(f"{name} must be {kinds}, got {value!r}")
    return count


def _in_channels(value) -> Union[int, Tuple[int, int]]:
    """An int or a (src, dst) pair; a list pair counts too, as YAML and JSON configs write it."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"in_channels must be an int or a pair (src, dst), got {value!r}")
        return tuple(_count(c, "in_channels", lazy=True) for c in value)
    return _count(value, "in_channels", lazy=True)


def _check_constructor(dropout, fill_value, backend):
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must lie in [0, 1], got {dropout!r}")
    if isinstance(fill_value, str) and fill_value not in _FILL_REDUCTIONS:
        raise ValueError(f"fill_value {fill_value!r} is not one of {_FILL_REDUCTIONS}, "
                         f"a number or a tensor")
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of "
                         f"{BACKEND_NAMES}")


class FastGATConv(GATConv):
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
        _check_constructor(dropout, fill_value, backend)
        super().__init__(_in_channels(in_channels), _count(out_channels, "out_channels"),
                         heads=_count(heads, "heads"), concat=concat,
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
        if self.add_self_loops and _is_torch_sparse(edge_index) and \
                edge_index.layout == torch.sparse_coo:
            # GATConv's self-loop step merges duplicate entries. Rebuilt first, because PyG
            # marks COO inputs coalesced without coalescing them, so the flag cannot be trusted.
            edge_index = torch.sparse_coo_tensor(edge_index._indices(), edge_index._values(),
                                                 edge_index.shape).coalesce()
        H, C = self.heads, self.out_channels
        x_src, x_dst, res = self._transform(x)
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

    def _needs_messages(self) -> bool:
        """Whether PyG's own forward must run: explain mode, message-passing hooks and other
        aggregations or flows observe or change the per-edge messages the fused op never forms."""
        return (self._explain or self.decomposed_layers > 1 or self.aggr != "add"
                or self.flow != "source_to_target"
                or any(len(getattr(self, name)) for name in _HOOKS))

    # -- the steps of forward, each mirroring GATConv ------------------------------------
    def _transform(self, x):
        """x -> (x_src, x_dst or None, residual or None), exactly as GATConv.forward."""
        H, C = self.heads, self.out_channels
        res = None
        if isinstance(x, Tensor):
            _check_features(x, "x")
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
        _check_features(x_src, "x_src")
        if x_dst is not None:
            _check_features(x_dst, "x_dst")
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

    @staticmethod
    def _sizes(edge_index, x_src, x_dst, size) -> Tuple[int, int]:
        """(num_src, num_dst) by MessagePassing's rules, with its error for a mismatch."""
        if isinstance(edge_index, Graph):
            sizes = [edge_index.num_src, edge_index.num_dst]
        elif _is_sparse_tensor(edge_index) or _is_torch_sparse(edge_index):
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
        """How many self loops GATConv adds: nodes present as both source and destination."""
        if not self.add_self_loops:
            return 0
        if isinstance(edge_index, Graph):
            return edge_index.num_loops
        if _is_sparse_tensor(edge_index) or _is_torch_sparse(edge_index):
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
        sparse = _is_sparse_tensor(edge_index) or _is_torch_sparse(edge_index)
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
        if _is_sparse_tensor(edge_index):
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


def _check_features(x, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_nodes, channels), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FeatureTypeError(f"{name} must be floating point, got {x.dtype}")
