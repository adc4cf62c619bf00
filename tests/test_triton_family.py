"""The Triton kernels of the GATv2 and TransformerConv rules (docs/design.md §5, §10, §11)
against the float64 torch reference: forward, lse and every gradient, over graph kinds, dtypes,
head and channel counts, with and without edge values, with dropout (the reference's Philox
mask); split rows, index widths, determinism, the custom ops (opcheck) and the layers against
PyG.

One tester for the family: a rule is its name ("gatv2", "transformer"), which names the backend
module's `<rule>_forward` / `<rule>_backward`, and how its inputs are drawn. Without a GPU the
kernels run under the Triton interpreter, so the graphs are small; `gpu` tests repeat at scale.
"""
import math
import zlib

import pytest
import torch
from torch_geometric.nn import GATv2Conv, TransformerConv

from test_triton import (CHUNK, DEVICE, GPU_ONLY, assert_matches, power_law_graph,
                         skewed_graph)
from fastgat import FastGATv2Conv, FastTransformerConv, Graph
from fastgat.backends import (RULES, resolve, torch_ref, triton_kernels,
                              unavailable_reason)
from fastgat.ops import gatv2_attention_op, transformer_op
from graphs import KINDS, random_graph
from parity import IN_CHANNELS, assert_parity, features, make_pair

# Minutes, not seconds: `pytest -m "not slow"` leaves it out of the quick loop.
pytestmark = pytest.mark.slow

RULE_NAMES = ("gatv2", "transformer")
GRADS = {"gatv2": ("dxl", "dxr", "datt", "de", "de_loop"), "transformer": ("dq", "dk", "dv", "de")}


def names(rule):
    return ("out", "lse", *GRADS[rule])


def graph_of(rule, src, dst, num_src, num_dst, device=DEVICE):
    """GATv2's graphs drop the input's self loops and add implicit ones; TransformerConv's keep
    the edges as drawn."""
    loops = rule == "gatv2"
    return Graph.from_coo(src.to(device), dst.to(device), num_src, num_dst,
                          drop_self_loops=loops, num_loops=min(num_src, num_dst) if loops else 0)


def draw_inputs(rule, graph, seed, heads=3, channels=5, dtype=torch.float64, edges=True,
                loops=True, device=DEVICE):
    """(the op's tensor inputs, dout) rounded to dtype; `edges` draws e, `loops` GATv2's e_loop."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    e = rand(graph.num_edges, heads, channels) if edges else None
    if rule == "gatv2":
        primals = (rand(graph.num_src, heads, channels), rand(graph.num_dst, heads, channels),
                   rand(heads, channels), e,
                   rand(graph.num_loops, heads, channels) if loops else None)
    else:
        primals = (rand(graph.num_dst, heads, channels), rand(graph.num_src, heads, channels),
                   rand(graph.num_src, heads, channels), e)
    return primals, rand(graph.num_dst, heads, channels)


def scalars(rule, graph, channels, slope):
    """The op's arguments between the index tensors and dropout."""
    return (graph.num_loops, slope) if rule == "gatv2" else (1 / math.sqrt(channels),)


def run(module, rule, primals, dout, graph, index=None, slope=0.2, dropout=0.0, seed=None,
        saved=None):
    """Forward then explicit backward of one backend module: (out, lse, *gradients). `saved`
    replaces the (out, lse) the backward reads."""
    rowptr, col, colptr, csc_row, csc_eid = index or graph.op_args()
    attrs = scalars(rule, graph, dout.size(2), slope)
    out, lse = getattr(module, f"{rule}_forward")(*primals, rowptr, col, *attrs, dropout, seed)
    grads = getattr(module, f"{rule}_backward")(dout, *(saved or (out, lse)), *primals, rowptr,
                                                col, colptr, csc_row, csc_eid, *attrs, dropout,
                                                seed)
    return (out, lse, *grads)


def check(rule, primals, dout, graph, dtype, **kwargs):
    """Triton against the float64 reference on the same rounded inputs; the reference's backward
    reads Triton's (out, lse), so each pass is checked on its own inputs. Returns Triton's."""
    got = run(triton_kernels, rule, primals, dout, graph, **kwargs)
    double = lambda x: x.double() if x is not None else None  # noqa: E731
    want = run(torch_ref, rule, [double(x) for x in primals], dout.double(), graph,
               saved=tuple(x.double() for x in got[:2]), **kwargs)
    assert got[1].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_matches(got, want, dtype, names(rule))
    return got


def seed_of(*key):
    return zlib.crc32(repr(key).encode()) % 1000


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_graph_kinds_against_the_reference(rule, kind):
    """Every graph kind (isolated nodes, duplicates, dropped self loops, a hub row longer than
    CHUNK, bipartite, empty), with edge values and dropout on alternate kinds."""
    case = seed_of(rule, kind)
    graph = graph_of(rule, *random_graph(kind, case))
    index = KINDS.index(kind)
    primals, dout = draw_inputs(rule, graph, case, edges=index % 2 == 0, loops=index % 4 < 2)
    dropout = 0.3 if index % 3 == 0 else 0.0
    got = check(rule, primals, dout, graph, torch.float64, dropout=dropout,
                seed=torch.tensor([case], device=DEVICE))
    if primals[3] is not None:  # de is zero on dead slots (the dropped self loops)
        de = got[2 + GRADS[rule].index("de")]
        assert de[int(graph.rowptr[-1]):].eq(0).all()


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_split_rows_merge_and_backward_is_bitwise_deterministic(rule, dropout):
    graph = skewed_graph(seed=7, num_nodes=12, num_edges=30, loops=rule == "gatv2")
    assert triton_kernels.plan(graph.rowptr, graph.num_edges).split_rows.lt(graph.num_dst).any()
    assert triton_kernels.plan(graph.colptr, graph.num_edges).split_rows.lt(graph.num_src).any()
    primals, dout = draw_inputs(rule, graph, seed=8, edges=dropout > 0)
    kwargs = dict(dropout=dropout, seed=torch.tensor([2**33 + 7], device=DEVICE))
    got = check(rule, primals, dout, graph, torch.float64, **kwargs)
    for name, a, b in zip(names(rule), got, run(triton_kernels, rule, primals, dout, graph,
                                                **kwargs)):
        assert torch.equal(a, b), name  # no atomics: bitwise deterministic


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_against_float64(rule, dtype):
    graph = skewed_graph(seed=3, num_nodes=12, num_edges=30, dst_hub=CHUNK + 5, src_hub=CHUNK + 3,
                         loops=rule == "gatv2")
    primals, dout = draw_inputs(rule, graph, seed=4, heads=2, channels=8, dtype=dtype)
    check(rule, primals, dout, graph, dtype, dropout=0.2, seed=torch.tensor([11], device=DEVICE))


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("heads,channels,slope", [(1, 1, 0.2), (2, 7, -0.5), (2, 33, 1.7)])
def test_heads_and_channels_not_powers_of_two(rule, heads, channels, slope):
    """C = 1, an odd C and a C padded past one 32-wide tile; any LeakyReLU slope (GATv2)."""
    graph = skewed_graph(seed=heads, num_nodes=12, num_edges=30, dst_hub=CHUNK + 1, src_hub=0,
                         loops=rule == "gatv2")
    primals, dout = draw_inputs(rule, graph, seed=channels, heads=heads, channels=channels)
    check(rule, primals, dout, graph, torch.float64, slope=slope, dropout=0.1,
          seed=torch.tensor([heads * 1000 + channels], device=DEVICE))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_int64_indices_and_wide_offsets_are_bitwise_equal(rule, monkeypatch):
    graph = skewed_graph(seed=5, num_nodes=12, num_edges=30, dst_hub=CHUNK + 9, src_hub=CHUNK + 2,
                         loops=rule == "gatv2")
    primals, dout = draw_inputs(rule, graph, seed=6, heads=2, channels=3, dtype=torch.float32)
    kwargs = dict(dropout=0.25, seed=torch.tensor([3], device=DEVICE))
    base = run(triton_kernels, rule, primals, dout, graph, **kwargs)
    wide_index = tuple(x.long() for x in graph.op_args())
    monkeypatch.setattr(triton_kernels, "_INT32_LIMIT", 1)  # forces the int64 offset path
    for index in (graph.op_args(), wide_index):
        got = run(triton_kernels, rule, primals, dout, graph, index, **kwargs)
        for name, a, b in zip(names(rule), base, got):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("rule,op", [("gatv2", gatv2_attention_op),
                                     ("transformer", transformer_op)])
def test_opcheck(rule, op):
    graph = graph_of(rule, *random_graph("duplicates", 5, num_nodes=10, num_edges=24))
    primals, _ = draw_inputs(rule, graph, seed=5, heads=2, channels=3, dtype=torch.float32)
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in primals]
    torch.library.opcheck(op, (*leaves, *graph.op_args(), *scalars(rule, graph, 3, 0.2), 0.25,
                               torch.tensor([9], device=DEVICE), "triton"))


def test_the_rules_list_triton():
    for rule in RULE_NAMES:
        assert "triton" in RULES[rule]
        assert resolve("triton", DEVICE, rule) == "triton"


@pytest.mark.gpu
@GPU_ONLY
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_gpu_auto_picks_cuda_then_triton(rule):
    want = "cuda" if not unavailable_reason("cuda", "cuda", rule) else "triton"
    assert resolve("auto", "cuda", rule) == want


LAYERS = {"gatv2": (GATv2Conv, FastGATv2Conv), "transformer": (TransformerConv,
                                                                FastTransformerConv)}


@pytest.mark.parametrize("rule,config,kind", [
    ("gatv2", dict(heads=2, edge_dim=3, fill_value="max", share_weights=True), "hub"),
    ("gatv2", dict(heads=2, negative_slope=-0.7), "bipartite"),
    ("transformer", dict(heads=2, edge_dim=3, beta=True), "hub"),
    ("transformer", dict(heads=3, concat=False), "bipartite"),
])
def test_layer_matches_pyg(rule, config, kind):
    """The layer with backend='triton' against PyG's with copied weights, in float64: outputs,
    attention weights and the gradients of the input and every parameter."""
    src, dst, num_src, num_dst = random_graph(kind, seed_of(rule, kind))
    bipartite = kind == "bipartite"
    in_channels = (IN_CHANNELS, IN_CHANNELS + 1) if bipartite else IN_CHANNELS
    pyg, fast = make_pair(*LAYERS[rule], config, in_channels, backend="triton")
    x, edge_attr = features(3, num_src, num_dst, src.numel(), bipartite)
    assert_parity(pyg, fast, x, torch.stack([src, dst]),
                  edge_attr if "edge_dim" in config else None)


@pytest.mark.gpu
@GPU_ONLY
@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads,channels", [(4, 32), (3, 20)])
def test_gpu_power_law_graph(rule, dtype, heads, channels):
    graph = power_law_graph(20_000, 300_000, seed=heads, device="cuda", loops=rule == "gatv2")
    assert int(torch.diff(graph.rowptr).max()) > 8 * CHUNK  # hub rows split
    primals, dout = draw_inputs(rule, graph, seed=channels, heads=heads, channels=channels,
                                dtype=dtype, device="cuda")
    kwargs = dict(dropout=0.1, seed=torch.tensor([77], device="cuda"))
    got = check(rule, primals, dout, graph, dtype, **kwargs)
    for name, a, b in zip(names(rule), got, run(triton_kernels, rule, primals, dout, graph,
                                                **kwargs)):
        assert torch.equal(a, b), name
