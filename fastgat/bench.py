"""python -m fastgat.bench: PyG's GATConv, GATv2Conv and TransformerConv vs fastgat's (every
available backend) vs the SpMM floor.

    python -m fastgat.bench [--quick] [--device cpu|cuda] [--dtype float32|bfloat16]
                            [--workloads cora,arxiv,reddit:8x64,...] [--layers gat,gatv2,transformer]
                            [--out DIR]

Per layer (a workload of fastgat.workloads and a heads x channels shape) and implementation it
measures the forward (under no_grad), the training step (forward + backward of a fixed dout into
the parameters) and the step's peak memory, then prints a table and writes it with a JSON and a
PNG of the speedups into --out.

Implementations: `pyg` (torch_geometric.nn.GATConv), one FastGATConv per backend that
fastgat.available_backends() reports available on the device (the rest are listed as skipped, with the
reason), `pyg-gatv2` / `pyg-transformer` (torch_geometric.nn.GATv2Conv / TransformerConv) and
`gatv2-<backend>` / `transformer-<backend>` (FastGATv2Conv / FastTransformerConv on each backend
with their kernels; speedups are over the PyG layer of the same family), and the floor: the same layer with the attention replaced by fixed weights
1/in-degree, i.e. x·W then torch.sparse.mm of the same graph (self loops added, multi-edges
kept) at width heads·channels, as CSR (`spmm`) and as COO (`spmm-coo`). "fwd / floor" and
"fwd+bwd / floor" are a time over the faster floor's.

Timing: medians over repeats after warm-up (at least `min_repeats`, more while the time budget
per measurement lasts); on CUDA each repeat is bracketed by CUDA events after a synchronize. The
implementations of a case run interleaved, one call of each per round, so that a change in the
machine's speed during the run hits all of them alike (time_interleaved).

Peak memory is the extra memory of one training step after warm-up, above what the inputs,
the module and fastgat's cached graph already hold:
  cuda  torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated.
  cpu   the process's peak resident set: the kernel's high-water mark VmHWM (/proc/self/status)
        is reset to the current RSS by writing 5 to /proc/self/clear_refs, and the step's peak is
        VmHWM minus that baseline. The peak is taken in a second fresh worker per case, after
        warm-up, with glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_), so a freed
        tensor leaves the resident set at once and one implementation's freed memory cannot hide
        the next one's peak. The timing worker keeps glibc's default (dynamic) threshold, as a
        user's process does: under the fixed one every large tensor is a fresh mapping whose
        pages fault in, which doubled PyG's mini-batch training step (benchmarks/RESULTS.md).
Out of memory is recorded as such, not a crash: on CUDA torch.OutOfMemoryError; on the CPU each
worker's address space is capped (--cpu-mem-limit) so an oversized case fails its allocation
instead of waking the kernel's OOM killer.
"""
import argparse
import datetime
import functools
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from .workloads import (CPU_MAX_EDGES, CPU_MAX_NODES, TASKS, WORKLOADS, Case, Task, Workload,
                        csr_by_destination, make_graph, molecule_batch, parse_cases,
                        power_law_edges, sample_neighbors)

PYG, FLOOR, FLOOR_COO = "pyg", "spmm", "spmm-coo"


class Family(NamedTuple):
    """An attention layer measured: PyG's class and ours, and their names in the results (ours
    is `prefix` + a backend name)."""
    pyg: str
    prefix: str
    pyg_class: str
    fast_class: str
    rule: str  # fastgat.backends.RULES key: which backends have its kernels


FAMILIES = {"gat": Family(PYG, "", "GATConv", "FastGATConv", "gat"),
            "gatv2": Family("pyg-gatv2", "gatv2-", "GATv2Conv", "FastGATv2Conv", "gatv2"),
            "transformer": Family("pyg-transformer", "transformer-", "TransformerConv",
                                  "FastTransformerConv", "transformer")}
LAYERS = tuple(FAMILIES)
PYGS = tuple(f.pyg for f in FAMILIES.values())
FLOORS = (FLOOR, FLOOR_COO)  # torch.sparse.mm on CSR and on COO: the floor is the faster
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUICK_WORKLOADS = "cora,pubmed:8x32,arxiv:4x64"
QUICK_MAX_NODES, QUICK_MAX_EDGES = 20_000, 100_000
_RESULT = "@@fastgat-bench "   # prefix of the worker's result lines on its stdout


# -- what is measured -------------------------------------------------------------------------
def fastgat_backends(device: str) -> Tuple[List[str], Dict[str, str]]:
    """(backends to measure on `device`, {skipped backend: reason}) from
    fastgat.available_backends()."""
    from .backends import available_backends
    run, skipped = [], {}
    for name, status in available_backends(device).items():
        if status != "available":
            skipped[name] = status
        elif name == "triton" and device == "cpu":
            skipped[name] = "runs on CPU only under the Triton interpreter, a correctness tool"
        else:
            run.append(name)
    return run, skipped


def family_impls(layer: str, device: str) -> List[str]:
    """Our layer of family `layer` on every backend measured on `device` that has its kernels."""
    from .backends import unavailable_reason
    family = FAMILIES[layer]
    return [family.prefix + name for name in fastgat_backends(device)[0]
            if not unavailable_reason(name, device, family.rule)]


def family_of(impl: str) -> Family:
    """The family of a PyG layer or of ours (the floors count as GAT's: a GATConv shape)."""
    for family in FAMILIES.values():
        if impl == family.pyg or (family.prefix and impl.startswith(family.prefix)):
            return family
    return FAMILIES["gat"]


def pyg_of(impl: str) -> Optional[str]:
    """The PyG layer `impl` is compared with (None for the PyG layers themselves)."""
    return None if impl in PYGS else family_of(impl).pyg


def is_oom(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's refusal (its message is all it has)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory"
        in str(error))


def floor_adjacency(edge_index: torch.Tensor, num_nodes: int, dtype) -> torch.Tensor:
    """CSR by destination of GATConv's edge set (self loops replaced by one per node, duplicates
    kept), weighted 1/in-degree: the matrix a fixed-weight mean aggregation multiplies by."""
    src, dst = edge_index
    keep = src != dst
    loops = torch.arange(num_nodes, device=src.device)
    src, dst = torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])
    order = torch.argsort(dst * num_nodes + src)
    src, dst = src[order], dst[order]
    counts = torch.bincount(dst, minlength=num_nodes)
    rowptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    values = (1.0 / counts[dst].to(torch.float32)).to(dtype)
    with warnings.catch_warnings():  # torch's notice that sparse CSR is a beta feature
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(rowptr, src, values, (num_nodes, num_nodes))


class Layer:
    """One implementation of one case, ready to run: `forward()` and `step()` (fwd + bwd)."""

    def __init__(self, case: Case, impl: str, x: torch.Tensor, edge_index: torch.Tensor,
                 seed: int):
        import torch_geometric.nn

        import fastgat
        w, heads, channels = case.workload, case.heads, case.out_channels
        torch.manual_seed(seed)  # every implementation starts from the same parameters
        if impl in FLOORS:
            self.module = torch.nn.Linear(w.in_channels, heads * channels)
            self.adj = floor_adjacency(edge_index, w.num_nodes, x.dtype)
            if impl == FLOOR_COO:
                self.adj = self.adj.to_sparse_coo()
            self.run = lambda: torch.sparse.mm(self.adj, self.module(x))
        else:
            family = family_of(impl)
            if impl == family.pyg:
                conv = getattr(torch_geometric.nn, family.pyg_class)
            else:
                conv = functools.partial(getattr(fastgat, family.fast_class),
                                         backend=impl[len(family.prefix):])
            self.module = conv(w.in_channels, channels, heads=heads)
            self.run = lambda: self.module(x, edge_index)
        self.module.to(device=x.device, dtype=x.dtype)
        generator = torch.Generator(device=x.device).manual_seed(seed + 2)
        self.dout = torch.randn(w.num_nodes, heads * channels, generator=generator,
                                device=x.device, dtype=x.dtype)

    def forward(self) -> None:
        with torch.no_grad():
            self.run()

    def step(self) -> None:
        self.module.zero_grad(set_to_none=True)
        self.run().backward(self.dout)


class TaskModel(torch.nn.Module):
    """The model of a Task (fastgat.workloads) built from one conv class: PyG's GATConv or
    FastGATConv(backend=...)."""

    def __init__(self, task: Task, heads: int, channels: int, conv):
        super().__init__()
        width = heads * channels
        if task.kind == "minibatch":
            self.convs = torch.nn.ModuleList([conv(task.in_channels, channels, heads=heads),
                                              conv(width, task.classes, heads=1)])
            self.head = None
        else:
            self.convs = torch.nn.ModuleList(
                [conv(task.in_channels if i == 0 else width, channels, heads=heads)
                 for i in range(task.layers)])
            self.head = torch.nn.Linear(width, 1)
        self.dropout = task.feature_dropout

    def forward(self, x, edge_index, batch=None, num_graphs=None):
        for i, conv in enumerate(self.convs):
            x = torch.nn.functional.dropout(x, self.dropout, self.training)
            x = conv(x, edge_index)
            if self.head is not None or i + 1 < len(self.convs):
                x = torch.nn.functional.elu(x)
        if self.head is None:
            return x
        from torch_geometric.nn import global_mean_pool
        return self.head(global_mean_pool(x, batch, num_graphs))


def task_batches(task: Task, seed: int, count: int, distinct: int = 8) -> List[dict]:
    """`count` batches (x, edge_index, batch, y) cycling through `distinct` draws; every one
    has its own edge_index object, so no step finds its graph in fastgat's cache."""
    generator = torch.Generator().manual_seed(seed)
    draws = []
    if task.kind == "minibatch":
        base = WORKLOADS["arxiv"]  # full size: 169k nodes, 2.3M edges, 128 features
        edge_index = power_law_edges(base.num_nodes, base.num_edges, base.skew, seed)
        rowptr, col = csr_by_destination(edge_index, base.num_nodes)
        x = torch.randn(base.num_nodes, task.in_channels, generator=generator)
        for _ in range(distinct):
            seeds = torch.randperm(base.num_nodes, generator=generator)[:task.seeds]
            nodes, local = sample_neighbors(rowptr, col, seeds, task.fanouts, generator)
            y = torch.randint(0, task.classes, (task.seeds,), generator=generator)
            draws.append(dict(x=x[nodes], edge_index=local, batch=None, y=y))
    else:
        for _ in range(distinct):
            x, edge_index, batch = molecule_batch(task.graphs, task.in_channels, generator)
            draws.append(dict(x=x, edge_index=edge_index, batch=batch,
                              y=torch.randn(task.graphs, 1, generator=generator)))
    return [dict(draws[i % distinct], edge_index=draws[i % distinct]["edge_index"].clone())
            for i in range(count)]


class TaskRunner:
    """One implementation of a Task: `forward()` is an inference step (inference_mode, the
    batch's tensors made there too, as a loader inside that block makes them), `step()` a
    training step (forward, loss, backward into the parameters); each on the next batch."""

    def __init__(self, case: Case, impl: str, batches: List[dict], infer: List[dict],
                 seed: int):
        from torch_geometric.nn import GATConv

        from .conv import FastGATConv
        torch.manual_seed(seed)
        conv = GATConv if impl == PYG else (lambda *a, **k: FastGATConv(*a, backend=impl, **k))
        self.task = case.workload
        self.model = TaskModel(self.task, case.heads, case.out_channels, conv)
        self.batches, self.infer = iter(batches), iter(infer)

    def _loss(self, out, b):
        if self.task.kind == "minibatch":
            return torch.nn.functional.cross_entropy(out[:b["y"].numel()], b["y"])
        return torch.nn.functional.mse_loss(out, b["y"])

    def forward(self) -> None:
        b = next(self.infer)
        self.model.eval()
        with torch.inference_mode():
            self.model(b["x"], b["edge_index"], b["batch"], self.task.graphs)

    def step(self) -> None:
        b = next(self.batches)
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        self._loss(self.model(b["x"], b["edge_index"], b["batch"], self.task.graphs),
                   b).backward()


def measure_task(spec: dict, case: Case) -> None:
    """Like measure, for a Task; the implementations' steps interleave (one of each per round),
    so a change in the machine's load hits all of them alike."""
    # Model workloads are GAT models: no floor, and no other layer's rows.
    impls = [impl for impl in spec["impls"] if impl not in FLOORS and PYG in (impl, pyg_of(impl))]
    rounds = spec["warmup"] + spec["max_repeats"]
    count = rounds + 4  # timed steps (or forwards), the peak's step, margin
    batches = task_batches(case.workload, spec["seed"], count)
    with torch.inference_mode():
        infer = [dict(b, edge_index=b["edge_index"].clone()) for b in batches]
    runners = {impl: TaskRunner(case, impl, batches, infer, spec["seed"]) for impl in impls}
    phase = spec.get("phase", "both")
    timing = _timing(spec)
    times = {impl: ([], []) for impl in impls}
    for kind in (0, 1) if phase != "peak" else ():
        fns = {impl: (runner.forward, runner.step)[kind] for impl, runner in runners.items()}
        for impl, repeats in time_interleaved(fns, **timing).items():
            times[impl][kind].extend(repeats)
    size = dict(num_nodes=round(statistics.mean(b["x"].size(0) for b in batches)),
                num_edges=round(statistics.mean(b["edge_index"].size(1) for b in batches)))
    for impl in spec["impls"]:
        if impl not in impls:
            reason = ("no floor for a model workload" if impl in FLOORS
                      else "the model workloads are GAT models")
            print(_RESULT + json.dumps({"impl": impl, "status": "skipped", **size,
                                        "reason": reason}), flush=True)
    for impl, runner in runners.items():
        result = dict(impl=impl, status="ok", **size)
        if phase != "peak":
            result.update(fwd_ms=statistics.median(times[impl][0]),
                          fwd_bwd_ms=statistics.median(times[impl][1]),
                          fwd_repeats=len(times[impl][0]), fwd_bwd_repeats=len(times[impl][1]))
        if phase != "time":
            for _ in range(spec["warmup"] + 1):
                runner.step()
            result["peak_mib"] = peak_mib(runner.step, "cpu")
        print(_RESULT + json.dumps(result), flush=True)


# -- timing and memory ------------------------------------------------------------------------
def _timing(spec: dict) -> dict:
    return {k: spec[k] for k in ("device", "warmup", "min_repeats", "max_repeats", "budget_s")}


def time_once(fn: Callable[[], None], device: str) -> float:
    """Milliseconds of one call of fn."""
    if device == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)
    tic = time.perf_counter()
    fn()
    return (time.perf_counter() - tic) * 1e3


def time_interleaved(fns: Dict[str, Callable[[], None]], device: str, warmup: int,
                     min_repeats: int, max_repeats: int, budget_s: float,
                     on_error: Optional[Callable[[str, BaseException], None]] = None
                     ) -> Dict[str, List[float]]:
    """Milliseconds of each repeat of each fn, after `warmup` rounds. A round calls every fn
    once, in turn, so a change in the machine's speed (load, clocks) hits all of them alike and
    their ratios hold still; rounds go on to max_repeats, or stop after min_repeats once
    budget_s per fn is spent. A fn that raises is dropped and reported to on_error (raised
    without one)."""
    fns = dict(fns)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(warmup + max_repeats):
        if r == warmup:
            start = time.perf_counter()
        elif (r >= warmup + min_repeats
              and time.perf_counter() - start >= budget_s * max(1, len(fns))):
            break
        for name, fn in list(fns.items()):
            try:
                elapsed = time_once(fn, device)
            except Exception as error:  # noqa: BLE001  (handed to on_error)
                if on_error is None:
                    raise
                del fns[name], times[name]
                on_error(name, error)
                continue
            if r >= warmup:
                times[name].append(elapsed)
    return times


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_mib(fn: Callable[[], None], device: str) -> float:
    """Extra peak memory of one call of fn (see the module docstring for how)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident set
    base = _proc_status_kib("VmRSS")
    fn()
    # RSS counters are batched per thread (~0.25 MiB): a step that allocates nothing may
    # read a hair below its baseline; that is 0.
    return max(0.0, (_proc_status_kib("VmHWM") - base) / 1024)


# -- the worker: one case, several implementations, in a fresh process ------------------------
def measure(spec: dict) -> None:
    """Runs in the worker process; prints one result line per implementation."""
    device, dtype = spec["device"], DTYPES[spec["dtype"]]
    if spec["workload"]["name"] in TASKS:
        if device != "cpu" or dtype != torch.float32:
            raise SystemExit("model workloads run on the CPU in float32")
        workload = spec["workload"]
        workload["shapes"] = tuple(map(tuple, workload["shapes"]))
        workload["fanouts"] = tuple(workload["fanouts"])
        return measure_task(spec, Case(Task(**workload), spec["heads"], spec["out_channels"]))
    case = Case(Workload(**spec["workload"]), spec["heads"], spec["out_channels"])
    if device == "cpu" and spec["cpu_mem_limit_mib"]:
        limit = _proc_status_kib("VmSize") * 1024 + spec["cpu_mem_limit_mib"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    x, edge_index = make_graph(case.workload, spec["seed"], device, dtype)
    results = {impl: {"impl": impl, "status": "ok"} for impl in spec["impls"]}
    layers: Dict[str, Layer] = {}

    def failed(impl: str, error: BaseException) -> None:  # recorded in the table, never hidden
        if is_oom(error):
            family = family_of(impl)
            name = f"PyG {family.pyg_class}" if impl == family.pyg else impl
            results[impl] = {"impl": impl, "status": "oom", "reason": f"{name} OOM"}
        else:
            traceback.print_exc()
            results[impl] = {"impl": impl, "status": "error",
                             "reason": f"{type(error).__name__}: {error}".splitlines()[0]}
        layers.pop(impl, None)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    for impl in spec["impls"]:
        try:
            layers[impl] = Layer(case, impl, x, edge_index, spec["seed"])
        except Exception as error:  # noqa: BLE001
            failed(impl, error)
    phase = spec.get("phase", "both")
    # All implementations side by side, one call of each per round (time_interleaved).
    for kind, key in (("forward", "fwd"), ("step", "fwd_bwd")) if phase != "peak" else ():
        fns = {impl: getattr(layer, kind) for impl, layer in layers.items()}
        for impl, repeats in time_interleaved(fns, **_timing(spec), on_error=failed).items():
            if impl in layers:
                results[impl][f"{key}_ms"] = statistics.median(repeats)
                results[impl][f"{key}_repeats"] = len(repeats)
    for impl in list(layers) if phase != "time" else ():
        try:
            for _ in range(spec["warmup"] + 1 if phase == "peak" else 0):
                layers[impl].step()
            results[impl]["peak_mib"] = peak_mib(layers[impl].step, device)
        except Exception as error:  # noqa: BLE001
            failed(impl, error)
    for impl in spec["impls"]:
        print(_RESULT + json.dumps(results[impl]), flush=True)


def run_worker(spec: dict, timeout: Optional[float], on_result: Callable[[dict], None]) -> None:
    """Runs `measure(spec)` in a fresh interpreter, killed after `timeout` seconds; the
    implementations it never reported come back as errors carrying its last words. A CPU
    peak (phase "peak") runs under a fixed 1 MiB mmap threshold, timing under the default."""
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if spec["device"] == "cpu" and spec.get("phase") == "peak":
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    env.pop("TRITON_INTERPRET", None)  # the interpreter is never benchmarked
    reported = set()
    with tempfile.TemporaryFile("w+") as stderr:
        worker = subprocess.Popen([sys.executable, "-m", "fastgat.bench", "--worker",
                                   json.dumps(spec)], stdout=subprocess.PIPE, stderr=stderr,
                                  text=True, env=env)
        timer = threading.Timer(timeout, worker.kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        for line in worker.stdout:
            if line.startswith(_RESULT):
                result = json.loads(line[len(_RESULT):])
                reported.add(result["impl"])
                on_result(result)
        worker.wait()
        timed_out = timer is not None and not timer.is_alive() and worker.returncode < 0
        if timer is not None:
            timer.cancel()
        reason = ("timed out: the time budget ended during this layer" if timed_out
                  else _exit_reason(worker.returncode, stderr))
    for impl in spec["impls"]:
        if impl not in reported:
            on_result({"impl": impl, "status": "error", "reason": reason})


def _exit_reason(returncode: int, stderr) -> str:
    if returncode < 0:
        return f"worker killed by signal {-returncode}" + (" (out of memory?)"
                                                           if returncode == -9 else "")
    stderr.seek(0)
    lines = [line.strip() for line in stderr if line.strip()]
    return lines[-1] if lines else f"worker exited with status {returncode}"


# -- the report -------------------------------------------------------------------------------
def add_ratios(results: List[dict]) -> None:
    """Speedup vs the PyG layer (forward, step; pyg_of) and time / floor (forward, step; the
    faster of the CSR and COO floors for each), per case, where both were measured."""
    by_case: Dict[str, Dict[str, dict]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["impl"]] = r
    for r in results:
        if r["status"] != "ok" or pyg_of(r["impl"]) is None:
            continue
        pyg = by_case[r["case"]].get(pyg_of(r["impl"]))
        if pyg is not None and pyg["status"] == "ok":
            r["speedup_fwd"] = pyg["fwd_ms"] / r["fwd_ms"]
            r["speedup_fwd_bwd"] = pyg["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        floors = [f for name, f in by_case[r["case"]].items()
                  if name in FLOORS and f["status"] == "ok"]
        if floors and r["impl"] not in FLOORS:
            r["floor_ratio"] = r["fwd_ms"] / min(f["fwd_ms"] for f in floors)
            r["floor_ratio_fwd_bwd"] = r["fwd_bwd_ms"] / min(f["fwd_bwd_ms"] for f in floors)


def _fmt(value: Optional[float], suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.3g}{suffix}" if value < 100 else f"{value:.0f}{suffix}"


def table(results: List[dict]) -> str:
    """A Markdown table, one row per case and implementation."""
    head = ["layer", "nodes", "edges", "impl", "fwd ms", "fwd+bwd ms", "peak MiB",
            "vs PyG fwd", "vs PyG fwd+bwd", "fwd / floor", "fwd+bwd / floor"]
    rows = []
    for r in results:
        if r["status"] == "ok":
            cells = [_fmt(r["fwd_ms"]), _fmt(r["fwd_bwd_ms"]), _fmt(r["peak_mib"]),
                     _fmt(r.get("speedup_fwd"), "x"), _fmt(r.get("speedup_fwd_bwd"), "x"),
                     _fmt(r.get("floor_ratio"), "x"), _fmt(r.get("floor_ratio_fwd_bwd"), "x")]
        else:
            cells = [r["status"].upper() + ": " + r["reason"]] + ["-"] * 6
        rows.append([r["case"], f"{r['num_nodes']:,}", f"{r['num_edges']:,}", r["impl"]] + cells)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(results: List[dict], meta: dict, path: Path) -> None:
    """Bars of the speedup over PyG (the layer of the same family) per layer and
    implementation, forward and step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in results))
    impls = list(dict.fromkeys(r["impl"] for r in results if pyg_of(r["impl"]) is not None))
    by_key = {(r["case"], r["impl"]): r for r in results}
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(cases) + 4), 4.5), sharey=True)
    width = 0.8 / max(1, len(impls))
    for ax, key, title in zip(axes, ("speedup_fwd", "speedup_fwd_bwd"),
                              ("forward", "forward + backward")):
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, case in enumerate(cases):
                value = by_key.get((case, impl), {}).get(key)
                if value is not None:
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(value)
            floor = impl in FLOORS
            family = family_of(impl)
            label = f"SpMM floor ({'COO' if impl == FLOOR_COO else 'CSR'})" if floor \
                else f"{family.fast_class} {impl[len(family.prefix):]}"
            ax.bar(xs, ys, width, label=label, hatch=("//" if impl == FLOOR else "\\\\")
                   if floor else None, color="0.75" if floor else None)
        for i, case in enumerate(cases):
            pyg = by_key.get((case, PYG))
            if pyg is not None and pyg["status"] != "ok":
                ax.text(i, 1.0, "PyG " + pyg["status"].upper(), ha="center", va="bottom",
                        rotation=90, fontsize=8)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right")
        ax.set_title(title)
    axes[0].set_ylabel("speedup over the PyG layer (x)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{meta['device_name']}, {meta['dtype']}, torch {meta['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the machine and the files --------------------------------------------------------------
def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "fastgat", "csrc"], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev + (" + uncommitted changes" if dirty.strip() else "")


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _meminfo_available_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def report(results: List[dict], meta: dict, out: Path) -> None:
    """Prints the table with its header and writes it, the JSON and the PNG into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-{meta['device']}-{meta['dtype']}"
    load = " -> ".join(", ".join(f"{x:.1f}" for x in loads) for loads in meta["load_average"])
    header = (f"{meta['device_name']} | {meta['dtype']} | torch {meta['torch']}, "
              f"PyG {meta['torch_geometric']}, triton {meta['triton']} | fastgat "
              f"{meta['fastgat_commit']} | {meta['date']} | {meta['wall_s']} s | "
              f"load average (1, 5, 15 min) at start -> end: {load}")
    skipped = "; ".join(f"{name}: {why}" for name, why in meta["skipped_backends"].items())
    text = "\n\n".join([f"`{meta['command']}`", header, table(results),
                        f"Backends not measured: {skipped or 'none'}."])
    print(text)
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results},
                                                    indent=1) + "\n")
    plot(results, meta, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.md, .json and .png")


# -- the command ------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastgat.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"small graphs ({QUICK_WORKLOADS}, at most {QUICK_MAX_NODES:,} "
                             f"nodes / {QUICK_MAX_EDGES:,} edges), few repeats: ~1-2 minutes")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--workloads", default=None,
                        help=f"comma list of {', '.join(WORKLOADS)} (layers) and "
                             f"{', '.join(TASKS)} (models, a new graph per step, CPU float32); "
                             f"NAME:HxC picks one layer shape (default: all layers, each with "
                             f"its shapes)")
    parser.add_argument("--scale", type=float, default=None,
                        help="shrink every graph by this factor (default: full size on CUDA; "
                             "on the CPU each graph fitted under --max-nodes / --max-edges)")
    parser.add_argument("--max-nodes", type=int, default=None)
    parser.add_argument("--max-edges", type=int, default=None)
    parser.add_argument("--layers", default=",".join(LAYERS),
                        help=f"comma list of {', '.join(LAYERS)}: the attention layers measured "
                             f"beside the floor (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=None,
                        help="most timed repeats per measurement (default 20, --quick 5)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the whole run: layers not started by then are "
                             "skipped, the one running then is stopped")
    parser.add_argument("--cpu-mem-limit", type=int, default=None,
                        help="MiB of address space per CPU worker (default: 60%% of the "
                             "available memory); far below a case's needs, some libraries "
                             "crash on the refused allocation instead of raising")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> Tuple[List[Case], dict, Dict[str, str]]:
    """(cases, the worker spec shared by all of them, {skipped backend: reason})."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    cpu = args.device == "cpu"
    caps = ((QUICK_MAX_NODES, QUICK_MAX_EDGES) if args.quick else
            (CPU_MAX_NODES, CPU_MAX_EDGES) if cpu else (10**12, 10**12))
    cases = parse_cases(args.workloads or (QUICK_WORKLOADS if args.quick else ",".join(WORKLOADS)),
                        args.scale, args.max_nodes or caps[0], args.max_edges or caps[1])
    backends, skipped = fastgat_backends(args.device)
    mem_limit = args.cpu_mem_limit
    if cpu and mem_limit is None:
        mem_limit = int(0.6 * _meminfo_available_mib())
    layers = args.layers.split(",")
    if not set(layers) <= set(LAYERS):
        raise SystemExit(f"--layers: choose from {', '.join(LAYERS)}, got {args.layers}")
    impls = [*FLOORS]
    for layer in layers:
        impls += family_impls(layer, args.device)
    # PyG last: its OOM costs no other result.
    impls += [FAMILIES[layer].pyg for layer in reversed(layers)]
    spec = dict(device=args.device, dtype=args.dtype, seed=args.seed, impls=impls,
                warmup=1, min_repeats=3, max_repeats=args.repeats or (5 if args.quick else 20),
                budget_s=0.5 if args.quick else 2.0, cpu_mem_limit_mib=mem_limit or 0)
    return cases, spec, skipped


def run(cases: List[Case], spec: dict, time_budget: Optional[float]) -> List[dict]:
    """One worker per case, under a tqdm bar; returns the result rows."""
    from tqdm import tqdm
    results: List[dict] = []
    start = time.monotonic()

    def remaining() -> Optional[float]:  # seconds left of the time budget
        return None if time_budget is None else time_budget - (time.monotonic() - start)

    with tqdm(total=len(cases) * len(spec["impls"]), desc="fastgat.bench", unit="run") as bar:
        for case in cases:
            # a Task's worker reports its batches' mean sizes
            info = dict(case=case.label, workload=case.workload.name,
                        num_nodes=getattr(case.workload, "num_nodes", 0),
                        num_edges=getattr(case.workload, "num_edges", 0),
                        in_channels=case.workload.in_channels, heads=case.heads,
                        out_channels=case.out_channels)

            def record(result, info=info):
                results.append({**info, **result})
                bar.update(1)

            left = remaining()
            if left is not None and left <= 0:
                for impl in spec["impls"]:
                    record({"impl": impl, "status": "skipped", "reason": "time budget spent"})
                continue
            bar.set_postfix_str(case.label)
            case_spec = dict(spec, workload=asdict(case.workload), heads=case.heads,
                             out_channels=case.out_channels)
            if spec["device"] != "cpu":  # CUDA's peak counter ignores the host allocator
                run_worker(dict(case_spec, phase="both"), left, record)
                continue
            timed, peaks = {}, {}
            run_worker(dict(case_spec, phase="time"), left,
                       lambda result: timed.__setitem__(result["impl"], result))
            left = remaining()
            if left is None or left > 0:
                run_worker(dict(case_spec, phase="peak"), left,
                           lambda result: peaks.__setitem__(result["impl"], result))
            for impl in spec["impls"]:
                result = timed[impl]
                if result["status"] == "ok":
                    result["peak_mib"] = peaks.get(impl, {}).get("peak_mib")
                record(result)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        measure(json.loads(args.worker))
        return 0
    cases, spec, skipped = plan(args)
    meta = dict(device=args.device, device_name=machine(args.device), dtype=args.dtype,
                torch=torch.__version__, torch_geometric=_version("torch_geometric"),
                triton=_version("triton"), python=platform.python_version(),
                fastgat_commit=commit(),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command=" ".join(["python -m fastgat.bench",
                                  *(sys.argv[1:] if argv is None else argv)]),
                skipped_backends=skipped,
                timing={k: spec[k] for k in ("warmup", "min_repeats", "max_repeats", "budget_s")},
                cpu_mem_limit_mib=spec["cpu_mem_limit_mib"] or None)
    load_start, start = os.getloadavg(), time.monotonic()
    results = run(cases, spec, args.time_budget)
    meta["wall_s"] = round(time.monotonic() - start, 1)
    meta["load_average"] = [load_start, os.getloadavg()]
    add_ratios(results)
    report(results, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
