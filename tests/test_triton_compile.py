"""Every Triton kernel of backend='triton' compiles, through ptxas to a cubin, for NVIDIA sm_90
and sm_80 with the installed Triton, without a GPU.

The CPU tests run the kernels under the Triton interpreter, which never invokes Triton's
compiler; this test does. A worker subprocess (this file run as a script, TRITON_INTERPRET
unset so triton_kernels takes its GPU path: CHUNK, autotuned BLOCK_E / num_warps) calls every
rule's <rule>_forward / <rule>_backward on small CPU tensors with every launch intercepted:
autotuned kernels record the configs their pruner leaves (the set the autotuner would
benchmark), plain kernels their arguments. Each launch is then specialized exactly as JITFunction.run does
(its binder and _pack_args, for a CUDA target) and compiled with triton.compile; ptxas's log
gives registers and spills.

CI compiles CASES: all pruned configs for one case, the heaviest config (largest BLOCK_E,
fewest warps) for the others. Run as a script to print the table of registers and spills:
with no arguments for CASES, with `sweep` for every dtype x feature set x offset width x arch
with all configs (~5 min on 2 cores; 480 compiles, all passed on triton 3.6 and 3.9).
"""
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest

# Minutes, not seconds: `pytest -m "not slow"` leaves it out of the quick loop.
pytestmark = pytest.mark.slow

pytest.importorskip("triton")
import triton_internals  # noqa: E402

ARCHS = (90, 80)
DTYPES = ("float32", "bfloat16", "float16", "float64")
# name -> (dtype, H, C, t, t_loop, dropout, wide int64 offsets, arch, configs)
CASES = {
    "bf16-t-tloop-dropout-sm90-all": ("bfloat16", 3, 5, True, True, 0.1, False, 90, "all"),
    "f16-plain-sm90": ("float16", 4, 16, False, False, 0.0, False, 90, "heaviest"),
    "f32-t-dropout-wide-sm90": ("float32", 1, 7, True, False, 0.2, True, 90, "heaviest"),
    "f64-tloop-dropout-wide-sm80": ("float64", 2, 3, False, True, 0.1, True, 80, "heaviest"),
    "bf16-t-tloop-wideC-sm80": ("bfloat16", 8, 40, True, True, 0.0, False, 80, "heaviest"),
    "f32-t-tloop-sm80": ("float32", 2, 6, True, True, 0.5, False, 80, "heaviest"),
}
# Plain: H, C powers of two; all features (t, t_loop, dropout): padded H and C.
SWEEP = {
    f"{dtype}-{'all-features' if full else 'plain'}-{'wide' if wide else 'int32'}-sm{arch}":
    (dtype, *((3, 40) if full else (4, 16)), full, full, 0.1 if full else 0.0, wide, arch, "all")
    for dtype in DTYPES for full in (False, True) for wide in (False, True) for arch in ARCHS
}
# Names as launched, GAT's then GATv2's then TransformerConv's forward and backward; a program
# with a scoring rule is labelled with it, merge_sum_kernel with the sums it merges.
RULE_NAMES = ("gat", "gatv2", "transformer")
def expected_launches(has_t):
    """The launches of _launch_all in order; dead slots are zeroed where there are edge
    inputs."""
    dead = ("zero_dead_slots_kernel",) if has_t else ()
    return ("forward_kernel[gat]", "merge_softmax_kernel", "row_dot_kernel", *dead,
            "backward_csc_kernel", "merge_sum_kernel[a,b]", "segment_sum_kernel",
            "merge_sum_kernel[a]",
            "forward_kernel[gatv2]", "merge_softmax_kernel", "row_dot_kernel", *dead,
            "backward_rows_kernel[gatv2]", "merge_sum_kernel[a]", "backward_cols_kernel[gatv2]",
            "merge_sum_kernel[a]",
            "forward_kernel[transformer]", "merge_softmax_kernel", "row_dot_kernel", *dead,
            "backward_rows_kernel[transformer]", "merge_sum_kernel[a]",
            "backward_cols_kernel[transformer]", "merge_sum_kernel[a,b]")


NUM_NODES = 8


def _worker_env(cache_dir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # A fresh cache, so ptxas really runs (and logs) for every kernel.
    return {**env, "TRITON_CACHE_DIR": str(cache_dir), "TRITON_DUMP_PTXAS_LOG": "1"}


def compile_cases(cases, tmp_dir):
    """Run the worker on {name: case}; returns {name: result} (see _compile_case)."""
    spec, result = tmp_dir / "cases.json", tmp_dir / "results.json"
    spec.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, __file__, str(spec), str(result)],
                          env=_worker_env(tmp_dir / "triton-cache"), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, f"compile worker failed:\n{proc.stdout}\n{proc.stderr}"
    print(proc.stdout)  # the table of kernels, configs, registers and spills (pytest -s)
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def ci_results(tmp_path_factory):
    return compile_cases(CASES, tmp_path_factory.mktemp("triton-compile"))


def check_case(name, case, res):
    dtype, heads, channels, has_t, has_t_loop, dropout, wide, arch, _ = case
    assert not res["interpret"] and res["autotuned"], "compiled the interpreter's configuration"
    unlaunched = [] if has_t else ["zero_dead_slots_kernel"]  # no edge input, no dead slot
    assert res["kernels"] == sorted(res["launched"] + unlaunched), (
        f"{name}: kernels {res['kernels']} of triton_device vs launched {res['launched']}")
    assert [launch["label"] for launch in res["launches"]] == list(expected_launches(has_t))
    for launch in res["launches"]:
        # The launch covers what the case claims (the kernels see exactly these constexprs).
        meta = launch["constexprs"]
        loops = has_t_loop and not launch["label"].endswith("[transformer]")  # it has none
        expect = dict(WIDE=wide, HAS_T=has_t, HAS_T_LOOP=loops, DROPOUT=dropout > 0,
                      H=heads, C=channels)
        seen = {k: meta[k] for k in expect if k in meta}
        assert seen == {k: expect[k] for k in seen}, launch["label"]
        failed = [c for c in launch["compiled"] if not c["ok"]]
        assert not failed, (f"{name}: {launch['label']} failed to compile for sm_{arch}:\n"
                            + "\n".join(f"{c['config']}:\n{c['error']}" for c in failed))
        for c in launch["compiled"]:
            assert c["cubin_bytes"] > 0 and c["arch"] == arch, (launch["label"], c)
    assert res["signature"]["h"] == {"float32": "*fp32", "bfloat16": "*bf16",
                                     "float16": "*fp16", "float64": "*fp64"}[dtype]
    assert res["signature"]["col"] == ("*i64" if wide else "*i32")


@pytest.mark.parametrize("name", CASES)
def test_kernels_compile(name, ci_results):
    check_case(name, CASES[name], ci_results[name])


def test_all_pruned_configs_compiled(ci_results):
    """The 'all' case compiles more than one autotune config per autotuned kernel."""
    res = ci_results["bf16-t-tloop-dropout-sm90-all"]
    tuned = [launch for launch in res["launches"] if launch["label"].startswith(
        ("forward", "backward"))]
    assert all(len(launch["compiled"]) > 1 for launch in tuned)


def test_compile_error_fails(ci_results):
    """The harness reports a real compiler error: forward_kernel with a channel tile that is
    not a power of two (tl.arange rejects it)."""
    probe = ci_results["probe"]
    assert not probe["ok"] and "power of 2" in probe["error"], probe



# ---------------------------------------------------------------- worker (own process) -----

def _heaviest(configs):
    """Most elements per thread: the largest edge block on the fewest warps."""
    return [max(configs, key=lambda c: (c.get("BLOCK_E", 0), -c.get("num_warps", 0)))]


def _launch_all(tk, case):
    """The forward and backward of every rule (GAT, GATv2, TransformerConv) on a graph where
    node 0 receives and node 1 sends more than CHUNK edges, so every kernel (merges included)
    launches; the case's t / t_loop are also GATv2's e / e_loop and TransformerConv's e."""
    import torch
    from fastgat.graph import Graph
    dtype, heads, channels, has_t, has_t_loop, dropout, wide, _, _ = case
    dtype, n, hub = getattr(torch, dtype), NUM_NODES, tk.CHUNK + 5
    g = torch.Generator().manual_seed(0)
    # The hubs' edges are no self loops (dropped ones would leave them at CHUNK or less).
    src = torch.cat([torch.randint(1, n, (hub,), generator=g), torch.full((hub,), 1),
                     torch.randint(0, n, (16,), generator=g)])
    dst = torch.cat([torch.full((hub,), 0), torch.randint(2, n, (hub,), generator=g),
                     torch.randint(0, n, (16,), generator=g)])
    graph = Graph.from_coo(src, dst, n, n, drop_self_loops=True, num_loops=n)
    index = [graph.rowptr, graph.col, graph.colptr, graph.csc_row, graph.csc_eid]
    if wide:  # what a graph past 2^31 offsets gets: int64 indices and WIDE
        index = [x.long() for x in index]
    rowptr, col, colptr, csc_row, csc_eid = index
    rand = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    h, s, d = rand(n, heads, channels), rand(n, heads), rand(n, heads)
    t = rand(col.numel(), heads) if has_t else None
    t_loop = rand(n, heads) if has_t_loop else None
    seed = torch.tensor([7])
    limit = tk._INT32_LIMIT
    tk._INT32_LIMIT = 0 if wide else limit
    try:
        out, lse = tk.gat_forward(h, s, d, t, t_loop, rowptr, col, n, 0.2, dropout, seed)
        tk.gat_backward(torch.ones_like(out), out, lse, h, s, d, t, t_loop, rowptr, col, colptr,
                        csc_row, csc_eid, n, 0.2, dropout, seed)
        xr, att = rand(n, heads, channels), rand(heads, channels)
        e = rand(col.numel(), heads, channels) if has_t else None
        e_loop = rand(n, heads, channels) if has_t_loop else None
        out, lse = tk.gatv2_forward(h, xr, att, e, e_loop, rowptr, col, n, 0.2, dropout, seed)
        tk.gatv2_backward(torch.ones_like(out), out, lse, h, xr, att, e, e_loop, rowptr, col,
                          colptr, csc_row, csc_eid, n, 0.2, dropout, seed)
        out, lse = tk.transformer_forward(xr, h, h, e, rowptr, col, 0.5, dropout, seed)
        tk.transformer_backward(torch.ones_like(out), out, lse, xr, h, h, e, rowptr, col, colptr,
                                csc_row, csc_eid, 0.5, dropout, seed)
    finally:
        tk._INT32_LIMIT = limit


def _compile(fn, args, kwargs, arch):
    """Compile one launch for sm_<arch>; ptxas's log gives registers and spills."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
        signature, kernel = triton_internals.compile_launch(fn, args, kwargs, arch)
    regs = re.search(r"Used (\d+) registers", log.getvalue())
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
    return signature, dict(ok=True, arch=kernel.metadata.target.arch,
                           cubin_bytes=len(kernel.asm["cubin"]),
                           regs=int(regs[1]) if regs else None,
                           spill_stores=int(spills[1]) if spills else None,
                           spill_loads=int(spills[2]) if spills else None)


def _error(e):
    """The error and its causes (a CompilationError shows the source line, its cause why)."""
    chain = []
    while e is not None and len(chain) < 4:
        chain.append(f"{type(e).__name__}: {e}"[:3000])
        e = e.__cause__ or e.__context__
    return "\n".join(chain)


def _label(fn, kwargs):
    if fn.__name__ == "merge_sum_kernel":
        return f"merge_sum_kernel[{'a,b' if kwargs['HAS_B'] else 'a'}]"
    if "RULE" in kwargs:
        return f"{fn.__name__}[{RULE_NAMES[kwargs['RULE']]}]"
    return fn.__name__


def _plain(value):
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def _compile_case(tk, case):
    import triton
    launches = triton_internals.capture_launches()
    _launch_all(tk, case)
    arch, which = case[7], case[8]
    res = dict(interpret=tk.dev.INTERPRET,
               autotuned=isinstance(tk._forward_kernel, triton.runtime.autotuner.Autotuner),
               kernels=sorted(name for name, obj in vars(tk.dev).items()
                              if isinstance(obj, triton.runtime.jit.JITFunction)
                              and name.endswith("_kernel")),
               launched=sorted({fn.__name__ for fn, *_ in launches}), launches=[])
    for fn, args, kwargs, configs in launches:
        entry = dict(label=_label(fn, kwargs), compiled=[],
                     constexprs={k: _plain(v) for k, v in kwargs.items()})
        for config in (configs if which == "all" else _heaviest(configs)):
            try:
                signature, out = _compile(fn, args, {**kwargs, **config}, arch)
                res.setdefault("signature", signature)
            except Exception as e:  # a compile error fails the test with its message
                out = dict(ok=False, error=_error(e))
            entry["compiled"].append(dict(config=config, **out))
        res["launches"].append(entry)
    return res


def _probe(tk):
    """forward_kernel with C_P2 = C = 5: must fail in the compiler."""
    launches = triton_internals.capture_launches()
    _launch_all(tk, ("float32", 2, 5, False, False, 0.0, False, 90, "heaviest"))
    fn, args, kwargs, configs = launches[0]
    try:
        _compile(fn, args, {**kwargs, **configs[0], "C_P2": 5}, 90)
        return dict(ok=True)
    except Exception as e:
        return dict(ok=False, error=_error(e))


def _table(results):
    rows = []
    for name, res in results.items():
        for launch in res.get("launches", ()):
            for c in launch["compiled"]:
                cfg = {k: v for k, v in c["config"].items() if k in ("BLOCK_E", "num_warps")}
                rows.append(f"{name:34} {launch['label']:24} {str(cfg):32} "
                            + (f"ok  regs={c['regs']} spills={c['spill_stores']}/"
                               f"{c['spill_loads']}" if c["ok"] else "FAILED"))
    return "\n".join(rows)


def _worker(cases):
    import triton
    assert os.environ.get("TRITON_INTERPRET") != "1", "the worker must run without the interpreter"
    from fastgat.backends import triton_kernels as tk
    results = {name: _compile_case(tk, case) for name, case in cases.items()}
    results["probe"] = _probe(tk)
    print(f"triton {triton.__version__}")
    print(_table(results))
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3:
        with open(sys.argv[1]) as f:
            result = _worker(json.load(f))
        with open(sys.argv[2], "w") as f:
            json.dump(result, f)
    else:  # by hand: python tests/test_triton_compile.py [sweep]
        import tempfile
        os.environ.pop("TRITON_INTERPRET", None)
        os.environ.update(TRITON_CACHE_DIR=tempfile.mkdtemp(), TRITON_DUMP_PTXAS_LOG="1")
        _worker(SWEEP if sys.argv[1:] == ["sweep"] else CASES)
