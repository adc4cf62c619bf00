"""Launch facts of a prepared graph, computed once per pointer array (docs/design.md §6).

The GPU backends cut long segments (a CSR row's in-edges, a CSC column's out-edges) into
chunks whose partial results merge in order. From shapes alone they can only bound the chunk
count, so they size partial buffers for the worst case (E H C / 128 elements and more) and
launch the split machinery (chunk counts, their scan, chunk and merge kernels) on every call.
A `Graph` registers its pointer arrays here, and the first backend that asks reads the long
segments once (`hubs`: one host read, a sync on a GPU, once per graph): then buffers are sized
to the chunks that exist and nothing is launched for splitting when no segment is long.

Only a Graph's own pointer arrays are registered, outside torch.compile: a graph built inside
a compiled region keeps the bound-based path, with no host sync. An entry dies with its tensor
and is ignored once the tensor's version counter moves (an in-place write).
"""
from typing import Callable, Optional, TypeVar

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

# No backend splits a segment of at most this many entries: Triton's chunk is 64 edges under
# its CPU interpreter and 256 when compiled, CUDA's split length at least 256.
MIN_SPLIT = 64

_entries = WeakTensorKeyDictionary()
T = TypeVar("T")


class _Entry:
    __slots__ = ("num_loops", "version", "hubs", "derived")

    def __init__(self, num_loops: int, version: Optional[int]):
        self.num_loops, self.version = num_loops, version
        self.hubs: Optional[Tensor] = None
        self.derived = {}


def _version(ptr: Tensor) -> Optional[int]:
    return None if ptr.is_inference() else ptr._version


def register(ptr: Tensor, num_loops: int) -> None:
    """Mark `ptr` (rowptr or colptr of a Graph whose first `num_loops` nodes have implicit self
    loops) as a graph's pointer array that backends may plan for."""
    if ptr.numel() > 1 and not torch.compiler.is_compiling():
        _entries[ptr] = _Entry(num_loops, _version(ptr))


def _entry(ptr: Tensor) -> Optional[_Entry]:
    entry = _entries.get(ptr)
    if entry is None or entry.version != _version(ptr):
        return None
    return entry


def hubs(ptr: Tensor) -> Optional[Tensor]:
    """For a registered pointer array, every segment with more than MIN_SPLIT entries as a CPU
    int64 (k, 2) tensor of (edges, has implicit loop), most edges first; None for any other
    tensor (the caller then plans from shapes alone)."""
    entry = _entry(ptr)
    if entry is None:
        return None
    if entry.hubs is None:
        degree = (ptr[1:] - ptr[:-1]).long()
        loops = torch.zeros_like(degree)
        loops[:entry.num_loops] = 1
        long = (degree + loops > MIN_SPLIT).nonzero().squeeze(1)
        table = torch.stack([degree[long], loops[long]], dim=1).cpu()
        entry.hubs = table[torch.argsort(table[:, 0], descending=True, stable=True)]
    return entry.hubs


def derived(ptr: Tensor, key: str, build: Callable[[Tensor], T]) -> Optional[T]:
    """build(hubs) for a registered pointer array, made once and kept with its entry (a
    backend's tables); None for any other tensor."""
    table = hubs(ptr)
    if table is None:
        return None
    entry = _entries[ptr]
    if key not in entry.derived:
        entry.derived[key] = build(table)
    return entry.derived[key]
