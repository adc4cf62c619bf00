"""The checks FastGATConv, FastGATv2Conv and FastTransformerConv share against their PyG twins
(and the GATv2 and TransformerConv ops': their float64 reference, finite differences, opcheck,
determinism, bad input), each written once and run per layer family of layer_families.py and
per backend. What only one layer has stays in its own file: test_conv.py, test_gatv2_conv.py,
test_transformer_conv.py."""
import copy
import zlib

import pytest
import torch
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csr_tensor

from fastgat import Graph
from fastgat.dropout import draw_seed
from graphs import KINDS, random_graph
from helpers import TOLERANCE, rel_error
from layer_families import CHANNELS, FAMILIES, HEADS
from parity import (IN_CHANNELS, OUT_CHANNELS, assert_edge_masks_match, assert_parity,
                    features, run)

TRITON_INTERPRETED = not torch.cuda.is_available()


def per_family(rows):
    """pytest params from (family, *values, id or None) rows, each id led by the family's rule."""
    return [pytest.param(family, *values, id="-".join(filter(None, [family.rule, id_])))
            for family, *values, id_ in rows]


def parity_grid():
    for family in FAMILIES:
        for backend in family.backends:
            cases = [(c, k) for c in family.configs for k in KINDS if k != "bipartite"]
            cases += [(c, "bipartite") for c in family.bipartite_configs]
            # The Triton interpreter runs ~9 ms per program: a third of the grid, still every
            # option and every graph kind (all of it on a GPU).
            if backend == "triton" and TRITON_INTERPRETED:
                cases = cases[::3]
            yield from ((family, backend, c, k, f"{backend}-{i}-{k}")
                        for i, (c, k) in enumerate(cases))


@pytest.mark.parametrize("family,backend,config,kind", per_family(parity_grid()))
def test_parity_with_pyg(family, backend, config, kind):
    """Outputs, returned (edge_index, alpha) in PyG's order, and the gradients of x and of
    every parameter, in float64 at 1e-10."""
    seed = zlib.crc32(f"{family.rule}-{config}-{kind}".encode()) % 1000  # a graph per case
    src, dst, num_src, num_dst = random_graph(kind, seed)
    bipartite = kind == "bipartite"
    in_channels = (IN_CHANNELS, IN_CHANNELS + 1) if bipartite else IN_CHANNELS
    pyg, fast = family.pair(config, in_channels, backend)
    x, edge_attr = features(seed, num_src, num_dst, src.numel(), bipartite)
    assert_parity(pyg, fast, x, torch.stack([src, dst]),
                  edge_attr if "edge_dim" in config else None)


@pytest.mark.parametrize("family,backend", per_family(
    (f, b, b) for f in FAMILIES for b in f.uninterpreted_backends))
def test_parity_on_a_hub_with_1e5_in_edges(family, backend):
    g = torch.Generator().manual_seed(4)
    num_nodes, hub_degree = 300, 100_000
    src = torch.cat([torch.randint(0, num_nodes, (hub_degree,), generator=g),
                     torch.randint(0, num_nodes, (2000,), generator=g)])
    dst = torch.cat([torch.zeros(hub_degree, dtype=torch.long),
                     torch.randint(0, num_nodes, (2000,), generator=g)])
    pyg, fast = family.pair(family.edge_config, backend=backend)
    x, edge_attr = features(5, num_nodes, num_nodes, src.numel(), False)
    assert_parity(pyg, fast, x, torch.stack([src, dst]), edge_attr)


@pytest.mark.parametrize("family,backend,layout,config", per_family(
    (f, b, layout, c, f"{b}-{layout}-{i}") for f in FAMILIES for b in f.uninterpreted_backends
    for layout in f.layouts for i, c in enumerate(f.input_configs)))
def test_input_forms_agree(family, backend, layout, config):
    """An EdgeIndex, a torch.sparse CSR or COO adj_t (or a prepared Graph) gives PyG's output
    and attention weights, and the adjacency PyG returns: the one it was given, or a new one
    holding the self loops it added."""
    src, dst, num_nodes, _ = random_graph("self_loops", 12)
    keys = torch.unique(dst * num_nodes + src)  # sparse adjacencies hold no duplicates
    src, dst = keys % num_nodes, keys // num_nodes
    pyg, fast = family.pair(config, backend=backend)
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    edge_index = torch.stack([src, dst])
    if layout == "edge_index":
        from torch_geometric import EdgeIndex
        adj = EdgeIndex(edge_index, sparse_size=(num_nodes, num_nodes))
    elif layout == "graph":
        adj = Graph.from_coo(src, dst, num_nodes, num_nodes, drop_self_loops=False)
    else:
        convert = to_torch_csr_tensor if layout == "csr" else to_torch_coo_tensor
        adj = convert(torch.stack([dst, src]), size=(num_nodes, num_nodes))  # adj_t
    want = pyg(x, edge_index if layout == "graph" else adj, return_attention_weights=True)
    got = fast(x, adj, return_attention_weights=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[0], fast(x, edge_index), rtol=1e-10, atol=1e-10)
    if layout != "graph" and want[1][0] is adj:
        assert got[1][0] is adj
    elif want[1][0].layout != torch.strided:
        assert got[1][0].layout == want[1][0].layout
        torch.testing.assert_close(got[1][0].to_dense(), want[1][0].to_dense())
    else:
        assert torch.equal(got[1][0], want[1][0])
    torch.testing.assert_close(got[1][1], want[1][1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", per_family((f, None) for f in FAMILIES))
def test_sparse_tensor_input(family):
    """A torch_sparse SparseTensor adj_t gives PyG's output and attention weights."""
    torch_sparse = pytest.importorskip("torch_sparse", reason="torch_sparse is not installed "
                                       "(no wheel for this torch): SparseTensor is untestable")
    src, dst, num_nodes, _ = random_graph("random", 13)
    adj = torch_sparse.SparseTensor(row=dst, col=src, sparse_sizes=(num_nodes, num_nodes))
    pyg, fast = family.pair(dict(heads=2))
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    want = pyg(x, adj, return_attention_weights=True)
    got = fast(x, adj, return_attention_weights=True)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1].storage.value(), want[1].storage.value())


@pytest.mark.parametrize("family,config", per_family(
    (f, c, str(i)) for f in FAMILIES for i, c in enumerate(f.checkpoint_configs)))
def test_checkpoint_state_dict_and_initialisation_match_pyg(family, config):
    """The same state_dict keys in PyG's order, the same initial values from the same seed
    (reset_parameters is PyG's: glorot / zeros, same draws) and repr under the fast name."""
    torch.manual_seed(42)
    pyg = family.pyg_cls(IN_CHANNELS, OUT_CHANNELS, **config)
    torch.manual_seed(42)
    fast = family.fast_cls(IN_CHANNELS, OUT_CHANNELS, **config)
    assert list(fast.state_dict()) == list(pyg.state_dict())
    for (name, a), (_, b) in zip(pyg.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(a, b), name
    torch.manual_seed(1)
    pyg.reset_parameters()
    torch.manual_seed(1)
    fast.reset_parameters()
    assert all(torch.equal(a, b) for a, b in zip(pyg.parameters(), fast.parameters()))
    pyg_name, fast_name = family.pyg_cls.__name__, family.fast_cls.__name__
    assert repr(fast) == repr(pyg).replace(pyg_name, fast_name)


@pytest.mark.parametrize("family,backend,config", per_family(
    (f, b, c, f"{b}-{i}") for f in FAMILIES for b in f.backends
    for i, c in enumerate([f.edge_config, dict(heads=3, concat=False)])))
def test_gradient_penalty_matches_pyg(family, backend, config):
    """Double backward: a penalty on d(out)/dx trains the same parameters as with PyG."""
    src, dst, num_nodes, _ = random_graph("duplicates", 18)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(18, num_nodes, num_nodes, src.numel(), False)
    edge_attr = edge_attr if "edge_dim" in config else None
    grads = []
    for conv in family.pair(config, backend=backend):
        leaf = x.detach().clone().requires_grad_()
        out = conv(leaf, edge_index, edge_attr)
        dx, = torch.autograd.grad((out ** 3).sum(), leaf, create_graph=True)
        grads.append(torch.autograd.grad((dx ** 2).sum(), [leaf, *conv.parameters()]))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family,backend", per_family(
    (f, b, b) for f in FAMILIES for b in f.backends))
def test_inference_matches_pyg(family, backend):
    """Without autograd the layers add bias, residual and root terms in place: the same
    numbers as PyG for every option, and, under bfloat16 autocast (bfloat16 heads beside a
    float32 bias), PyG's promoted dtype."""
    src, dst, num_nodes, _ = random_graph("duplicates", 21)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(21, num_nodes, num_nodes, src.numel(), False)
    for config in family.configs:
        pyg, fast = family.pair(config, backend=backend)
        attr = edge_attr if "edge_dim" in config else None
        for context in (torch.no_grad, torch.inference_mode):
            with context():
                torch.testing.assert_close(fast(x, edge_index, attr), pyg(x, edge_index, attr),
                                           rtol=1e-10, atol=1e-10)
    pyg, fast = family.pair(family.edge_config, backend=backend, dtype=torch.float32)
    attr = edge_attr.float()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        got, want = fast(x.float(), edge_index, attr), pyg(x.float(), edge_index, attr)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("family,backend", per_family(
    (f, b, b) for f in FAMILIES for b in f.backends))
def test_dropout_one_zeroes_attention_like_pyg(family, backend):
    """dropout=1 in training drops every attention weight PyG drops (GAT and GATv2 return the
    weights after dropout, TransformerConv before), and parameters whose gradients are zero
    in PyG get zeros, not None."""
    config = family.dropout_one_config
    src, dst, num_nodes, _ = random_graph("isolated", 20)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(20, num_nodes, num_nodes, src.numel(), False)
    edge_attr = edge_attr if "edge_dim" in config else None
    pyg, fast = family.pair(config, backend=backend)
    got = run(fast.train(), x, edge_index, edge_attr)
    want = run(pyg.train(), x, edge_index, edge_attr)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])
    assert torch.equal(got[2] == 0, want[2] == 0)
    torch.testing.assert_close(got[2], want[2])
    for name in want[4]:
        torch.testing.assert_close(got[4][name], want[4][name])


@pytest.mark.parametrize("family,backend,dynamic", per_family(
    (f, b, d, f"{b}-{d}") for f in FAMILIES for b in ("torch", "auto") for d in (False, True)))
def test_torch_compile_fullgraph_matches_eager(family, backend, dynamic, fresh_dynamo):
    """torch.compile(fullgraph=True) of the layer gives eager's output and input gradient, on
    the graph and on one twice its size (a recompile, or the dynamic graph reused)."""
    src, dst, num_nodes, _ = random_graph("self_loops", 18)
    x, edge_attr = features(2, num_nodes, num_nodes, src.numel(), False)
    conv = family.fast_cls(IN_CHANNELS, OUT_CHANNELS, backend=backend,
                           **family.edge_config).double()
    compiled = torch.compile(copy.deepcopy(conv), fullgraph=True, dynamic=dynamic)
    for scale in (1, 2):
        ei, ea = torch.stack([src, dst]).repeat(1, scale), edge_attr.repeat(scale, 1)
        want = run(conv, x, ei, ea)
        xg = x.clone().requires_grad_()
        out = compiled(xg, ei, ea)
        torch.testing.assert_close(out, want[0])
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        (out * dout).sum().backward()
        torch.testing.assert_close(xg.grad, want[3][0])


OP_FAMILIES = [f for f in FAMILIES if f.op is not None]


def op_leaves(inputs):
    return [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]


def op_grid():
    for family in OP_FAMILIES:
        for backend in family.backends:
            for kind in KINDS:
                for dtype, options, dropout in family.op.cases:
                    flags = "-".join(f"{k}={v}" for k, v in options.items())
                    yield (family, backend, kind, dtype, options, dropout,
                           f"{backend}-{kind}-{str(dtype)[6:]}-{flags}-dropout={dropout}")


@pytest.mark.parametrize("family,backend,kind,dtype,options,dropout", per_family(op_grid()))
def test_op_matches_reference(family, backend, kind, dtype, options, dropout):
    """Forward, lse and every gradient against autograd through the float64 reference, on the
    same (rounded) inputs."""
    op = family.op
    case = zlib.crc32(f"{kind}-{options}-{dropout}".encode()) % 1000
    inputs, graph = op.inputs(kind, case, dtype, **options)
    seed = torch.tensor([case * 7919 + 13]) if dropout else None
    leaves = op_leaves(inputs)
    out, lse = op.run(leaves, graph, backend, dropout, seed)
    ref_leaves = [x.detach().double().requires_grad_() if x is not None else None
                  for x in inputs]
    ref_out, ref_lse = op.reference(ref_leaves, graph, dropout, seed)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64
                                                else torch.float32)
    tol = TOLERANCE[dtype]
    assert rel_error(out, ref_out) < tol
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert rel_error(lse[finite], ref_lse[finite]) < tol
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(case),
                       dtype=torch.float64).to(dtype)
    got = torch.autograd.grad(out, [x for x in leaves if x is not None], dout)
    want = torch.autograd.grad(ref_out, [x for x in ref_leaves if x is not None], dout.double())
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and a.dtype == dtype
        assert rel_error(a, b) < tol, rel_error(a, b)


@pytest.mark.parametrize("family,backend", per_family(
    (f, b, b) for f in FAMILIES for b in f.backends))
def test_attention_dropout_is_training_only_seeded_and_reproduces_the_output(family, backend):
    """Dropout acts in training only (eval is p = 0), torch.manual_seed reproduces its mask,
    it drops about p of the weights, and the weights returned, with the mask they stand for,
    re-aggregate to the output."""
    src, dst, num_nodes, _ = random_graph("duplicates", 20)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(20, num_nodes, num_nodes, src.numel(), False)
    edge_attr = edge_attr if "edge_dim" in family.seeded_dropout_config else None
    fast = family.fast_cls(IN_CHANNELS, OUT_CHANNELS, backend=backend,
                           **family.seeded_dropout_config).double()
    evaluated = fast.eval()(x, edge_index, edge_attr)
    no_dropout = copy.deepcopy(fast)
    no_dropout.dropout = 0.0
    torch.testing.assert_close(evaluated, no_dropout.train()(x, edge_index, edge_attr))
    fast.train()
    torch.manual_seed(3)
    seed = draw_seed(torch.device("cpu"))  # the draw the forward below makes
    torch.manual_seed(3)
    first, (_, alpha) = fast(x, edge_index, edge_attr, return_attention_weights=True)
    torch.manual_seed(3)
    assert torch.equal(fast(x, edge_index, edge_attr), first)
    assert not torch.allclose(first, evaluated)
    manual, applied = family.reaggregate(fast, x, edge_index, edge_attr, alpha, seed)
    assert 0.35 < (applied == 0).double().mean().item() < 0.65
    torch.testing.assert_close(manual, first, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family,config", per_family(
    (f, c, id_) for f in FAMILIES for c, id_ in [
        (dict(), "add"), (dict(aggr="mean"), "mean"), (dict(aggr="max"), "max"),
        (dict(flow="target_to_source"), "target_to_source")]))
def test_hooks_explain_and_other_aggregations_fall_back_to_pyg(family, config):
    """A message hook, an explainer's edge mask, another aggregation or flow: the layer runs
    PyG's own forward, so hooks see PyG's messages and outputs and mask gradients are PyG's."""
    src, dst, num_nodes, _ = random_graph("random", 17)
    edge_index = torch.stack([src, dst])
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    pyg, fast = family.pair(dict(heads=2, **config))
    want = pyg(x, edge_index)
    torch.testing.assert_close(fast(x, edge_index), want)  # no hook yet: the config decides
    seen = []
    fast.register_message_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    torch.testing.assert_close(fast(x, edge_index), want)
    assert seen and seen[0][0] == family.num_messages(src, dst, num_nodes)
    assert_edge_masks_match(*family.pair(dict(heads=2, **config)), x, edge_index)


@pytest.mark.slow  # a Jacobian column per input element
@pytest.mark.parametrize("family,backend", per_family(
    (f, b, b) for f in OP_FAMILIES for b in f.backends))
def test_op_gradcheck_and_gradgradcheck(family, backend):
    """Backward and double backward against finite differences in float64, without and with
    dropout (a fixed seed fixes the mask: backward must match forward) and in the op's other
    settings."""
    op = family.op
    kind, case, options = op.gradcheck_inputs
    inputs, graph = op.inputs(kind, case, **options)
    leaves = op_leaves(inputs)
    seed = torch.tensor([99])
    for settings in [dict(dropout=0.0), dict(dropout=0.4), *op.gradcheck_settings]:
        fn = lambda *x: op.run(x, graph, backend, seed=seed, **settings)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves, atol=1e-8, rtol=1e-6), settings
        assert torch.autograd.gradgradcheck(fn, leaves, atol=1e-8, rtol=1e-6), settings


@pytest.mark.parametrize("family,backend,edge_values", per_family(
    (f, b, e, f"{b}-edge_values={e}") for f in OP_FAMILIES for b in f.backends
    for e in (True, False)))
def test_op_opcheck(family, backend, edge_values):
    """torch.library.opcheck: schema, fake tensors, autograd registration and AOT dispatch,
    without and with (seeded) dropout."""
    op = family.op
    inputs, graph = op.inputs("duplicates", 5, torch.float32,
                              **({} if edge_values else op.no_edge_values))
    for dropout, seed in [(0.0, None), (0.25, torch.tensor([99]))]:
        torch.library.opcheck(op.op, op.arguments(op_leaves(inputs), graph, backend, dropout,
                                                  seed))


@pytest.mark.parametrize("family,backend,heads,channels", per_family(
    (f, b, h, c, f"{b}-{h}x{c}") for f in OP_FAMILIES for b in f.backends
    for h, c in [(HEADS, CHANNELS), (4, 32)]))
def test_op_backward_is_bitwise_deterministic(family, backend, heads, channels):
    """The same gradient bits on repeated runs, and on 1, 2 and 3 threads but where torch's
    index_add orders a sum by thread count."""
    op = family.op
    inputs, graph = op.inputs("hub", 21, torch.float32, heads=heads, channels=channels)
    dout = torch.randn(graph.num_dst, heads, channels,
                       generator=torch.Generator().manual_seed(2))

    def gradients(threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            leaves = op_leaves(inputs)
            out, _ = op.run(leaves, graph, backend, 0.2, torch.tensor([5]))
            return torch.autograd.grad(out, [x for x in leaves if x is not None], dout)
        finally:
            torch.set_num_threads(previous)

    first, *others = [gradients(threads) for threads in (1, 2, 3, 1)]
    if backend == "torch" and op.torch_backward_varies_with_threads:
        others = others[-1:]  # the same thread count
    for again in others:
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("family", per_family((f, None) for f in OP_FAMILIES))
def test_op_rejects_bad_inputs(family):
    """Wrong shapes, dtypes and layouts, and dropout without a seed, raise naming the culprit."""
    op = family.op
    inputs, graph = op.inputs("random", 6)
    for pattern, bad in op.bad_inputs(inputs).items():
        with pytest.raises(ValueError, match=pattern):
            op.run(bad, graph, "torch")
    with pytest.raises(ValueError, match="seed"):
        op.run(inputs, graph, "torch", dropout=0.5)
