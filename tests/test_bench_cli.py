"""The benchmark CLI end to end on tiny graphs, and the workload generators it shares."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastgat.bench import FAMILIES, FLOORS, PYG, PYGS, family_impls, fastgat_backends
from fastgat.workloads import CPU_MAX_EDGES, CPU_MAX_NODES, WORKLOADS, make_graph, parse_cases

# Minutes, not seconds: `pytest -m "not slow"` leaves it out of the quick loop.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_counts_and_seed(name):
    workload = WORKLOADS[name]
    small = workload.scaled(workload.fit(4_000, 20_000))
    x, edge_index = make_graph(small, seed=3)
    assert x.shape == (small.num_nodes, workload.in_channels)
    assert edge_index.shape == (2, small.num_edges) and edge_index.dtype == torch.int64
    assert 0 <= int(edge_index.min()) and int(edge_index.max()) < small.num_nodes
    assert small.num_nodes / small.num_edges == pytest.approx(
        workload.num_nodes / workload.num_edges, rel=0.01)  # the average degree is kept
    again = make_graph(small, seed=3)
    assert torch.equal(again[1], edge_index) and torch.equal(again[0], x)
    assert not torch.equal(make_graph(small, seed=4)[1], edge_index)


def test_in_degree_is_skewed():
    workload = WORKLOADS["arxiv"].scaled(0.1)
    _, edge_index = make_graph(workload, seed=0)
    degree = torch.bincount(edge_index[1], minlength=workload.num_nodes).sort(descending=True)[0]
    top = degree[: workload.num_nodes // 100].sum() / workload.num_edges
    assert top > 0.1  # the top 1% of nodes receive over 10% of the edges (uniform: 1%)
    assert degree[0] > 50 * degree.float().mean()


def test_default_cpu_cases_fit_the_caps():
    cases = parse_cases(",".join(WORKLOADS), None, CPU_MAX_NODES, CPU_MAX_EDGES)
    assert {c.workload.name for c in cases} == set(WORKLOADS)
    assert all(c.workload.num_nodes <= CPU_MAX_NODES and c.workload.num_edges <= CPU_MAX_EDGES
               for c in cases)
    assert [c.label for c in parse_cases("reddit:8x64", 0.01, 1, 1)] == ["reddit-8x64"]
    with pytest.raises(ValueError, match="unknown workload"):
        parse_cases("citeseer", None, 1, 1)
    with pytest.raises(ValueError, match="HEADSxCHANNELS"):
        parse_cases("cora:8by8", None, 1, 1)


def test_cli_quick_writes_table_json_png(tmp_path):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "fastgat.bench", "--quick", "--workloads", "cora,pubmed:4x64",
           "--scale", "0.05", "--repeats", "3", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    backends, skipped = fastgat_backends("cpu")
    impls = [*FLOORS, *backends, *family_impls("gatv2", "cpu"), *family_impls("transformer", "cpu"),
             FAMILIES["transformer"].pyg, FAMILIES["gatv2"].pyg, PYG]
    report = json.loads((tmp_path / "bench-cpu-float32.json").read_text())
    # the reason for triton may differ: this process runs under TRITON_INTERPRET=1
    assert report["meta"]["skipped_backends"].keys() == skipped.keys()
    results = report["results"]
    assert [(r["case"], r["impl"]) for r in results] == [
        (case, impl) for case in ("cora-8x8", "pubmed-4x64") for impl in impls]
    for r in results:
        assert r["status"] == "ok", r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_mib"] >= 0
        if r["impl"] not in PYGS:
            assert r["speedup_fwd"] > 0 and r["speedup_fwd_bwd"] > 0
        if r["impl"] not in (*PYGS, *FLOORS):
            assert r["floor_ratio"] > 0 and r["floor_ratio_fwd_bwd"] > 0
    pyg = next(r for r in results if r["impl"] == PYG and r["case"] == "pubmed-4x64")
    assert pyg["peak_mib"] > 0  # PyG materialises E x H x C messages: the RSS method sees it

    table = (tmp_path / "bench-cpu-float32.md").read_text()
    assert table in done.stdout + "\n"
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| layer | nodes | edges | impl | fwd ms | fwd+bwd ms | peak MiB")
    assert len(rows) == 1 + len(results)
    assert all(row.count("|") == rows[0].count("|") for row in rows)

    import matplotlib.image
    png = tmp_path / "bench-cpu-float32.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 200 and width > 400


def test_cli_model_workload_rows(tmp_path):
    """A model workload times PyG's GATConv and FastGATConv per backend; the floors and the
    other layers' rows are reported as skipped, never as errors."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "fastgat.bench", "--workloads", "molecules", "--repeats", "2",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench-cpu-float32.json").read_text())["results"]
    status = {r["impl"]: r["status"] for r in results}
    assert {status[f] for f in FLOORS} == {"skipped"}, status
    backends, _ = fastgat_backends("cpu")
    assert all(status[impl] == "ok" for impl in (*backends, PYG)), status
    assert {s for impl, s in status.items() if impl not in (*backends, PYG)} == {"skipped"}


def test_neighbor_sampler_follows_in_edges_within_fanouts():
    from fastgat.workloads import csr_by_destination, sample_neighbors
    num_nodes = 500
    edge_index = make_graph(WORKLOADS["cora"].scaled(num_nodes / 2708), seed=1)[1]
    rowptr, col = csr_by_destination(edge_index, num_nodes)
    seeds = torch.arange(0, 40)
    nodes, local = sample_neighbors(rowptr, col, seeds, (5, 3), torch.Generator().manual_seed(0))
    assert torch.equal(nodes[:40], seeds) and nodes.unique().numel() == nodes.numel()
    src, dst = nodes[local[0]], nodes[local[1]]
    graph_edges = set(map(tuple, edge_index.t().tolist()))
    assert all((s, d) in graph_edges for s, d in zip(src.tolist(), dst.tolist()))
    in_degree = torch.bincount(edge_index[1], minlength=num_nodes)
    sampled = torch.bincount(local[1], minlength=nodes.numel())
    assert torch.equal(sampled[:40], in_degree[seeds].clamp(max=5))  # without replacement
    assert int(sampled[40:].max()) <= 3
    # pyg-lib's numbering: each new node takes the next id when it is first sampled.
    seen = []
    for s in local[0].tolist():
        if s >= 40 and s not in seen:
            seen.append(s)
    assert seen == list(range(40, nodes.numel()))


def test_model_workloads_run_pyg_and_fastgat_alike():
    from fastgat.bench import TaskRunner, task_batches
    from fastgat.workloads import TASKS, Case
    task = TASKS["molecules"]
    batches = task_batches(task, seed=0, count=2, distinct=2)
    assert batches[0]["edge_index"] is not batches[1]["edge_index"]
    x, edge_index, batch = batches[0]["x"], batches[0]["edge_index"], batches[0]["batch"]
    assert int(batch.max()) == task.graphs - 1 and 20 <= x.size(0) / task.graphs <= 40
    assert bool((batch[edge_index[0]] == batch[edge_index[1]]).all())  # no edge across graphs
    outs = []
    for impl in (PYG, "torch"):
        runner = TaskRunner(Case(task, 4, 16), impl, batches, batches, seed=0)
        runner.model.eval()
        outs.append(runner.model(x, edge_index, batch, task.graphs))
        runner.step()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_cpu_workers_time_under_the_default_allocator_and_take_peaks_under_1_mib(monkeypatch):
    """A fixed 1 MiB mmap threshold makes every large tensor a fresh mapping (page faults in
    every step): the peak worker needs it, the timing worker must not have it."""
    from fastgat import bench
    seen = {}

    class Worker:  # stands in for the worker process: records its environment, reports nothing
        def __init__(self, cmd, env, **kwargs):
            seen[json.loads(cmd[-1])["phase"]] = env.get("MALLOC_MMAP_THRESHOLD_")
            self.stdout, self.returncode = [], 0

        def wait(self):
            return 0

    monkeypatch.setattr(bench.subprocess, "Popen", Worker)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")  # a caller's setting is not inherited
    reports = []
    for phase in ("time", "peak"):
        bench.run_worker(dict(device="cpu", impls=["cpu"], phase=phase), None, reports.append)
    assert seen == {"time": None, "peak": str(2**20)}
    assert [r["status"] for r in reports] == ["error", "error"]  # nothing reported: an error
