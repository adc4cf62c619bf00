"""What every fused attention layer (FastGATConv, FastTransformerConv) shares: argument checks,
the node counts MessagePassing would infer, graph preparation (cached, or traced under
torch.compile), and the test for when PyG's own forward must run instead (docs/design.md §1).
"""
import operator
from typing import Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from .backends import NAMES as BACKEND_NAMES
from .errors import FeatureTypeError
from .graph import Graph, SparseTensor, assert_in_range_async, coo_of, prepare

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


def in_channels_arg(value) -> Union[int, Tuple[int, int]]:
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


def check_features(x, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_nodes, channels), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FeatureTypeError(f"{name} must be floating point, got {x.dtype}")


class FusedLayer:
    """Mixin placed before the PyG layer class in the bases."""

    # PyG stores a class's own `propagate` as the fallback explain mode and decomposed layers
    # switch to; inherited, it would be the PyG class's generated one, which skips explain masks.
    propagate = MessagePassing.propagate
    edge_updater = MessagePassing.edge_updater

    def _needs_messages(self) -> bool:
        """Whether PyG's own forward must run: explain mode, message-passing hooks and other
        aggregations or flows observe or change the per-edge messages the fused op never forms."""
        return (self._explain or self.decomposed_layers > 1 or self.aggr != "add"
                or self.flow != "source_to_target"
                or any(len(getattr(self, name)) for name in _HOOKS))

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

    @staticmethod
    def _graph(edge_index, num_src: int, num_dst: int, drop_self_loops: bool, num_loops: int,
               device: torch.device) -> Graph:
        """The Graph of `edge_index`: prepared once and cached, or, under torch.compile, built
        inside the traced graph (no cache, no host sync) with a device-side range check."""
        if torch.compiler.is_compiling() and not isinstance(edge_index, Graph):
            src, dst = coo_of(edge_index)
            assert_in_range_async(src, dst, num_src, num_dst)
            return Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=drop_self_loops,
                                  num_loops=num_loops, validate=False)
        graph = prepare(edge_index, num_src, num_dst, drop_self_loops=drop_self_loops,
                        num_loops=num_loops)
        if (graph.num_src, graph.num_dst) != (num_src, num_dst):
            raise ValueError(f"the graph has {graph.num_src} source and {graph.num_dst} "
                             f"destination nodes, the features {num_src} and {num_dst}")
        if graph.num_loops != num_loops or graph.dropped_self_loops != drop_self_loops:
            raise ValueError(f"the prepared graph was built with num_loops={graph.num_loops}, "
                             f"drop_self_loops={graph.dropped_self_loops}; this layer needs "
                             f"{num_loops} and {drop_self_loops}")
        if graph.col.device != device:
            raise ValueError(f"edge_index is on {graph.col.device} but x on {device}")
        return graph
