"""GATv2 on the CPU reference shape: PyG's GATv2Conv vs FastGATv2Conv, one layer per process.

    python benchmarks/gatv2_cpubar.py pyg      # or: cpu, torch
    for impl in cpu pyg; do python benchmarks/gatv2_cpubar.py $impl; done

The `cpubar` workload of fastgat/workloads.py (40k nodes, 800k power-law edges, 64 -> 4 heads
x 32, float32), timed and measured as `python -m fastgat.bench` does (fastgat/bench.py:
median milliseconds of forward and of forward+backward, extra peak resident memory of one
training step). Each implementation runs in its own process so that memory one leaves behind
does not hide the next one's peak. Prints one line per implementation.
"""
import sys

import torch
from torch_geometric.nn import GATv2Conv

from fastgat import FastGATv2Conv
from fastgat.bench import peak_mib, time_ms
from fastgat.workloads import WORKLOADS, make_graph


def main(impl: str) -> None:
    workload, heads, channels = WORKLOADS["cpubar"], 4, 32
    x, edge_index = make_graph(workload, seed=0)
    torch.manual_seed(0)
    if impl == "pyg":
        conv = GATv2Conv(workload.in_channels, channels, heads=heads)
    else:
        conv = FastGATv2Conv(workload.in_channels, channels, heads=heads, backend=impl)
    dout = torch.randn(workload.num_nodes, heads * channels,
                       generator=torch.Generator().manual_seed(2))

    def forward():
        with torch.no_grad():
            conv(x, edge_index)

    def step():
        conv.zero_grad(set_to_none=True)
        conv(x, edge_index).backward(dout)

    step()  # graph preparation and allocator warm-up, as the bench's warm-up
    peak = peak_mib(step, "cpu")
    fwd, _ = time_ms(forward, "cpu", warmup=1, min_repeats=5, max_repeats=7, budget_s=20)
    fwd_bwd, _ = time_ms(step, "cpu", warmup=1, min_repeats=5, max_repeats=7, budget_s=30)
    print(f"{impl}: threads {torch.get_num_threads()}  fwd {fwd:.0f} ms  fwd+bwd {fwd_bwd:.0f} ms"
          f"  extra peak {peak:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
