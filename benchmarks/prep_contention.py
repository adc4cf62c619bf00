"""Graph preparation per mini-batch, quiet and beside busy processes (benchmarks/RESULTS.md).

    python benchmarks/prep_contention.py [--busy 2] [--repeats 30]

Times `Graph.from_coo` on a sampled mini-batch (the `minibatch` workload's first batch, ~118k
edges) two ways, interleaved call by call: the CPU path (counting sorts in csrc/cpu/graph_cpu.cpp)
and the argsort path (two stable argsorts, what CUDA and torch.compile use, and what the CPU
used before), with the CSC built too as a training step needs it. First on the machine as it
is, then with `--busy` CPU-bound processes (Python busy loops) started beside it. Prints
medians and the 90th percentile in milliseconds.
"""
import argparse
import multiprocessing
import statistics
import time

import torch

from fastgat import graph as graph_module
from fastgat.bench import task_batches
from fastgat.workloads import TASKS


def spin() -> None:
    while True:
        pass


def prepare(edge_index, num_nodes, argsort_path: bool) -> float:
    graph_module.LOAD_ERROR = "argsort path" if argsort_path else None
    tic = time.perf_counter()
    graph = graph_module.Graph.from_coo(edge_index[0], edge_index[1], num_nodes, num_nodes,
                                        drop_self_loops=True, num_loops=num_nodes)
    graph.csc()
    elapsed = (time.perf_counter() - tic) * 1e3
    graph_module.LOAD_ERROR = None
    return elapsed


def measure(edge_index, num_nodes, repeats: int) -> dict:
    times = {False: [], True: []}
    for _ in range(repeats):
        for argsort_path in (False, True):
            times[argsort_path].append(prepare(edge_index, num_nodes, argsort_path))
    return {("argsort" if k else "counting sort"): (statistics.median(v),
                                                    statistics.quantiles(v, n=10)[-1])
            for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    batch = task_batches(TASKS["minibatch"], seed=0, count=1, distinct=1)[0]
    edge_index, num_nodes = batch["edge_index"], batch["x"].size(0)
    print(f"{num_nodes} nodes, {edge_index.size(1)} edges, {torch.get_num_threads()} threads")
    for busy in (0, args.busy):
        workers = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for worker in workers:
            worker.start()
        time.sleep(0.5 if busy else 0)
        for name, (median, p90) in measure(edge_index, num_nodes, args.repeats).items():
            print(f"busy processes {busy}: {name:13s} median {median:7.2f} ms, p90 {p90:7.2f} ms")
        for worker in workers:
            worker.terminate()
            worker.join()


if __name__ == "__main__":
    main()
