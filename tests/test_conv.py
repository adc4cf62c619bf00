"""FastGATConv against torch_geometric.nn.GATConv with copied weights: what only FastGATConv
has (its graph cache, fallbacks, init, autocast). The checks all three layers share, parity over
every option among them, are in test_layer_family.py."""
import copy

import pytest
import torch
from torch_geometric.nn import GATConv

from fastgat import FastGATConv
from graphs import KINDS, random_graph
from helpers import rel_error
from layer_families import GAT
from parity import IN_CHANNELS, OUT_CHANNELS, assert_edge_masks_match, assert_parity, features

CPU_BACKENDS = GAT.backends
UNINTERPRETED_BACKENDS = GAT.uninterpreted_backends
pair = GAT.pair


def test_size_argument_and_missing_destination_features():
    src, dst, num_src, _ = random_graph("random", 9)
    dst = dst % 10
    pyg, fast = pair(dict(heads=2), (IN_CHANNELS, IN_CHANNELS))
    x, _ = features(6, num_src, 10, src.numel(), False)
    edge_index = torch.stack([src, dst])
    for size in [(num_src, 10), None]:
        num_dst = 10 if size else num_src
        x_pair = (x, torch.randn(num_dst, IN_CHANNELS, dtype=torch.float64))
        assert_parity(pyg, fast, x_pair, edge_index, None, size=size)
    want = pyg((x, None), edge_index, size=(num_src, 10))
    torch.testing.assert_close(fast((x, None), edge_index, size=(num_src, 10)), want)


def test_prepared_graph_is_reused_and_cache_sees_in_place_writes():
    from fastgat import Graph, prepare
    src, dst, num_nodes, _ = random_graph("random", 14)
    edge_index = torch.stack([src, dst])
    kwargs = dict(drop_self_loops=True, num_loops=num_nodes)
    first = prepare(edge_index, num_nodes, num_nodes, **kwargs)
    assert prepare(edge_index, num_nodes, num_nodes, **kwargs) is first
    assert prepare(edge_index.clone(), num_nodes, num_nodes, **kwargs) is not first
    edge_index[0, 0] = (edge_index[0, 0] + 1) % num_nodes  # bumps the version counter
    rebuilt = prepare(edge_index, num_nodes, num_nodes, **kwargs)
    assert rebuilt is not first and torch.equal(rebuilt.coo()[0], edge_index[0])

    pyg, fast = pair(dict(heads=2))
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    graph = Graph.from_coo(edge_index[0], edge_index[1], num_nodes, num_nodes, **kwargs)
    torch.testing.assert_close(fast(x, graph), pyg(x, edge_index))
    with pytest.raises(ValueError, match="num_loops"):
        FastGATConv(IN_CHANNELS, 4, add_self_loops=False).double()(x, graph)


def test_usual_init_recipes_apply_to_plain_parameters():
    fast = FastGATConv(IN_CHANNELS, OUT_CHANNELS, heads=2)
    gain = torch.nn.init.calculate_gain("relu")
    torch.manual_seed(4)
    fast.apply(lambda m: torch.nn.init.xavier_uniform_(m.weight, gain=gain)
               if hasattr(m, "weight") and isinstance(m.weight, torch.nn.Parameter) else None)
    torch.manual_seed(4)
    want = torch.nn.init.xavier_uniform_(torch.empty_like(fast.lin.weight), gain=gain)
    assert torch.equal(fast.lin.weight, want)  # the recipe reached the (only) weight
    assert all(isinstance(p, torch.nn.Parameter) for p in fast.parameters())
    assert dict(fast.named_parameters()).keys() == {"att_src", "att_dst", "bias", "lin.weight"}


def test_lazy_input_sizes():
    src, dst, num_nodes, _ = random_graph("random", 15)
    torch.manual_seed(0)
    pyg = GATConv(-1, OUT_CHANNELS, heads=2).double()
    torch.manual_seed(0)
    fast = FastGATConv(-1, OUT_CHANNELS, heads=2).double()
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    edge_index = torch.stack([src, dst])
    want = pyg(x, edge_index)
    fast(x, edge_index)  # materialises the lazy weight, then copy PyG's
    fast.load_state_dict(pyg.state_dict())
    torch.testing.assert_close(fast(x, edge_index), want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_explain_masks_apply_even_after_a_gatconv_was_built(backend):
    """Explainer's edge masks reach FastGATConv's fallback forward, and get gradients, even
    though GATConv's class already holds PyG's generated (explain-free) propagate."""
    src, dst, num_nodes, _ = random_graph("random", 19)
    edge_index = torch.stack([src, dst])
    pyg, fast = pair(dict(heads=2), backend=backend)  # GATConv built first
    x, _ = features(19, num_nodes, num_nodes, src.numel(), False)
    assert_edge_masks_match(pyg, fast, x, edge_index)


def test_lazy_edge_dim():
    src, dst, num_nodes, _ = random_graph("random", 20)
    edge_index = torch.stack([src, dst])
    x, edge_attr = features(2, num_nodes, num_nodes, src.numel(), False)
    torch.manual_seed(0)
    pyg = GATConv(IN_CHANNELS, OUT_CHANNELS, heads=2, edge_dim=-1).double()
    fast = FastGATConv(IN_CHANNELS, OUT_CHANNELS, heads=2, edge_dim=-1).double()
    want = pyg(x, edge_index, edge_attr)
    fast(x, edge_index, edge_attr)
    fast.load_state_dict(pyg.state_dict())
    torch.testing.assert_close(fast(x, edge_index, edge_attr), want)


def _count_preparations(monkeypatch):
    from fastgat import graph as graph_module
    graph_module._CACHE.clear()
    calls = []
    build = graph_module.Graph.from_coo

    def counted(*args, **kwargs):
        calls.append(args)
        return build(*args, **kwargs)
    monkeypatch.setattr(graph_module.Graph, "from_coo", counted)
    return calls


@pytest.mark.parametrize("inference_edges", [True, False])
def test_multi_layer_inference_prepares_each_graph_once(inference_edges, monkeypatch):
    calls = _count_preparations(monkeypatch)
    src, dst, num_nodes, _ = random_graph("random", 21)
    pyg1, fast1 = pair(dict(heads=2), backend=CPU_BACKENDS[-1])
    pyg2, fast2 = pair(dict(heads=1), in_channels=2 * OUT_CHANNELS, backend=CPU_BACKENDS[-1])
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    with torch.inference_mode():
        edge_index = torch.stack([src, dst]) if inference_edges else None
    if edge_index is None:
        edge_index = torch.stack([src, dst])
    with torch.inference_mode():
        for _ in range(2):
            got = fast2(fast1(x, edge_index).relu(), edge_index)
            torch.testing.assert_close(got, pyg2(pyg1(x, edge_index).relu(), edge_index))
        assert len(calls) == 1
        edge_index[0, 0] = (edge_index[0, 0] + 1) % num_nodes  # an edit is seen: rebuilt
        torch.testing.assert_close(fast1(x, edge_index), pyg1(x, edge_index))
        assert len(calls) == 2
    # Outside inference mode the graph is prepared anew: autograd cannot save inference tensors.
    torch.testing.assert_close(fast1(x, edge_index), pyg1(x, edge_index))
    torch.testing.assert_close(fast1(x, edge_index), pyg1(x, edge_index))
    assert len(calls) == 3


def test_csc_is_built_only_for_a_backward(monkeypatch):
    from fastgat import graph as graph_module
    graph_module._CACHE.clear()
    src, dst, num_nodes, _ = random_graph("random", 24)
    edge_index = torch.stack([src, dst])
    pyg, fast = pair(dict(heads=2), backend=CPU_BACKENDS[-1])
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    kwargs = dict(drop_self_loops=True, num_loops=num_nodes)
    with torch.no_grad():
        fast(x, edge_index)
    graph = graph_module.prepare(edge_index, num_nodes, num_nodes, **kwargs)
    assert graph._csc is None
    x = x.requires_grad_()
    fast(x, edge_index).sum().backward()
    assert graph._csc is not None
    want = torch.autograd.grad(pyg(x, edge_index).sum(), x)[0]
    torch.testing.assert_close(x.grad, want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("drop_self_loops", [True, False])
@pytest.mark.parametrize("index_limit", [None, 0])  # 0: int64 index tensors
def test_counting_sort_equals_the_argsort_path(kind, drop_self_loops, index_limit, monkeypatch):
    from fastgat import graph as graph_module
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the compiled library is not built")
    if index_limit is not None:
        monkeypatch.setattr(graph_module, "_INT32_MAX", index_limit)
    src, dst, num_src, num_dst = random_graph(kind, 31)
    built = graph_module.Graph.from_coo(src, dst, num_src, num_dst,
                                        drop_self_loops=drop_self_loops)
    monkeypatch.setattr(graph_module, "LOAD_ERROR", "torch path")
    sorted_ = graph_module.Graph.from_coo(src, dst, num_src, num_dst,
                                          drop_self_loops=drop_self_loops)
    for a, b in zip((built.rowptr, built.col, built.perm, *built.csc()),
                    (sorted_.rowptr, sorted_.col, sorted_.perm, *sorted_.csc())):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("drop_self_loops", [True, False])
@pytest.mark.parametrize("index_limit", [None, 0])  # 0: int64 index tensors
def test_graph_rebuilds_the_input_edges_in_order(kind, drop_self_loops, index_limit, monkeypatch):
    from fastgat import graph as graph_module
    if index_limit is not None:
        monkeypatch.setattr(graph_module, "_INT32_MAX", index_limit)
    src, dst, num_src, num_dst = random_graph(kind, 23)
    graph = graph_module.Graph.from_coo(src, dst, num_src, num_dst,
                                        drop_self_loops=drop_self_loops)
    assert graph.col.dtype == (torch.int64 if index_limit == 0 else torch.int32)
    got_src, got_dst = graph.coo()
    assert torch.equal(got_src, src.long()) and torch.equal(got_dst, dst.long())


def test_scores_are_matrix_products_not_bmm():
    src, dst, num_nodes, _ = random_graph("random", 25)
    _, fast = pair(dict(heads=4, edge_dim=3), backend=CPU_BACKENDS[-1])
    x, edge_attr = features(2, num_nodes, num_nodes, src.numel(), False)
    x.requires_grad_()
    with torch.profiler.profile() as prof:
        fast(x, torch.stack([src, dst]), edge_attr).sum().backward()
    names = {event.key for event in prof.key_averages()}
    assert "aten::mm" in names and not names & {"aten::bmm", "aten::einsum"}


def test_cache_entries_die_with_their_edges_and_never_alias_them():
    import gc

    from fastgat import graph as graph_module
    graph_module._CACHE.clear()
    src, dst, num_nodes, _ = random_graph("random", 22)
    edge_index = torch.stack([src, dst])
    graph = graph_module.prepare(edge_index, num_nodes, num_nodes, drop_self_loops=True,
                                 num_loops=num_nodes)
    storage = edge_index.untyped_storage().data_ptr()
    assert all(x.untyped_storage().data_ptr() != storage
               for x in (*graph.op_args(), graph.perm))
    assert len(graph_module._CACHE) == 1
    del edge_index
    gc.collect()
    assert len(graph_module._CACHE) == 0


def test_uncoalesced_coo_with_duplicates_matches_pyg():
    src, dst, num_nodes, _ = random_graph("duplicates", 23)
    pyg, fast = pair(dict(heads=2))
    x, _ = features(2, num_nodes, num_nodes, src.numel(), False)
    adj_t = torch.sparse_coo_tensor(torch.stack([dst, src]), torch.ones(src.numel()),
                                    (num_nodes, num_nodes))
    for _ in range(2):  # PyG flags the input coalesced after its first call: both must hold
        want = pyg(x, adj_t, return_attention_weights=True)
        got = fast(x, adj_t, return_attention_weights=True)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1][1], want[1][1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_checks_index_ranges_without_a_host_sync(backend, fresh_dynamo):
    conv = torch.compile(FastGATConv(IN_CHANNELS, OUT_CHANNELS, heads=2, backend=backend),
                         fullgraph=True)
    x = torch.randn(4, IN_CHANNELS)
    assert conv(x, torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])).shape == (4, 2 * OUT_CHANNELS)
    with pytest.raises(RuntimeError, match="outside"):
        conv(x, torch.tensor([[0, 1, 2, 4], [1, 2, 3, 0]]))


def test_graph_cache_is_thread_safe():
    """Threads preparing more distinct graphs than the cache holds (evictions) while edge
    tensors die (weakref callbacks): no error, every Graph is its own edges', and the cache
    works afterwards. Unguarded, OrderedDict.move_to_end / popitem raced into KeyErrors."""
    import sys
    import threading

    from fastgat import graph as graph_module
    num_nodes = 8
    shared = [torch.randint(0, num_nodes, (2, 5 + i)) for i in range(24)]
    errors = []

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        try:
            for step in range(300):
                fresh = step % 7 == 0  # a short-lived edge tensor, freed at once
                edges = (torch.randint(0, num_nodes, (2, 3), generator=g) if fresh
                         else shared[(seed * 5 + step) % len(shared)])
                graph = graph_module.prepare(edges, num_nodes, num_nodes, drop_self_loops=False,
                                             num_loops=0)
                assert graph.num_edges == edges.size(1)
        except Exception as error:  # noqa: BLE001 -- reported by the main thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so races show up within the test
    try:
        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    edges = shared[0]
    graph = graph_module.prepare(edges, num_nodes, num_nodes, drop_self_loops=False, num_loops=0)
    assert graph_module.prepare(edges, num_nodes, num_nodes, drop_self_loops=False,
                                num_loops=0) is graph
    assert len(graph_module._CACHE) <= graph_module._CACHE_SIZE


@pytest.mark.parametrize("backend", [b for b in UNINTERPRETED_BACKENDS if b != "torch"])
def test_long_row_is_at_least_as_accurate_as_gatconv(backend):
    """A hub of 200,000 in-edges in float32, against GATConv in float64: the fused sum must
    not lose more than GATConv's scatter sum does (summed edge by edge it lost 2x more).
    Positive features and weights, so rounding errors add up instead of cancelling."""
    torch.manual_seed(0)
    num_src, hub = 1000, 200_000
    edge_index = torch.stack([torch.randint(0, num_src, (hub,)), torch.zeros(hub, dtype=torch.long)])
    x = torch.rand(num_src, 16) + 1
    pyg, fast = pair(dict(heads=2), in_channels=16, backend=backend, dtype=torch.float32)
    with torch.no_grad():
        pyg.lin.weight.abs_()
    fast.load_state_dict(pyg.state_dict())
    want = copy.deepcopy(pyg).double()(x.double(), edge_index)[0]
    with torch.no_grad():
        fast_error = (fast(x, edge_index)[0].double() - want).abs().max()
        pyg_error = (pyg(x, edge_index)[0].double() - want).abs().max()
    assert fast_error <= pyg_error, (fast_error, pyg_error)


@pytest.mark.parametrize("backend", UNINTERPRETED_BACKENDS)
def test_autocast_keeps_the_scores_in_float32(backend, monkeypatch):
    """Under CPU bfloat16 autocast the op gets float32 s, d, t beside bfloat16 h (as GATConv
    keeps its logits in float32, docs/design.md §4), and the output and attention weights are
    closer to the float64 layer's than with the scores rounded to bfloat16 (the op's one-dtype
    path): measured 3.470e-3 against 3.484e-3 (out, dominated by the bfloat16 h and out) and
    1.04e-3 against 3.47e-3 (attention weights)."""
    import fastgat.conv
    src, dst, num_src, _ = random_graph("hub", 3)
    x, edge_attr = features(3, num_src, num_src, src.numel(), False)
    edge_index = torch.stack([src, dst])
    torch.manual_seed(0)
    fast = FastGATConv(IN_CHANNELS, OUT_CHANNELS, heads=4, edge_dim=3, backend=backend)
    want, (_, want_alpha) = copy.deepcopy(fast).double()(
        x.double(), edge_index, edge_attr.double(), return_attention_weights=True)

    seen = []
    op = fastgat.conv.gat_attention
    monkeypatch.setattr(fastgat.conv, "gat_attention",
                        lambda *args: seen.append([a.dtype for a in args[:5]]) or op(*args))

    def errors():
        with torch.autocast("cpu", torch.bfloat16):
            out, (_, alpha) = fast(x.float(), edge_index, edge_attr.float(),
                                   return_attention_weights=True)
        return rel_error(out, want), rel_error(alpha, want_alpha)
    out_float32, alpha_float32 = errors()
    assert seen[-1] == [torch.bfloat16] + [torch.float32] * 4
    monkeypatch.setattr(fastgat.conv, "score_dtype", lambda h_dtype, _: h_dtype)
    out_bfloat16, alpha_bfloat16 = errors()
    assert seen[-1] == [torch.bfloat16] * 5
    assert out_float32 < out_bfloat16, (out_float32, out_bfloat16)
    assert 2 * alpha_float32 < alpha_bfloat16, (alpha_float32, alpha_bfloat16)
