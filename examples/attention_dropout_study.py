"""Does the attention-dropout random stream move GAT's accuracy? Trains the GAT paper's model
with layers that differ only in how attention dropout draws its mask:

    fast        FastGATConv: fastgat's Philox mask keyed by (drawn seed, CSR slot, head)
    pyg         GATConv: F.dropout, torch's bernoulli_ stream
    pyg_philox  GATConv drawing fastgat's mask: the same seed draw and keys. On an edge_index
                sorted by (destination, source) without self loops, as Planetoid's is,
                GATConv's edge order is fastgat's CSR order: it draws FastGATConv's very mask
    pyg_rand    GATConv with a mask from torch.rand (torch's uniform stream)

    python examples/attention_dropout_study.py --dataset CiteSeer --first-seed 20 --seeds 30

Each run appends a JSON line to --out (a rerun skips the runs already there); the summary
gives mean ± std per layer and, per seed (same seed, same initial weights), the paired
difference to `pyg`.
"""
import json
import math
import multiprocessing
import statistics
from collections import defaultdict
from typing import Optional

import torch
from torch import Tensor
from torch_geometric.nn import GATConv
from torch_geometric.typing import OptTensor

from common import conv_factory, example_parser, load_planetoid
from fastgat.dropout import draw_seed, keep_scale
from train_planetoid import run


class _MaskedGATConv(GATConv):
    """GATConv with its attention dropout replaced by `self.mask(alpha, p)`."""

    def edge_update(self, alpha_j: Tensor, alpha_i: OptTensor, edge_attr: OptTensor,
                    index: Tensor, ptr: OptTensor, dim_size: Optional[int]) -> Tensor:
        p, self.dropout = self.dropout, 0.0  # PyG's own dropout off for this call
        try:
            alpha = super().edge_update(alpha_j, alpha_i, edge_attr, index, ptr, dim_size)
        finally:
            self.dropout = p
        return alpha * self.mask(alpha, p) if self.training and p > 0.0 else alpha


class PhiloxGATConv(_MaskedGATConv):
    """GATConv drawing fastgat's Philox mask, slot = position in GATConv's edge order."""

    def forward(self, x, edge_index, *args, **kwargs):
        dst_src = edge_index[1] * edge_index.max().add(1) + edge_index[0]
        if (edge_index[0] == edge_index[1]).any() or (dst_src[1:] < dst_src[:-1]).any():
            raise ValueError("PhiloxGATConv draws FastGATConv's mask only for an edge_index "
                             "sorted by (destination, source) without self loops")
        return super().forward(x, edge_index, *args, **kwargs)

    def mask(self, alpha: Tensor, p: float) -> Tensor:
        slots = torch.arange(alpha.size(0), device=alpha.device)
        return keep_scale(draw_seed(alpha.device), slots, alpha.size(1), p, alpha.dtype)


class RandGATConv(_MaskedGATConv):
    """GATConv whose mask comes from torch.rand instead of bernoulli_."""

    def mask(self, alpha: Tensor, p: float) -> Tensor:
        return (torch.rand(alpha.shape, device=alpha.device) >= p).to(alpha.dtype) / (1.0 - p)


ARMS = ("fast", "pyg", "pyg_philox", "pyg_rand")
_worker = {}


def layer(arm: str, backend: str = "auto"):
    return {"fast": conv_factory("fast", backend), "pyg": GATConv,
            "pyg_philox": PhiloxGATConv, "pyg_rand": RandGATConv}[arm]


def _init_worker(dataset: str, root, offline, backend: str) -> None:
    torch.set_num_threads(1)  # workers share the cores
    _worker.update(data=load_planetoid(dataset, root, offline), backend=backend)


def _run(job):
    seed, arm, epochs = job
    data = _worker["data"]
    acc, _ = run(data, layer(arm, _worker["backend"]), int(data.y.max()) + 1, seed, epochs,
                 torch.device("cpu"))
    return dict(arm=arm, seed=seed, acc=round(100 * acc, 2))


def summary(records) -> str:
    """Mean ± std per layer, and the paired difference to `pyg` over the seeds both ran."""
    acc = defaultdict(dict)
    for record in records:
        acc[record["arm"]][record["seed"]] = record["acc"]
    lines = ["| layer | runs | test accuracy | paired difference to pyg (t) |",
             "| --- | --- | --- | --- |"]
    for arm, runs in sorted(acc.items()):
        values = list(runs.values())
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        paired = ""
        seeds = sorted(set(runs) & set(acc.get("pyg", {})))
        if arm != "pyg" and len(seeds) > 1:
            diff = [runs[s] - acc["pyg"][s] for s in seeds]
            sd = statistics.stdev(diff)
            t = statistics.mean(diff) / (sd / math.sqrt(len(diff))) if sd else float("inf")
            paired = f"{statistics.mean(diff):+.2f} over {len(diff)} seeds (t = {t:.1f})"
        lines.append(f"| {arm} | {len(values)} | {statistics.mean(values):.2f} ± {spread:.2f} "
                     f"| {paired} |")
    return "\n".join(lines)


def main() -> None:
    parser = example_parser(__doc__, conv=False)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=10, help="runs per layer")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    parser.add_argument("--out", default=None, help="JSON lines (default: study-DATASET.jsonl)")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if not set(arms) <= set(ARMS):
        parser.error(f"--arms must name layers among {', '.join(ARMS)}")
    out = args.out or f"study-{args.dataset}.jsonl"
    try:
        with open(out) as f:
            records = [json.loads(line) for line in f]
    except FileNotFoundError:
        records = []
    done = {(r["seed"], r["arm"]) for r in records}
    jobs = [(seed, arm, args.epochs) for seed in range(args.first_seed,
                                                       args.first_seed + args.seeds)
            for arm in arms if (seed, arm) not in done]
    print(f"{args.dataset}: {len(jobs)} runs to go ({len(done)} in {out}), "
          f"{args.workers} worker(s)")
    with multiprocessing.get_context("spawn").Pool(
            args.workers, _init_worker,
            (args.dataset, args.root, args.offline_copy, args.backend)) as pool:
        for record in pool.imap_unordered(_run, jobs):
            records.append(record)
            with open(out, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{record['arm']} seed {record['seed']}: {record['acc']:.1f}%", flush=True)
        pool.close()
        pool.join()  # workers exit on their own (terminating them leaks their semaphores)
    print(summary(records))


if __name__ == "__main__":
    main()
