"""fastgat/launch_plan.py: which pointer arrays get a plan, what `hubs` lists, and the Triton item
tables built from it (the CUDA kernels' use of it: test_cuda_launch_plan.py)."""
import torch

from fastgat import launch_plan
from fastgat.backends import triton_kernels
from fastgat.graph import Graph

CHUNK = triton_kernels.CHUNK


def star_graph(degrees, num_nodes=400, num_loops=0):
    """Row r receives degrees[r] edges from distinct sources, none a self loop; other rows
    none."""
    src, dst = [], []
    for row, degree in enumerate(degrees):
        others = torch.arange(num_nodes)
        others = others[others != row][:degree]
        src.append(others)
        dst.append(torch.full_like(others, row))
    return Graph.from_coo(torch.cat(src), torch.cat(dst), num_nodes, num_nodes,
                          drop_self_loops=True, num_loops=num_loops)


def test_hubs_lists_every_long_segment_most_edges_first():
    graph = star_graph([64, 65, 300, 63, 200], num_loops=4)
    # Entries count the implicit loop of rows < num_loops: 64 + 1 is long, 63 + 1 is not.
    expected = torch.tensor([[300, 1], [200, 0], [65, 1], [64, 1]])
    assert torch.equal(launch_plan.hubs(graph.rowptr), expected)
    columns = launch_plan.hubs(graph.colptr)  # every out-degree is at most 6
    assert columns.shape == (0, 2) and columns.dtype == torch.int64


def test_only_a_graphs_own_unmodified_pointer_arrays_are_planned(monkeypatch):
    graph = star_graph([100])
    assert launch_plan.hubs(graph.rowptr.clone()) is None
    rowptr = graph.rowptr
    assert launch_plan.hubs(rowptr) is not None
    rowptr.add_(0)  # an in-place write: the plan no longer describes the tensor
    assert launch_plan.hubs(rowptr) is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert launch_plan.hubs(star_graph([100]).rowptr) is None  # built inside torch.compile


def test_triton_tables_of_a_planned_graph_are_exact():
    """Exact sizes: no idle items, a partial state per chunk of a split row and nothing more;
    the same item and split tables as the plan from shapes alone, without its idle tail."""
    degrees = [0, CHUNK, CHUNK + 1, 5 * CHUNK, 3, 2 * CHUNK + 7]
    graph = star_graph(degrees, num_nodes=6 * CHUNK)
    exact = triton_kernels.plan(graph.rowptr, graph.num_edges)
    assert exact is triton_kernels.plan(graph.rowptr, graph.num_edges)  # built once per graph
    bound = triton_kernels.plan(graph.rowptr.clone(), graph.num_edges)
    num_rows = graph.num_dst
    assert not exact.item_row.eq(num_rows).any()
    assert torch.equal(exact.item_row, bound.item_row[bound.item_row < num_rows])
    assert torch.equal(exact.split_rows, bound.split_rows[bound.split_rows < num_rows])
    assert exact.split_rows.tolist() == [2, 3, 5]
    assert exact.num_parts == int(exact.split_ptr[-1]) == 2 + 5 + 3 < bound.num_parts
    assert torch.equal(exact.item_ptr, bound.item_ptr)
    assert torch.equal(exact.split_ptr, bound.split_ptr)


def test_triton_tables_of_a_graph_without_long_rows_have_no_split():
    graph = star_graph([CHUNK, 10], num_nodes=2 * CHUNK)
    exact = triton_kernels.plan(graph.rowptr, graph.num_edges)
    assert exact.split_rows.numel() == 0 and exact.num_parts == 0
    assert torch.equal(exact.item_row, torch.arange(graph.num_dst, dtype=exact.item_row.dtype))
