"""Seeded synthetic graphs shaped like the standard GAT benchmarks, for fastgat.bench.

Each workload keeps the node and edge counts, the input feature width and a power-law in-degree
skew of its namesake; no data set is downloaded. Edges are drawn Chung–Lu style: destination i
with weight (rank_i + 1) ** -skew, source j with the same law under an independent ranking, so
a few hubs receive most edges, as in citation and social graphs. Each skew puts the expected
largest in-degree at full size near the real one (Cora 168, PubMed 171, arxiv 13k, Reddit 22k,
products 17k). Multi-edges are kept as drawn
and self loops left in (both GATConv and FastGATConv drop them before adding their own).

`scale` shrinks nodes and edges by one factor, keeping the average degree (the per-row work
that sets the kernels' speed); `fit` picks the largest scale under a node and an edge cap, so a
CPU run shrinks Reddit to ~1.6k dense rows rather than to an unrepresentative sparse graph.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch


@dataclass(frozen=True)
class Workload:
    name: str
    num_nodes: int
    num_edges: int
    in_channels: int
    shapes: Tuple[Tuple[int, int], ...]   # (heads, out_channels) of the layers benchmarked
    skew: float                           # in-degree weight exponent: (rank + 1) ** -skew

    def scaled(self, scale: float) -> "Workload":
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"scale must lie in (0, 1], got {scale!r}")
        nodes = max(2, round(self.num_nodes * scale))
        edges = max(1, round(self.num_edges * scale))
        return Workload(self.name, nodes, edges, self.in_channels, self.shapes, self.skew)

    def fit(self, max_nodes: int, max_edges: int) -> float:
        """The largest scale (at most 1) keeping both counts under the caps."""
        return min(1.0, max_nodes / self.num_nodes, max_edges / self.num_edges)


WORKLOADS: Dict[str, Workload] = {w.name: w for w in (
    Workload("cora", 2_708, 10_556, 1_433, ((8, 8),), 0.6),
    Workload("pubmed", 19_717, 88_648, 500, ((8, 32), (4, 64)), 0.42),
    Workload("arxiv", 169_343, 2_315_598, 128, ((8, 32), (4, 64)), 0.65),
    Workload("reddit", 232_965, 114_615_892, 602, ((8, 32), (4, 64)), 0.3),
    Workload("products", 2_449_029, 123_718_280, 100, ((8, 32), (4, 64)), 0.44),
    # The CPU reference layer (benchmarks/RESULTS.md): 40k nodes, 800k power-law edges,
    # 64 -> 4 heads x 32, where PyG GATConv takes seconds and ~1.8 GB per training step.
    Workload("cpubar", 40_000, 800_000, 64, ((4, 32),), 0.65),
)}

# The default CPU size: the largest case stays near 40k nodes / 800k edges (2 cores, minutes).
CPU_MAX_NODES, CPU_MAX_EDGES = 40_000, 800_000


@dataclass(frozen=True)
class Case:
    """One benchmarked layer: a (scaled) workload and a (heads, out_channels) shape; or a Task
    and the shape of its first layer."""
    workload: "Workload | Task"
    heads: int
    out_channels: int

    @property
    def label(self) -> str:
        return f"{self.workload.name}-{self.heads}x{self.out_channels}"


def parse_cases(spec: str, scale: Optional[float], max_nodes: int, max_edges: int) -> List[Case]:
    """Cases from 'cora,arxiv,reddit:8x64': a bare name takes its workload's layer shapes, a
    ':HxC' suffix one explicit shape. scale=None fits each workload under the caps."""
    cases = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, shape = item.partition(":")
        if name not in WORKLOADS and name not in TASKS:
            raise ValueError(f"unknown workload {name!r}; choose from "
                             f"{sorted(WORKLOADS) + sorted(TASKS)}")
        workload = WORKLOADS[name] if name in WORKLOADS else TASKS[name]
        workload = workload.scaled(scale if scale is not None else
                                   workload.fit(max_nodes, max_edges))
        if shape:
            heads, sep, channels = shape.partition("x")
            if not (sep and heads.isdigit() and channels.isdigit() and int(heads) > 0
                    and int(channels) > 0):
                raise ValueError(f"layer shape must read HEADSxCHANNELS, e.g. 8x64; got {shape!r}")
            shapes = ((int(heads), int(channels)),)
        else:
            shapes = workload.shapes
        cases += [Case(workload, h, c) for h, c in shapes]
    if not cases:
        raise ValueError("no workload selected")
    return cases


def power_law_edges(num_nodes: int, num_edges: int, skew: float, seed: int,
                    device="cpu") -> torch.Tensor:
    """(2, num_edges) int64 edge_index, source row first, drawn by inverse-CDF sampling."""
    generator = torch.Generator(device=device).manual_seed(seed)
    weight = torch.arange(1, num_nodes + 1, device=device, dtype=torch.float64).pow(-skew)
    cdf = weight.cumsum(0)
    cdf /= cdf[-1].clone()

    def draw() -> torch.Tensor:
        u = torch.rand(num_edges, generator=generator, device=device, dtype=torch.float64)
        rank = torch.searchsorted(cdf, u).clamp_(max=num_nodes - 1)
        node_of_rank = torch.randperm(num_nodes, generator=generator, device=device)
        return node_of_rank[rank]

    dst = draw()
    src = draw()
    return torch.stack([src, dst])


def make_graph(workload: Workload, seed: int = 0, device="cpu",
               dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, edge_index) for `workload`: x ~ N(0, 1) of shape (num_nodes, in_channels)."""
    edge_index = power_law_edges(workload.num_nodes, workload.num_edges, workload.skew, seed,
                                 device)
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    x = torch.randn(workload.num_nodes, workload.in_channels, generator=generator,
                    device=device, dtype=dtype)
    return x, edge_index


# -- model workloads: a new graph every step ----------------------------------------------------
@dataclass(frozen=True)
class Task:
    """A training regime timed per model step on a graph drawn anew for each step.

    `minibatch`: neighbour-sampled subgraphs (`seeds` seed nodes, `fanouts` per hop, in-edges
    as PyG's NeighborLoader samples them) of a full-size arxiv-shaped graph, a 2-layer GAT
    (heads x out_channels, then 1 head to `classes`), loss on the seeds. `molecules`: a batch
    of `graphs` small molecule-like graphs (a ring with a tail, a few extra bonds, both
    directions, 20-40 atoms), a 3-layer GAT, mean pooling, a linear head."""
    name: str
    kind: str                         # "minibatch" or "molecules"
    in_channels: int
    shapes: Tuple[Tuple[int, int], ...]
    feature_dropout: float = 0.0
    seeds: int = 1024
    fanouts: Tuple[int, ...] = (15, 10)
    graphs: int = 64
    layers: int = 3
    classes: int = 40

    # parse_cases treats a Task like a Workload: full size on every device.
    def fit(self, max_nodes: int, max_edges: int) -> float:
        return 1.0

    def scaled(self, scale: float) -> "Task":
        return self


TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("minibatch", "minibatch", 128, ((8, 8),)),
    Task("minibatch-drop", "minibatch", 128, ((8, 8),), feature_dropout=0.5),
    Task("molecules", "molecules", 32, ((4, 16),)),
)}


def csr_by_destination(edge_index: torch.Tensor, num_nodes: int):
    """(rowptr, sources sorted by destination) of the in-edges, for sampling."""
    order = torch.argsort(edge_index[1], stable=True)
    counts = torch.bincount(edge_index[1], minlength=num_nodes)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]), edge_index[0, order]


def sample_neighbors(rowptr: torch.Tensor, col: torch.Tensor, seeds: torch.Tensor,
                     fanouts: Tuple[int, ...], generator: torch.Generator):
    """(node ids, local edge_index) of a uniform neighbour sample without replacement, PyG's
    NeighborLoader layout: seeds first, then each hop's new nodes in the order they were first
    sampled (as pyg-lib's sampler numbers them), so the sources of consecutive rows are mostly
    consecutive rows of x; edges point to the node that sampled them. Vectorised: per frontier
    node, its in-edges ordered by random keys."""
    num_nodes = rowptr.numel() - 1
    local = torch.full((num_nodes,), -1, dtype=torch.long)
    local[seeds] = torch.arange(seeds.numel())
    nodes, frontier, srcs, dsts = [seeds], seeds, [], []
    for fanout in fanouts:
        start, degree = rowptr[frontier], rowptr[frontier + 1] - rowptr[frontier]
        owner = torch.repeat_interleave(torch.arange(frontier.numel()), degree)
        offset = torch.arange(owner.numel()) - torch.repeat_interleave(
            degree.cumsum(0) - degree, degree)
        order = torch.argsort(owner.double() + torch.rand(owner.numel(), generator=generator,
                                                          dtype=torch.float64))
        keep = offset < fanout  # the rank of order[k] within its owner's group is offset[k]
        picked = order[keep]
        src = col[start[owner[picked]] + offset[picked]]
        fresh = first_appearances(src[local[src] < 0])
        local[fresh] = torch.arange(fresh.numel()) + sum(n.numel() for n in nodes)
        srcs.append(local[src])
        dsts.append(local[frontier[owner[picked]]])
        nodes.append(fresh)
        frontier = fresh
    return torch.cat(nodes), torch.stack([torch.cat(srcs), torch.cat(dsts)])


def first_appearances(ids: torch.Tensor) -> torch.Tensor:
    """The distinct values of `ids` in the order of their first occurrence."""
    distinct, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((distinct.numel(),), ids.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel()), "amin")
    return distinct[torch.argsort(first)]


def molecule_batch(count: int, in_channels: int, generator: torch.Generator):
    """(x, edge_index, batch) of `count` molecule-like graphs as one disjoint union."""
    edges, batch, offset = [], [], 0
    for g in range(count):
        n = int(torch.randint(20, 41, (1,), generator=generator))
        ring = int(torch.randint(5, 7, (1,), generator=generator))
        src = torch.cat([torch.arange(1, n), torch.tensor([ring - 1])])  # a chain whose
        dst = torch.cat([torch.arange(0, n - 1), torch.tensor([0])])     # start closes a ring
        extra = torch.randint(0, n, (2, n // 10), generator=generator)
        pairs = torch.cat([torch.stack([src, dst]), extra], 1)
        pairs = pairs[:, pairs[0] != pairs[1]] + offset
        edges.append(torch.cat([pairs, pairs.flip(0)], 1))
        batch.append(torch.full((n,), g))
        offset += n
    x = torch.randn(offset, in_channels, generator=generator)
    return x, torch.cat(edges, 1), torch.cat(batch)
