"""PyG GATConv vs FastGATConv per backend vs the SpMM floor: forward and forward + backward.

Timings only: nothing here asserts a speed. On CUDA the benchmarked callable synchronizes, so
pytest-benchmark's wall clock covers the kernels. A case that runs out of memory is skipped
with the reason "PyG GATConv OOM" (or "<backend> OOM"), not failed.
"""
import pytest
import torch

from fastgat.bench import PYG, Layer, TaskRunner, is_oom


def _synchronized(fn, device):
    if device != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize()
    return call


def _bench(benchmark, graphs, rounds, device, case, impl, dtype, mode):
    x, edge_index = graphs(case.workload, dtype)
    benchmark.group = f"{case.label} {dtype} {mode}"
    benchmark.extra_info.update(nodes=case.workload.num_nodes, edges=case.workload.num_edges,
                                heads=case.heads, out_channels=case.out_channels)
    try:
        layer = Layer(case, impl, x, edge_index, seed=0)
        fn = _synchronized(layer.forward if mode == "forward" else layer.step, device)
        fn()  # warm-up; also where an oversized case runs out of memory
    except Exception as error:  # noqa: BLE001
        if not is_oom(error):
            raise
        layer = fn = None
        if device == "cuda":
            torch.cuda.empty_cache()
        pytest.skip(f"{'PyG GATConv' if impl == PYG else impl} OOM")
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)


def test_forward(benchmark, graphs, rounds, device, case, impl, dtype):
    _bench(benchmark, graphs, rounds, device, case, impl, dtype, "forward")


def test_forward_backward(benchmark, graphs, rounds, device, case, impl, dtype):
    _bench(benchmark, graphs, rounds, device, case, impl, dtype, "forward+backward")


@pytest.mark.parametrize("mode", ["training", "inference"])
def test_model_step(benchmark, rounds, task_batches_for, task_case, impl, mode):
    """A model workload's step, each round on a graph fastgat has not prepared before."""
    batches, infer = task_batches_for(task_case.workload, rounds + 1)
    benchmark.group = f"{task_case.label} {mode} step"
    runner = TaskRunner(task_case, impl, batches, infer, seed=0)
    fn = runner.step if mode == "training" else runner.forward
    fn()  # warm-up
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)
