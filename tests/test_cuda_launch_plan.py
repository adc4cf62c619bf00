"""The CUDA kernels' launch plan with a graph's long segments (fastgat/launch_plan.py) against
the plan from shapes alone (no hubs, as under torch.compile), on both targets of
cuda_targets.py: the same split lengths, so the same bits, with buffers sized to the chunks that
exist (the emulator allocates them exactly and runs under ASan: an undersized buffer fails), and
no split machinery launched when no segment splits."""
import pytest
import torch

import test_cuda
import test_cuda_gatv2
import test_cuda_transformer
from cuda_targets import graph_of, hub_graph, star_rows

RULES = {  # module, whether the graph has implicit self loops
    "gat": (test_cuda, True),
    "gatv2": (test_cuda_gatv2, True),
    "transformer": (test_cuda_transformer, False),
}


def run(rule, target, graph, planned, dropout):
    module, _ = RULES[rule]
    inputs = module.make_inputs(target, graph, 5, heads=2, channels=8, dtype=torch.float32)
    seed = torch.tensor([2**33 + 3], device=target.device) if dropout else None
    out, lse = module.forward(target, inputs, graph, dropout, seed, planned=planned)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(6)).to(out)
    return [out, lse, *module.backward(target, dout, out, lse, inputs, graph, dropout, seed,
                                       planned=planned)]


def split_graph(target, shape, loops):
    if shape == "boundaries":  # rows of 255..257 and 511..513 entries
        return star_rows(target, [255, 256, 257, 511, 512, 513], target.sized(2000, 600))
    graph = hub_graph(target, 3, transpose=shape == "hub-out", num_nodes=300, num_edges=900,
                      hub_degree=target.sized(20_000, 3_000))
    return graph if loops else type(graph).from_coo(
        *graph.coo(), graph.num_src, graph.num_dst, drop_self_loops=False)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("shape", ["boundaries", "hub-in", "hub-out"])
@pytest.mark.parametrize("rule", RULES)
def test_planned_launch_gives_the_bits_of_the_bound_plan(target, rule, shape, dropout):
    graph = split_graph(target, shape, RULES[rule][1])
    planned = run(rule, target, graph, True, dropout)
    bound = run(rule, target, graph, False, dropout)
    for a, b in zip(planned, bound):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rule", RULES)
def test_no_split_machinery_when_no_segment_splits(target, rule):
    """A graph of more than 256 edges whose segments all stay under the split length: the plan
    from shapes alone must provide for a split (count, scan, chunk and merge launches); the
    planned forward launches the row kernel alone, and the backward fewer kernels too."""
    if target.name != "emulated":
        pytest.skip("launches are counted by the emulator")
    graph = graph_of(target, "random", 4, loops=RULES[rule][1], num_nodes=300, num_edges=900)
    module, _ = RULES[rule]
    inputs = module.make_inputs(target, graph, 5, heads=2, channels=8, dtype=torch.float32)
    counts = {}
    for planned in (True, False):
        before = target.ops.launch_count()
        out, lse = module.forward(target, inputs, graph, planned=planned)
        middle = target.ops.launch_count()
        module.backward(target, torch.ones_like(out), out, lse, inputs, graph, planned=planned)
        counts[planned] = (middle - before, target.ops.launch_count() - middle)
    assert counts[True][0] == 1 < counts[False][0]
    if rule != "gatv2":  # GATv2's backward passes never split
        assert counts[True][1] < counts[False][1]
