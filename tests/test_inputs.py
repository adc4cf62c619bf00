"""Bad input gets a clear Python exception naming the problem, never a crash or a wrong answer;
what GATConv accepts, FastGATConv accepts."""
import importlib.metadata
import types

import numpy as np
import pytest
import torch
from torch_geometric.nn import GATConv

import fastgat.backends
import fastgat.graph
from fastgat import FastGATConv, FastGATv2Conv, FastTransformerConv, Graph
from fastgat.backends import resolve, unavailable_reason

N = 8


def layer(**kwargs):
    return FastGATConv(4, 3, **{"heads": 2, **kwargs})


def good_inputs():
    return torch.randn(N, 4), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])


@pytest.mark.parametrize("conv,rule", [(FastGATv2Conv, "gatv2"),
                                       (FastTransformerConv, "transformer")])
def test_a_backend_without_the_rule_is_reported_never_replaced(monkeypatch, conv, rule):
    """Every backend implements every rule today; a rule's missing backend (as in RULES before
    its kernels land) raises when asked for, and `auto` passes it over."""
    monkeypatch.setitem(fastgat.backends.RULES, rule, ("torch",))
    x, edge_index = good_inputs()
    with pytest.raises(RuntimeError, match=f"'cpu' backend has no {rule} kernels"):
        conv(4, 3, backend="cpu")(x, edge_index)
    assert resolve("auto", "cpu", rule) == "torch"
    assert conv(4, 3)(x, edge_index).shape == (N, 3)


@pytest.mark.parametrize("bad,error,match", [
    (torch.tensor([[0, 1], [1, N]]), IndexError, "destination node index 8"),
    (torch.tensor([[0, -1], [1, 2]]), IndexError, "source node index -1"),
    (torch.tensor([[0, 1, 2]]), ValueError, r"shape \(2, num_edges\)"),
    (torch.tensor([[0.0, 1.0], [1.0, 2.0]]), TypeError, "integers"),
    ([[0, 1], [1, 2]], TypeError, "edge_index must be"),
])
def test_bad_edge_index(bad, error, match):
    x, _ = good_inputs()
    with pytest.raises(error, match=match):
        layer()(x, bad)


@pytest.mark.parametrize("x,error,match", [
    (torch.randn(N), ValueError, "must be 2-D"),
    (torch.randn(N, 4, 1), ValueError, "must be 2-D"),
    (torch.ones(N, 4, dtype=torch.long), TypeError, "floating point"),
])
def test_bad_features(x, error, match):
    _, edge_index = good_inputs()
    with pytest.raises(error, match=match):
        layer()(x, edge_index)


def test_size_mismatch_is_named():
    x, edge_index = good_inputs()
    with pytest.raises(ValueError, match="expected size 5"):
        layer()(x, edge_index, size=(5, 5))


@pytest.mark.parametrize("edge_attr", [torch.randn(3, 2), torch.randn(4, 5), torch.randn(4, 2, 2)])
def test_mismatched_edge_attr(edge_attr):
    x, edge_index = good_inputs()
    with pytest.raises(ValueError, match="edge_attr must have shape"):
        layer(edge_dim=2)(x, edge_index, edge_attr)


@pytest.mark.parametrize("kwargs,match", [
    (dict(heads=0), "heads"),
    (dict(dropout=1.5), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(fill_value="median"), "fill_value"),
    (dict(backend="fastest"), "unknown backend"),
])
def test_invalid_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer(**kwargs)


@pytest.mark.parametrize("in_channels,out_channels", [(0, 3), ((4, 4, 4), 3), (4, 0), ("4", 3),
                                                     (4.0, 3), ([4, "4"], 3), (4, np.float64(3))])
def test_invalid_channel_counts(in_channels, out_channels):
    with pytest.raises(ValueError, match="channels"):
        FastGATConv(in_channels, out_channels)


@pytest.mark.parametrize("in_channels,out_channels,heads,pair", [
    (8, np.int64(4), np.int64(2), False),           # NumPy integers, as from an array of configs
    ([8, 8], 4, 2, True),                           # a list pair, as YAML and JSON write it
    ((np.int64(8), np.int32(8)), np.int32(4), 1, True),
    (np.int64(8), 4, 2, False),                     # GATConv itself fails on this one
])
def test_constructor_takes_config_integers(in_channels, out_channels, heads, pair):
    plain = (tuple(map(int, in_channels)) if isinstance(in_channels, (list, tuple))
             else int(in_channels))
    pyg = GATConv(plain, int(out_channels), heads=int(heads))
    fast = FastGATConv(in_channels, out_channels, heads=heads)
    assert type(fast.heads) is int and type(fast.out_channels) is int
    fast.load_state_dict(pyg.state_dict())
    x, edge_index = torch.randn(N, 8), good_inputs()[1]
    x = (x, torch.randn(N, 8)) if pair else x
    torch.testing.assert_close(fast(x, edge_index), pyg(x, edge_index))


def test_repr_names_the_class():  # what the README shows
    assert repr(FastGATConv(8, 32, heads=2)) == "FastGATConv(8, 32, heads=2)"


def _error_of(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


# Bad inputs on which GATConv fails inside torch (IndexError, RuntimeError) or in PyG
# (ValueError); FastGATConv names the problem in an exception of GATConv's type too.
@pytest.mark.parametrize("x,edge_index,edge_attr,kwargs,match", [
    (torch.ones(N, 4, dtype=torch.long), None, None, {}, "floating point"),
    (None, torch.tensor([[0, 1, 2]]), None, {}, r"shape \(2, num_edges\)"),
    (None, torch.tensor([[0, 1], [1, 2], [2, 3]]), None, {}, r"shape \(2, num_edges\)"),
    (None, torch.tensor([0, 1, 2]), None, {}, r"shape \(2, num_edges\)"),
    (None, torch.tensor([[0.0, 1.0], [1.0, 2.0]]), None, {}, "integers"),
    (None, [[0, 1], [1, 2]], None, {}, "edge_index must be"),
    (None, None, torch.randn(3, 2), {}, "edge_attr must have shape"),
    (None, None, torch.randn(5, 2), dict(add_self_loops=False), "edge_attr must have shape"),
    (None, None, torch.randn(4, 5), {}, "edge_attr must have shape"),
    (None, None, torch.randn(4, 2, 2), dict(add_self_loops=False), "edge_attr must have shape"),
], ids=["int64-x", "edge_index-1xE", "edge_index-3x2", "edge_index-1d", "float-edge_index",
        "list-edge_index", "edge_attr-rows-loops", "edge_attr-rows-no-loops",
        "edge_attr-width", "edge_attr-3d"])
def test_bad_input_raises_what_gatconv_raises(x, edge_index, edge_attr, kwargs, match):
    good_x, good_edge_index = good_inputs()
    x = good_x if x is None else x
    edge_index = good_edge_index if edge_index is None else edge_index
    kwargs = dict(kwargs, edge_dim=2) if edge_attr is not None else kwargs
    expected = type(_error_of(lambda: GATConv(4, 3, heads=2, **kwargs)(x, edge_index, edge_attr)))
    assert expected in (IndexError, RuntimeError, ValueError)  # the case still fails in GATConv
    with pytest.raises(expected, match=match):
        layer(**kwargs)(x, edge_index, edge_attr)


def test_unavailable_backend_says_why():
    x, edge_index = good_inputs()
    with pytest.raises(RuntimeError, match="'cuda' is unavailable on cpu"):
        layer(backend="cuda")(x, edge_index)


@pytest.mark.parametrize("version,available", [("3.6.0", False), ("3.7.0", True),
                                               ("3.10.1", True)])
def test_triton_interpreter_needs_triton_3_7(monkeypatch, version, available):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    reason = unavailable_reason("triton", "cpu")
    assert (reason == "") == available
    assert available or "triton >= 3.7" in reason


def test_prepared_graph_is_validated_once_then_never(monkeypatch):
    x, edge_index = good_inputs()
    graph = Graph.from_coo(edge_index[0], edge_index[1], N, N, drop_self_loops=True, num_loops=N)
    calls = []
    monkeypatch.setattr(fastgat.graph, "_check_range", lambda *a: calls.append(a))
    conv = layer()
    conv(x, graph)
    conv(x, graph)
    assert calls == []  # no per-forward range check (a host sync on the GPU)
    monkeypatch.undo()
    with pytest.raises(IndexError, match="destination node index 8"):  # but one when built
        Graph.from_coo(torch.tensor([0]), torch.tensor([N]), N, N, drop_self_loops=True)
    with pytest.raises(ValueError, match="expected size 8"):
        conv(torch.randn(N + 1, 4), graph)


def test_graph_rejects_bad_loop_count():
    with pytest.raises(ValueError, match="num_loops"):
        Graph.from_coo(torch.tensor([0]), torch.tensor([1]), 2, 3, drop_self_loops=True,
                       num_loops=3)


def test_op_checks_its_contract():
    from fastgat.ops import gat_attention
    graph = Graph.from_coo(torch.tensor([0, 1]), torch.tensor([1, 2]), 3, 3,
                           drop_self_loops=True, num_loops=3)
    h, s, d = torch.randn(3, 2, 4), torch.randn(3, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match="d must be a torch.float32 tensor"):
        gat_attention(h, s, d.double(), None, None, *graph.op_args(), 3, 0.2, 0.0, None, "torch")
    with pytest.raises(ValueError, match=r"t must be .* of shape \(2, 2\)"):
        gat_attention(h, s, d, torch.randn(5, 2), None, *graph.op_args(), 3, 0.2, 0.0, None,
                      "torch")
    with pytest.raises(ValueError, match="seed"):
        gat_attention(h, s, d, None, None, *graph.op_args(), 3, 0.2, 0.5, None, "torch")


def test_package_without_compiled_library_says_why(monkeypatch):
    import importlib
    import sys

    import fastgat
    import fastgat._extension as extension
    find_spec = importlib.util.find_spec
    monkeypatch.delattr(fastgat, "_C")
    monkeypatch.setitem(sys.modules, "fastgat._C", None)  # importing it now fails
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "fastgat._C" else find_spec(name, *args))
    try:
        importlib.reload(extension)
        status = fastgat.available_backends("cpu")
        assert "fastgat._C is not built" in status["cpu"] and status["torch"] == "available"
    finally:
        monkeypatch.undo()
        importlib.reload(extension)
    assert fastgat.available_backends("cpu")["cpu"] == "available"


@pytest.mark.parametrize("built, cuda_torch, reason", [
    (False, "13.0", "built without its CUDA kernels"),
    (True, None, "need a CUDA build of torch; this torch is CPU-only"),
])
def test_cuda_library_says_why_it_is_not_loaded(monkeypatch, built, cuda_torch, reason):
    """fastgat._cuda, apart from _C so that a CPU-only torch still loads the CPU kernels, is not
    loaded where it cannot be, and says why."""
    import importlib

    import fastgat._extension as extension
    find_spec = importlib.util.find_spec
    library = types.SimpleNamespace(origin="/nonexistent/_cuda.abi3.so")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        (library if built else None) if name == "fastgat._cuda" else find_spec(name, *args)))
    monkeypatch.setattr(torch.version, "cuda", cuda_torch)
    assert reason in extension._load_cuda_kernels()


def test_backends_is_the_subpackage_and_the_old_call_still_works():
    import fastgat
    import fastgat.backends as backends
    assert isinstance(backends, types.ModuleType) and backends.resolve("torch", "cpu") == "torch"
    expected = fastgat.available_backends("cpu")
    assert expected["torch"] == "available"
    with pytest.warns(DeprecationWarning, match="available_backends"):
        assert fastgat.backends("cpu") == expected
    with pytest.warns(DeprecationWarning, match="available_backends"):
        from fastgat.backends import backends as old_function
    assert old_function("cpu") == expected
