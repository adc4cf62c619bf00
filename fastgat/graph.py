"""Graph preparation: any PyG edge form -> CSR by destination + CSC by source, cached.

A `Graph` holds the five index tensors of the op contract (fastgat/ops.py) plus what
FastGATConv needs to map results back to the caller's edge order. On the CPU both orders are
counting sorts in the compiled library (csrc/cpu/graph_cpu.cpp: one thread; the CSR's rows
then sorted by source); elsewhere, without the library and under torch.compile, stable
argsorts.
The CSC, which only the backward reads, is built on first use (docs/design.md §3).
`prepare` caches Graphs so a graph passed again is not re-sorted.

Cache key and invalidation: the edge object's identity (checked through a weak reference, so
an id reused by a new object never hits) together with its autograd version counter (bumped
by every in-place write, so a graph edited in place is rebuilt), the node counts and the
self-loop settings and whether inference mode is on. Inference tensors have no version counter:
their entry keeps a copy of the edges and is reused only while the tensor still equals it. An entry dies with its edge object
(a Graph holds copies, never views of it), and at most 16 are kept; threads share it under a
lock. Writes that bypass the version counter (through `.data`, NumPy or DLPack aliases) are not
seen: build a `Graph` yourself for those.
"""
import threading
import weakref
from collections import OrderedDict
from dataclasses import InitVar, dataclass, field
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import launch_plan
from ._extension import LOAD_ERROR
from .errors import EdgeIndexTypeError, InputShapeError

try:  # torch_sparse is optional; PyG exposes a placeholder class when it is absent
    from torch_geometric.typing import SparseTensor
except ImportError:  # pragma: no cover
    SparseTensor = ()

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Graph:
    """Edges sorted for the fused op. Slot k of the CSR holds input edge `perm[k]`; dropped
    self loops sit in dead slots past rowptr[-1]; nodes i < num_loops get implicit self loops.
    The CSC (colptr, csc_row, csc_eid) may be given, else it is built when first read."""
    rowptr: Tensor
    col: Tensor
    perm: Tensor          # (E,) input edge id of each CSR slot
    num_src: int
    num_dst: int
    num_loops: int
    dropped_self_loops: bool
    colptr: InitVar[Optional[Tensor]] = None
    csc_row: InitVar[Optional[Tensor]] = None
    csc_eid: InitVar[Optional[Tensor]] = None
    _csc: Optional[Tuple[Tensor, Tensor, Tensor]] = field(default=None, init=False, repr=False,
                                                          compare=False)

    def __post_init__(self, colptr, csc_row, csc_eid):
        launch_plan.register(self.rowptr, self.num_loops)
        if colptr is not None:
            launch_plan.register(colptr, self.num_loops)
            object.__setattr__(self, "_csc", (colptr, csc_row, csc_eid))

    def csc(self) -> Tuple[Tensor, Tensor, Tensor]:
        """(colptr, csc_row, csc_eid), built once. Two threads may both build it; the results
        are equal and the later one is kept (one attribute store: atomic)."""
        if self._csc is None:
            if _compiled_graph_ops(self.col):
                csc = torch.ops.fastgat.csc_from_csr(self.rowptr, self.col, self.num_src)
            else:
                csc = _csc_by_argsort(self.rowptr, self.col, self.num_src, self.num_dst)
            launch_plan.register(csc[0], self.num_loops)
            object.__setattr__(self, "_csc", tuple(csc))
        return self._csc

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    def coo(self) -> Tuple[Tensor, Tensor]:
        """(src, dst) of the input edges in input order, int64, rebuilt from the CSR: a Graph
        keeps no copy of them (8 bytes per edge) for the few paths that need them."""
        slots = torch.arange(self.num_edges, device=self.col.device, dtype=self.rowptr.dtype)
        row = torch.searchsorted(self.rowptr, slots, right=True) - 1
        col = self.col.long()
        row = torch.where(row == self.num_dst, col, row.long())  # dead slots: dropped loops
        perm = self.perm.long()
        return torch.empty_like(col).scatter_(0, perm, col), torch.empty_like(col).scatter_(
            0, perm, row)

    def loop_bins(self, src: Tensor, dst: Tensor) -> Tensor:
        """Per input edge (src, dst from coo()), the self loop whose fill value it feeds, or
        num_loops for none."""
        return torch.where((dst < self.num_loops) & (src != dst), dst, self.num_loops)

    @classmethod
    def from_coo(cls, src: Tensor, dst: Tensor, num_src: int, num_dst: int, *,
                 drop_self_loops: bool, num_loops: int = 0, validate: bool = True) -> "Graph":
        """Sort edges (src[e] -> dst[e]) for the op. `validate` checks index ranges once,
        at the cost of one host sync; skip it only for edges already known to be valid
        (out-of-range indices then make the kernels read out of bounds)."""
        if src.shape != dst.shape or src.dim() != 1:
            raise ValueError("src and dst must be 1-D tensors of equal length")
        if not 0 <= num_loops <= min(num_src, num_dst):
            raise ValueError(f"num_loops={num_loops} must lie in [0, min(num_src, num_dst)]")
        index_dtype = (torch.int32 if max(num_src, num_dst, src.numel()) <= _INT32_MAX
                       else torch.int64)
        if _compiled_graph_ops(src):  # validates while it reads, whatever `validate` says
            try:
                rowptr, col, perm = torch.ops.fastgat.csr_from_coo(src, dst, num_src, num_dst,
                                                                   drop_self_loops, index_dtype)
            except RuntimeError as error:  # the compiled library raises RuntimeError only
                message = str(error)
                if _OUT_OF_RANGE not in message:
                    raise
                raise IndexError(message[message.index(_OUT_OF_RANGE):]) from None
            return cls(rowptr, col, perm, num_src, num_dst, num_loops, drop_self_loops)
        src, dst = src.long(), dst.long()
        if validate and src.numel() > 0:
            _check_range(src, num_src, "source")
            _check_range(dst, num_dst, "destination")
        dead = src == dst if drop_self_loops else torch.zeros_like(src, dtype=torch.bool)
        dst_key = torch.where(dead, num_dst, dst)
        perm = torch.argsort(dst_key * num_src + src, stable=True)
        rowptr = _pointer(dst_key[perm], num_dst)
        # Copies, so a Graph neither aliases nor keeps alive the caller's edge tensor.
        to_index = lambda x: x.to(index_dtype, copy=True).contiguous()  # noqa: E731
        return cls(to_index(rowptr), to_index(src[perm]), to_index(perm), num_src, num_dst,
                   num_loops, drop_self_loops)

    def op_args(self, csc: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The op's index tensors; csc=False passes empty ones for a call that no backward
        will follow (the forward never reads the CSC)."""
        if csc:
            return (self.rowptr, self.col, *self.csc())
        empty = self.col.new_empty(0)
        return self.rowptr, self.col, empty, empty, empty

    def edge_slots(self) -> Tensor:
        """(E,) the CSR slot of each input edge (the inverse of perm), int64."""
        perm = self.perm.long()
        return torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(),
                                                                     device=perm.device))


# Read access to the CSC by name; set after the dataclass is made, since a property in the class
# body would become the InitVars' default (dataclasses.replace(graph, colptr=...) still works).
Graph.colptr = property(lambda self: self.csc()[0], doc="(N_src + 1) CSC pointers")
Graph.csc_row = property(lambda self: self.csc()[1], doc="(E) destination of each CSC entry")
Graph.csc_eid = property(lambda self: self.csc()[2], doc="(E) CSR slot of each CSC entry")


def _compiled_graph_ops(like: Tensor) -> bool:
    """Whether the counting sorts of csrc/cpu/graph_cpu.cpp serve tensors like `like`."""
    return (LOAD_ERROR is None and like.device.type == "cpu"
            and not torch.compiler.is_compiling())


def _csc_by_argsort(rowptr: Tensor, col: Tensor, num_src: int, num_dst: int):
    """csc_from_csr of csrc/cpu/graph_cpu.cpp in torch ops (static shapes: no host sync)."""
    slots = torch.arange(col.numel(), device=col.device, dtype=rowptr.dtype)
    row = (torch.searchsorted(rowptr, slots, right=True) - 1).long()
    col = col.long()
    dead = row == num_dst
    src_key = torch.where(dead, num_src, col)
    csc_eid = torch.argsort(src_key, stable=True)  # slots in order: by destination per source
    colptr = _pointer(src_key[csc_eid], num_src)
    csc_row = torch.where(dead, col, row)[csc_eid]  # a dead slot is a loop: dst = src
    return tuple(x.to(rowptr.dtype).contiguous() for x in (colptr, csc_row, csc_eid))


def _pointer(sorted_key: Tensor, num_rows: int) -> Tensor:
    """rowptr from a sorted key whose entries equal to num_rows are dead (left past the end)."""
    counts = torch.zeros(num_rows + 1, dtype=torch.long, device=sorted_key.device)
    counts.scatter_add_(0, sorted_key, torch.ones_like(sorted_key))
    return torch.cat([counts.new_zeros(1), counts[:num_rows].cumsum(0)])


def assert_in_range_async(src: Tensor, dst: Tensor, num_src: int, num_dst: int) -> None:
    """The range check without a host sync (for torch.compile): a CPU tensor raises at once,
    a CUDA tensor trips a device-side assert instead of reading out of bounds."""
    ok = ((src >= 0) & (src < num_src) & (dst >= 0) & (dst < num_dst)).all()
    torch._assert_async(ok, "edge_index holds a node index outside [0, num_nodes)")


# How an out-of-range index error begins, here and in csrc/cpu/graph_cpu.cpp.
_OUT_OF_RANGE = "edge_index holds "


def _check_range(index: Tensor, bound: int, what: str) -> None:
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= bound:
        bad = low if low < 0 else high
        raise IndexError(f"{_OUT_OF_RANGE}{what} node index {bad}, outside [0, {bound - 1}] "
                         f"({bound} {what} nodes)")


def coo_of(edge_index) -> Tuple[Tensor, Tensor]:
    """(src, dst) in the caller's edge order for every edge form FastGATConv accepts."""
    if isinstance(SparseTensor, type) and isinstance(edge_index, SparseTensor):
        dst, src, _ = edge_index.coo()  # adj_t: rows are destinations
        return src, dst
    if isinstance(edge_index, Tensor) and edge_index.layout != torch.strided:
        from torch_geometric.utils import to_edge_index
        (dst, src), _ = to_edge_index(edge_index)  # adj_t: rows are destinations
        return src, dst
    if not isinstance(edge_index, Tensor):
        raise EdgeIndexTypeError(f"edge_index must be a Tensor, EdgeIndex, SparseTensor or "
                                 f"torch.sparse tensor, got {type(edge_index).__name__}")
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise EdgeIndexTypeError(f"edge_index must hold integers, got dtype {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise InputShapeError(f"edge_index must have shape (2, num_edges), got "
                              f"{tuple(edge_index.shape)}")
    if hasattr(edge_index, "as_tensor"):  # PyG EdgeIndex
        edge_index = edge_index.as_tensor()
    return edge_index[0], edge_index[1]


_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_CACHE_SIZE = 16
# Guards _CACHE: layers run from several threads (data loaders, serving) share it.
_LOCK = threading.Lock()
_DEAD: list = []  # weak references whose entries a callback could not drop at once


def _forget(ref, key) -> None:
    """Weakref callback: drop the entry of a dead edge object. It may fire in any thread,
    also inside a locked section of this one (a plain Lock would deadlock), so it never waits:
    when the lock is taken, the next prepare() drops the entry."""
    if _LOCK.acquire(blocking=False):
        try:
            _drop(ref, key)
        finally:
            _LOCK.release()
    else:
        _DEAD.append((ref, key))  # list.append is atomic


def _drop(ref, key) -> None:
    """Drop `key`'s entry if it still belongs to `ref` (a new object may reuse the id)."""
    entry = _CACHE.get(key)
    if entry is not None and entry[0] is ref:
        del _CACHE[key]


def _version(edge_index):
    """What tells an edited edge object: its version counter, or for an inference tensor
    (which has none) a copy of its values."""
    if not isinstance(edge_index, Tensor):
        return None
    if edge_index.is_inference():
        return edge_index.clone()
    return edge_index._version


def _unchanged(edge_index, version) -> bool:
    if isinstance(version, Tensor):  # inference tensor: compare values (O(E), no sort)
        return torch.equal(version, edge_index)
    return version == _version(edge_index)


def prepare(edge_index, num_src: int, num_dst: int, *, drop_self_loops: bool,
            num_loops: int) -> Graph:
    """The Graph of `edge_index`, built once per edge object and settings (see module doc)."""
    if isinstance(edge_index, Graph):
        return edge_index
    # A Graph built under inference_mode holds inference tensors, which autograd cannot save:
    # it serves only calls under inference_mode.
    key = (id(edge_index), num_src, num_dst, drop_self_loops, num_loops,
           torch.is_inference_mode_enabled())
    with _LOCK:
        while _DEAD:
            _drop(*_DEAD.pop())
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is edge_index and _unchanged(edge_index, hit[1]):
            _CACHE.move_to_end(key)
            return hit[2]
    # Built outside the lock, so threads sort different graphs in parallel; two threads
    # that build the same one both store it, and the later entry wins.
    src, dst = coo_of(edge_index)
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=drop_self_loops,
                           num_loops=num_loops)
    try:
        ref = weakref.ref(edge_index, lambda ref, key=key: _forget(ref, key))
    except TypeError:  # not weak-referenceable: never cached
        return graph
    with _LOCK:
        _CACHE[key] = (ref, _version(edge_index), graph)
        _CACHE.move_to_end(key)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return graph
