"""The two targets of the CUDA kernel tests, for every rule's test module: `cuda` (the kernels of
fastgat._C on a GPU, marked gpu) and `emulated` (the same sources on the SIMT emulator, marked
emulated; tests/emulated_cuda.py), with the graphs those tests build on either target. A pytest
plugin of conftest.py: its fixtures `target` and `sms` serve every test module."""
import dataclasses

import pytest
import torch

import emulated_cuda
from fastgat import launch_plan
from fastgat.backends import unavailable_reason
from fastgat.graph import Graph
from graphs import random_graph


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    device: str

    @property
    def ops(self):
        return torch.ops.fastgat if self.name == "cuda" else torch.ops.fastgat_emulated

    def sized(self, gpu, emulated):
        return gpu if self.name == "cuda" else emulated


TARGETS = [pytest.param(Target("cuda", "cuda"), id="cuda", marks=pytest.mark.gpu),
           pytest.param(Target("emulated", "cpu"), id="emulated", marks=pytest.mark.emulated)]


@pytest.fixture(params=TARGETS)
def target(request):
    target = request.param
    if target.name == "cuda":
        reason = unavailable_reason("cuda", "cuda")
        if reason:
            pytest.skip(reason)
    else:
        emulated_cuda.load()
    return target


@pytest.fixture
def sms(target, request):
    """A pretend SM count for the emulated launch plan (the GPU has its own)."""
    count = getattr(request, "param", 132)
    if target.name == "emulated":
        previous = target.ops.set_num_sms(count)
        yield count
        target.ops.set_num_sms(previous)
    else:
        yield count


def hubs(graph, planned=True):
    """(row_hubs, col_hubs) as the layers pass them (fastgat/launch_plan.py), or none: the
    kernels then plan from shapes alone, as under torch.compile."""
    if not planned:
        return None, None
    return launch_plan.hubs(graph.rowptr), launch_plan.hubs(graph.colptr)


def coo_graph(target, src, dst, num_src, num_dst, loops=True):
    return Graph.from_coo(src.to(target.device), dst.to(target.device), num_src, num_dst,
                          drop_self_loops=loops, num_loops=min(num_src, num_dst) if loops else 0)


def graph_of(target, kind, seed, loops=True, **sizes):
    return coo_graph(target, *random_graph(kind, seed, **sizes), loops=loops)


def with_int64_indices(graph):
    return dataclasses.replace(graph, rowptr=graph.rowptr.long(), col=graph.col.long(),
                               colptr=graph.colptr.long(), csc_row=graph.csc_row.long(),
                               csc_eid=graph.csc_eid.long())


def hub_graph(target, seed, transpose=False, **sizes):
    """graphs.py's "hub" graph: a node with hub_degree in-edges, or out-edges with `transpose`
    (the backward's CSC pass then holds the long column)."""
    src, dst, num_src, num_dst = random_graph("hub", seed, **sizes)
    if transpose:
        src, dst, num_src, num_dst = dst, src, num_dst, num_src
    return coo_graph(target, src, dst, num_src, num_dst)


def assert_int64_indices_agree(graph, forward, backward):
    """forward(graph) -> (out, lse) and backward(dout, out, lse, graph) -> gradients give the
    same bits with the graph's int64 copy as with its int32 indices."""
    graph64 = with_int64_indices(graph)
    assert graph.rowptr.dtype == torch.int32 and graph64.csc_eid.dtype == torch.int64
    out, lse = forward(graph)
    out64, lse64 = forward(graph64)
    assert torch.equal(out, out64) and torch.equal(lse, lse64)
    dout = torch.randn(out.shape).to(out.dtype)
    for a, b in zip(backward(dout, out, lse, graph), backward(dout, out, lse, graph64)):
        assert torch.equal(a, b)


def assert_backward_repeats(forward, backward):
    """Two runs of backward(dout, out, lse) on forward()'s results give the same bits."""
    out, lse = forward()
    dout = torch.randn(out.shape).to(out.dtype)
    for a, b in zip(backward(dout, out, lse), backward(dout, out, lse)):
        assert torch.equal(a, b)


def star_rows(target, entries, num_nodes, seed=0, transpose=False):
    """Random background edges plus rows 0, 1, ... with exactly entries[r] in-edges counting
    the self loop (out-edges with `transpose`: the backward splits columns). With ~1 edge per
    node the split length is its floor of 256, so entries around 256 and 512 land on chunk
    boundaries."""
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(1, num_nodes, (num_nodes,), generator=g)]
    dst = [torch.randint(len(entries), num_nodes, (num_nodes,), generator=g)]
    for row, count in enumerate(entries):
        others = torch.randperm(num_nodes, generator=g)
        others = others[others != row][: count - 1]  # distinct sources, no self loop
        src.append(others)
        dst.append(torch.full_like(others, row))
    src, dst = torch.cat(src), torch.cat(dst)
    if transpose:
        src, dst = dst, src
    return coo_graph(target, src, dst, num_nodes, num_nodes)
