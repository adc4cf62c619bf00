"""The three layer families that tests/test_layer_family.py runs its shared checks over:
FastGATConv, FastGATv2Conv and FastTransformerConv beside their PyG twins, the configurations
each check uses per family and what differs between them, and, for the GATv2 and TransformerConv
ops, their inputs, call, float64 reference and bad inputs (the GAT op has its own tests in
test_op.py)."""
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch_geometric.nn import GATConv, GATv2Conv, TransformerConv

from fastgat import FastGATConv, FastGATv2Conv, FastTransformerConv, Graph
from fastgat.backends import torch_ref
from fastgat.dropout import keep_scale
from fastgat.ops import (gatv2_attention, gatv2_attention_op, transformer_attention,
                         transformer_op)
from graphs import random_graph
from helpers import backends
from parity import IN_CHANNELS, OUT_CHANNELS, make_pair

HEADS, CHANNELS = 3, 5  # of the op inputs: C not a power of two
NEGATIVE_SLOPE = 0.2  # GATv2Conv's default


def random_values(seed, dtype):
    """rand(*shape): normal values drawn in float64 from `seed`, then rounded to `dtype`."""
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def gatv2_op_inputs(kind, seed, dtype=torch.float64, edges=True, loops=True, heads=HEADS,
                    channels=CHANNELS, graph_size=()):
    """((xl, xr, att, e, e_loop), graph) for fastgat::gatv2_attention, drawn from `seed`."""
    src, dst, num_src, num_dst = random_graph(kind, seed, *graph_size)
    num_loops = min(num_src, num_dst) if loops else 0
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=loops,
                           num_loops=num_loops)
    rand = random_values(seed + 1, dtype)
    xl, xr = rand(num_src, heads, channels), rand(num_dst, heads, channels)
    e = rand(graph.num_edges, heads, channels) if edges else None
    e_loop = rand(num_loops, heads, channels) if edges and loops else None
    return (xl, xr, rand(heads, channels), e, e_loop), graph


def gatv2_op_arguments(inputs, graph, backend, dropout=0.0, seed=None, slope=NEGATIVE_SLOPE):
    return (*inputs, *graph.op_args(), graph.num_loops, slope, dropout, seed, backend)


def gatv2_reference(inputs, graph, dropout, seed):
    return torch_ref.gatv2_forward(*inputs, graph.rowptr, graph.col, graph.num_loops,
                                   NEGATIVE_SLOPE, dropout, seed)


def gatv2_bad_inputs(inputs):
    """{error pattern: inputs that raise it} for fastgat::gatv2_attention."""
    xl, xr, att, e, e_loop = inputs
    return {"xr": (xl, xr[:-1], att, e, e_loop), "att": (xl, xr, att[:1], e, e_loop),
            "e": (xl, xr, att, e[:-1], e_loop), "e_loop": (xl, xr, att, e, e_loop.float()),
            "xl must be contiguous": (non_contiguous(xl), xr, att, e, e_loop)}


def transformer_op_inputs(kind, seed, dtype=torch.float64, edge_values=True, heads=HEADS,
                          channels=CHANNELS, graph_size=()):
    """((q, k, v, e), graph) for fastgat::transformer_attention, drawn from `seed`."""
    src, dst, num_src, num_dst = random_graph(kind, seed, *graph_size)
    graph = Graph.from_coo(src, dst, num_src, num_dst, drop_self_loops=False)
    rand = random_values(seed + 1, dtype)
    q, k, v = (rand(n, heads, channels) for n in (num_dst, num_src, num_src))
    e = rand(graph.num_edges, heads, channels) if edge_values else None
    return (q, k, v, e), graph


def transformer_op_arguments(inputs, graph, backend, dropout=0.0, seed=None):
    return (*inputs, *graph.op_args(), 1 / math.sqrt(inputs[0].size(2)), dropout, seed, backend)


def transformer_reference(inputs, graph, dropout, seed):
    return torch_ref.transformer_forward(*inputs, graph.rowptr, graph.col,
                                         1 / math.sqrt(inputs[0].size(2)), dropout, seed)


def transformer_bad_inputs(inputs):
    """{error pattern: inputs that raise it} for fastgat::transformer_attention."""
    q, k, v, e = inputs
    return {"e must be": (q, k, v, e[:-1]), "v must be": (q, k, v.float(), e),
            "contiguous": (q, non_contiguous(k), v, e)}


def non_contiguous(x):
    """x's values in a (N, H, C) tensor that is not contiguous."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)


@dataclass(frozen=True)
class OpCheck:
    """An attention op and what its checks need: `inputs(kind, seed, dtype, **options)`;
    `arguments(inputs, graph, backend, dropout, seed, **settings)`, the op's argument list, for
    `op` (the registered custom op, for opcheck) and `differentiable` (its autograd wrapper);
    `reference(inputs, graph, dropout, seed)`, the float64 reference (both give (out, lse))."""
    op: Callable
    differentiable: Callable
    arguments: Callable
    inputs: Callable
    reference: Callable
    cases: Sequence[Tuple[torch.dtype, dict, float]]  # test_op_matches_reference's, per kind
    no_edge_values: dict  # the `inputs` options that leave the edge values None
    gradcheck_inputs: Tuple[str, int, dict]  # (kind, seed, options): a Jacobian column each
    gradcheck_settings: Sequence[dict]  # beyond dropout 0 and 0.4, e.g. other slopes
    bad_inputs: Callable  # inputs -> {error pattern: inputs that raise it}
    # torch's index_add may order a sum by thread count (the fused kernels may not)
    torch_backward_varies_with_threads: bool

    def run(self, inputs, graph, backend, dropout=0.0, seed=None, **settings):
        return self.differentiable(*self.arguments(inputs, graph, backend, dropout, seed,
                                                   **settings))


def aggregate(dst, weights, values, num_dst):
    """(num_dst, H * C): sum over edges of weights (E, H) times values (E, H, C), per dst."""
    out = torch.zeros(num_dst, *values.shape[1:], dtype=values.dtype)
    return out.index_add(0, dst, weights.unsqueeze(-1) * values).view(num_dst, -1)


def reaggregate_gat_weights(conv, x, edge_index, edge_attr, alpha, seed, values_linear):
    """(output, applied weights) from the weights a GAT-style layer returns, those it applied
    (after dropout): over the input edges less self loops, then a loop per node, on the rows
    `values_linear` projects, plus the bias."""
    src, dst = edge_index
    loops = torch.arange(x.size(0))
    keep = src != dst
    values = getattr(conv, values_linear)(x).view(-1, conv.heads, conv.out_channels)
    out = aggregate(torch.cat([dst[keep], loops]), alpha,
                    values[torch.cat([src[keep], loops])], x.size(0))
    return out + conv.bias, alpha


def reaggregate_transformer_weights(conv, x, edge_index, edge_attr, alpha, seed):
    """(output, applied weights) from the weights TransformerConv returns, PyG's (before
    dropout): times fastgat.dropout's mask, keyed by CSR slot, on value rows plus the
    projected edge attributes (root_weight=False: no skip term)."""
    src, dst = edge_index
    graph = Graph.from_coo(src, dst, x.size(0), x.size(0), drop_self_loops=False)
    applied = alpha * keep_scale(seed, graph.edge_slots(), conv.heads, conv.dropout, x.dtype)
    shape = (-1, conv.heads, conv.out_channels)
    values = conv.lin_value(x).view(shape)[src] + conv.lin_edge(edge_attr).view(shape)
    return aggregate(dst, applied, values, x.size(0)), applied


def messages_with_a_loop_per_node(src, dst, num_nodes):
    return int((src != dst).sum()) + num_nodes


def messages_per_edge(src, dst, num_nodes):
    return src.numel()


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
    # test_attention_dropout_...: the layer (p = 0.5) and its (output, applied weights) rebuilt
    # from the weights it returns: reaggregate(conv, x, edge_index, edge_attr, alpha, seed)
    seeded_dropout_config: dict
    reaggregate: Callable
    num_messages: Callable  # (src, dst, num_nodes) -> how many messages PyG's forward makes
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
    seeded_dropout_config=dict(heads=2, dropout=0.5),
    reaggregate=partial(reaggregate_gat_weights, values_linear="lin"),
    num_messages=messages_with_a_loop_per_node,
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
    seeded_dropout_config=dict(heads=2, dropout=0.5),
    reaggregate=partial(reaggregate_gat_weights, values_linear="lin_l"),
    num_messages=messages_with_a_loop_per_node,
    op=OpCheck(
        gatv2_attention_op, gatv2_attention, gatv2_op_arguments, gatv2_op_inputs,
        gatv2_reference, cases=[
            (dtype, dict(edges=edges, loops=loops), dropout)
            for dtype in (torch.float64, torch.float32)
            for edges, loops, dropout in [(True, True, 0.0), (False, False, 0.0),
                                          (True, True, 0.3), (False, True, 0.0)]],
        no_edge_values=dict(edges=False),
        gradcheck_inputs=("self_loops", 3, dict(heads=2, channels=3, graph_size=(10, 24, 12))),
        # PyG allows any slope: the derivative branches on the LeakyReLU's input.
        gradcheck_settings=[dict(slope=-0.7)],
        bad_inputs=gatv2_bad_inputs, torch_backward_varies_with_threads=True),
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
    seeded_dropout_config=dict(heads=2, dropout=0.5, edge_dim=3, root_weight=False),
    reaggregate=reaggregate_transformer_weights,
    num_messages=messages_per_edge,
    op=OpCheck(
        transformer_op, transformer_attention, transformer_op_arguments, transformer_op_inputs,
        transformer_reference, cases=[
            (dtype, dict(edge_values=edge_values), dropout)
            for dtype in (torch.float64, torch.float32, torch.bfloat16)
            for edge_values in (True, False) for dropout in (0.0, 0.3)],
        no_edge_values=dict(edge_values=False),
        gradcheck_inputs=("hub", 3, dict(heads=2, channels=3, graph_size=(10, 24, 12))),
        gradcheck_settings=[], bad_inputs=transformer_bad_inputs,
        torch_backward_varies_with_threads=False),
)

FAMILIES = (GAT, GATV2, TRANSFORMER)
