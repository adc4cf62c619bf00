"""The three layer families that tests/test_layer_family.py runs its shared checks over:
FastGATConv, FastGATv2Conv and FastTransformerConv beside their PyG twins, the configurations
each check uses per family, and, for the GATv2 and TransformerConv ops, their inputs, call and
float64 reference (the GAT op has its own tests in test_op.py)."""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch_geometric.nn import GATConv, GATv2Conv, TransformerConv

from fastgat import FastGATConv, FastGATv2Conv, FastTransformerConv, Graph
from fastgat.backends import torch_ref
from fastgat.ops import gatv2_attention, transformer_attention
from graphs import random_graph
from helpers import backends
from parity import IN_CHANNELS, OUT_CHANNELS, make_pair

HEADS, CHANNELS = 3, 5  # of the op inputs: C not a power of two
NEGATIVE_SLOPE = 0.2  # GATv2Conv's default


def gatv2_op_inputs(kind, seed, dtype=torch.float64, edges=True, loops=True):
    """((xl, xr, att, e, e_loop), graph) for fastgat::gatv2_attention, drawn from `seed`."""
    src, dst, num_src, num_dst = random_graph(kind, seed)
    num_loops = min(num_src, num_dst) if loops else 0
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=loops,
                           num_loops=num_loops)
    g = torch.Generator().manual_seed(seed + 1)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    xl, xr = rand(num_src, HEADS, CHANNELS), rand(num_dst, HEADS, CHANNELS)
    e = rand(graph.num_edges, HEADS, CHANNELS) if edges else None
    e_loop = rand(num_loops, HEADS, CHANNELS) if edges and loops else None
    return (xl, xr, rand(HEADS, CHANNELS), e, e_loop), graph


def run_gatv2_op(inputs, graph, backend, dropout=0.0, seed=None, slope=NEGATIVE_SLOPE):
    return gatv2_attention(*inputs, *graph.op_args(), graph.num_loops, slope, dropout, seed,
                           backend)


def gatv2_reference(inputs, graph, dropout, seed):
    return torch_ref.gatv2_forward(*inputs, graph.rowptr, graph.col, graph.num_loops,
                                   NEGATIVE_SLOPE, dropout, seed)


def transformer_op_inputs(kind, seed, dtype=torch.float64, edge_values=True, heads=HEADS,
                          channels=CHANNELS, graph_size=()):
    """((q, k, v, e), graph) for fastgat::transformer_attention, drawn from `seed`."""
    src, dst, num_src, num_dst = random_graph(kind, seed, *graph_size)
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=False)
    g = torch.Generator().manual_seed(seed + 1)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    q, k, v = rand(num_dst, heads, channels), rand(num_src, heads, channels), \
        rand(num_src, heads, channels)
    e = rand(graph.num_edges, heads, channels) if edge_values else None
    return (q, k, v, e), graph


def run_transformer_op(inputs, graph, backend, dropout=0.0, seed=None):
    return transformer_attention(*inputs, *graph.op_args(), 1 / math.sqrt(inputs[0].size(2)),
                                 dropout, seed, backend)


def transformer_reference(inputs, graph, dropout, seed):
    return torch_ref.transformer_forward(*inputs, graph.rowptr, graph.col,
                                         1 / math.sqrt(inputs[0].size(2)), dropout, seed)


@dataclass(frozen=True)
class OpCheck:
    """An attention op against its float64 reference: `inputs(kind, seed, dtype, **options)`,
    `run(inputs, graph, backend, dropout, seed)` and `reference(inputs, graph, dropout, seed)`
    (both give (out, lse)), over `cases` of (dtype, options, dropout) per graph kind."""
    inputs: Callable
    run: Callable
    reference: Callable
    cases: Sequence[Tuple[torch.dtype, dict, float]]


@dataclass(frozen=True)
class Family:
    """A fast layer, its PyG twin and what each shared check runs it with."""
    rule: str  # its name in fastgat.backends (which backends implement it), and its test id
    fast_cls: type
    pyg_cls: type
    backends: Sequence[str]  # of the parity grid, the dropout, gradient-penalty and op checks
    configs: Sequence[dict]  # test_parity_with_pyg's grid: each over every non-bipartite kind
    bipartite_configs: Sequence[dict]
    edge_config: dict  # with edge features: the hub, the gradient penalty and torch.compile
    dropout_one_config: dict
    checkpoint_configs: Sequence[dict]
    input_configs: Sequence[dict]  # test_input_forms_agree's layers, for each of its `layouts`
    layouts: Sequence[str]
    op: Optional[OpCheck] = None

    @property
    def uninterpreted_backends(self):
        """`backends` less Triton under its CPU interpreter, for the larger graphs."""
        return backends(rule=self.rule, interpreted=False)

    def pair(self, config, in_channels=IN_CHANNELS, backend="torch", dtype=torch.float64):
        """(PyG layer, fast layer) built from `config`, the fast one with the PyG one's weights."""
        return make_pair(self.pyg_cls, self.fast_cls, config, in_channels, OUT_CHANNELS, backend,
                         dtype)


# The options GATConv and GATv2Conv share, for test_parity_with_pyg.
GAT_OPTIONS = [
    dict(heads=1),
    dict(heads=3, concat=False),
    # PyG allows any slope: the derivative branches on the LeakyReLU's input, not its output.
    dict(heads=2, negative_slope=-0.7),
    dict(heads=2, add_self_loops=False),
    dict(heads=2, edge_dim=3),
    dict(heads=2, edge_dim=3, fill_value="add"),
    dict(heads=2, edge_dim=3, fill_value="max"),
    dict(heads=2, edge_dim=3, fill_value="min"),
    dict(heads=2, edge_dim=3, fill_value="mul"),
    dict(heads=2, edge_dim=3, fill_value=0.5),
    dict(heads=2, edge_dim=3, fill_value=torch.tensor([1.0, -2.0, 0.5])),
    dict(heads=2, edge_dim=3, add_self_loops=False),
    dict(heads=2, bias=False, residual=True),
]
GAT_BIPARTITE_OPTIONS = [dict(heads=2), dict(heads=2, edge_dim=3, residual=True),
                         dict(heads=2, add_self_loops=False, concat=False)]

GAT = Family(
    rule="gat", fast_cls=FastGATConv, pyg_cls=GATConv,
    # The Triton interpreter runs here too (marked slow), on a third of the parity grid.
    backends=backends(),
    configs=GAT_OPTIONS + [dict(heads=2, concat=False, residual=True, edge_dim=3)],
    bipartite_configs=GAT_BIPARTITE_OPTIONS,
    edge_config=dict(heads=2, edge_dim=3),
    dropout_one_config=dict(heads=2, dropout=1.0, residual=True),
    checkpoint_configs=[dict(heads=3, edge_dim=2, residual=True)],
    input_configs=[dict(heads=2), dict(heads=2, add_self_loops=False)],
    layouts=["edge_index", "csr", "coo"],
)

GATV2 = Family(
    rule="gatv2", fast_cls=FastGATv2Conv, pyg_cls=GATv2Conv,
    # Triton runs its own, smaller grid in test_triton_family.py: these grids, and the op's
    # gradcheck (a launch per Jacobian column), take hours under the Triton interpreter.
    backends=backends(rule="gatv2", interpreted=False),
    configs=GAT_OPTIONS + [
        dict(heads=2, share_weights=True),
        dict(heads=2, concat=False, residual=True, edge_dim=3, share_weights=True),
    ],
    bipartite_configs=GAT_BIPARTITE_OPTIONS + [dict(heads=2, edge_dim=3, fill_value="min",
                                                    bias=False)],
    edge_config=dict(heads=2, edge_dim=3),
    dropout_one_config=dict(heads=2, dropout=1.0, residual=True),
    checkpoint_configs=[dict(heads=3, edge_dim=2, residual=True),
                        dict(heads=2, share_weights=True)],
    input_configs=[dict(heads=2), dict(heads=2, add_self_loops=False)],
    layouts=["edge_index", "csr", "coo"],
    op=OpCheck(gatv2_op_inputs, run_gatv2_op, gatv2_reference, cases=[
        (dtype, dict(edges=edges, loops=loops), dropout)
        for dtype in (torch.float64, torch.float32)
        for edges, loops, dropout in [(True, True, 0.0), (False, False, 0.0), (True, True, 0.3),
                                      (False, True, 0.0)]]),
)

TRANSFORMER = Family(
    rule="transformer", fast_cls=FastTransformerConv, pyg_cls=TransformerConv,
    backends=backends(rule="transformer", interpreted=False),  # as GATv2's
    configs=[
        dict(heads=1),
        dict(heads=3, concat=False),
        dict(heads=2, beta=True),
        dict(heads=2, beta=True, concat=False),
        dict(heads=2, root_weight=False),
        dict(heads=2, bias=False),
        dict(heads=2, edge_dim=3),
        dict(heads=2, edge_dim=3, beta=True, bias=False),
        dict(heads=3, edge_dim=3, concat=False, root_weight=False),
    ],
    bipartite_configs=[dict(heads=2), dict(heads=2, edge_dim=3, beta=True),
                       dict(heads=3, concat=False, bias=False)],
    edge_config=dict(heads=2, edge_dim=3, beta=True),
    dropout_one_config=dict(heads=2, dropout=1.0, edge_dim=3),
    checkpoint_configs=[dict(heads=3, edge_dim=2, beta=True)],
    input_configs=[dict(heads=2)],  # TransformerConv adds no self loops
    # "graph": a prepared fastgat Graph (PyG gets its edge_index)
    layouts=["edge_index", "csr", "coo", "graph"],
    op=OpCheck(transformer_op_inputs, run_transformer_op, transformer_reference, cases=[
        (dtype, dict(edge_values=edge_values), dropout)
        for dtype in (torch.float64, torch.float32, torch.bfloat16)
        for edge_values in (True, False) for dropout in (0.0, 0.3)]),
)

FAMILIES = (GAT, GATV2, TRANSFORMER)
