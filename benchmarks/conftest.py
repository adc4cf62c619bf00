"""Options and cases of the pytest-benchmark suite: `pytest benchmarks/ --benchmark-only`.

Cases are every workload layer of fastgat.workloads (or --bench-workloads), on the CPU fitted
under 40k nodes / 800k edges so the suite ends in minutes on 2 cores; full size on CUDA.
Implementations: PyG's GATConv, FastGATConv per backend available on the device, and the SpMM
floors, CSR and COO (fastgat.bench.Layer); float32, and bfloat16 too on CUDA. On the CPU also
the model workloads (fastgat.workloads.TASKS, or --bench-tasks): a training and an inference
step of PyG's GATConv and FastGATConv per backend on a new graph every round.
"""
import pytest
import torch

from fastgat.bench import FLOORS, PYG, fastgat_backends
from fastgat.workloads import (CPU_MAX_EDGES, CPU_MAX_NODES, TASKS, WORKLOADS, make_graph,
                               parse_cases)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_addoption(parser):
    group = parser.getgroup("fastgat benchmarks")
    group.addoption("--bench-workloads", default=",".join(WORKLOADS),
                    help="comma list of workloads, NAME:HxC for one layer shape")
    group.addoption("--bench-scale", type=float, default=None,
                    help="shrink every graph by this factor (default: fitted to the device)")
    group.addoption("--bench-rounds", type=int, default=3 if DEVICE == "cpu" else 10)
    group.addoption("--bench-tasks", default=",".join(TASKS) if DEVICE == "cpu" else "",
                    help="comma list of model workloads (CPU, float32), NAME:HxC for the "
                         "first layer's shape")


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "task_case" in metafunc.fixturenames:
        spec = config.getoption("--bench-tasks")
        cases = parse_cases(spec, None, 1, 1) if spec else []
        metafunc.parametrize("task_case", cases, ids=[c.label for c in cases])
        metafunc.parametrize("impl", [PYG, *fastgat_backends(DEVICE)[0]])
        return
    if "case" not in metafunc.fixturenames:
        return
    caps = (CPU_MAX_NODES, CPU_MAX_EDGES) if DEVICE == "cpu" else (10**12, 10**12)
    cases = parse_cases(config.getoption("--bench-workloads"), config.getoption("--bench-scale"),
                        *caps)
    backends, _ = fastgat_backends(DEVICE)
    dtypes = ["float32"] + (["bfloat16"] if DEVICE == "cuda" else [])
    metafunc.parametrize("case", cases, ids=[c.label for c in cases])
    metafunc.parametrize("impl", [PYG, *backends, *FLOORS])
    metafunc.parametrize("dtype", dtypes)


@pytest.fixture(scope="session")
def graphs():
    """(x, edge_index) per workload and dtype, generated once per session."""
    cache = {}

    def get(workload, dtype):
        key = (workload, dtype)
        if key not in cache:
            cache.clear()  # one graph at a time: the full-size ones are large
            cache[key] = make_graph(workload, 0, DEVICE, getattr(torch, dtype))
        return cache[key]
    return get


@pytest.fixture(scope="session")
def device():
    return DEVICE


@pytest.fixture(scope="session")
def rounds(pytestconfig):
    return pytestconfig.getoption("--bench-rounds")


@pytest.fixture(scope="session")
def task_batches_for():
    """(training batches, inference batches) per Task: the arxiv-shaped base graph of the
    mini-batch tasks is drawn once per session."""
    from fastgat.bench import task_batches
    cache = {}

    def get(task, count):
        if (task, count) not in cache:
            batches = task_batches(task, 0, count)
            with torch.inference_mode():  # as a loader inside inference_mode makes them
                infer = [dict(b, edge_index=b["edge_index"].clone()) for b in batches]
            cache[task, count] = batches, infer
        return cache[task, count]
    return get
