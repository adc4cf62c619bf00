"""Fresh random graphs for tests: each kind stresses one awkward case of the edge stage."""
import torch

KINDS = ("random", "isolated", "duplicates", "self_loops", "hub", "bipartite", "empty")


def random_graph(kind: str, seed: int, num_nodes: int = 24, num_edges: int = 96, hub_degree: int = 300):
    """(src, dst, num_src, num_dst) drawn fresh from `seed`."""
    g = torch.Generator().manual_seed(seed)
    num_src = num_dst = num_nodes
    if kind == "bipartite":
        num_dst = num_nodes // 2 + 3
    if kind == "empty":
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), num_src, num_dst
    src = torch.randint(0, num_src, (num_edges,), generator=g)
    dst = torch.randint(0, num_dst, (num_edges,), generator=g)
    if kind == "isolated":  # a third of the nodes neither send nor receive
        src, dst = src % (2 * num_nodes // 3), dst % (2 * num_nodes // 3)
    elif kind == "duplicates":
        src, dst = torch.cat([src, src[: num_edges // 2]]), torch.cat([dst, dst[: num_edges // 2]])
    elif kind == "self_loops":
        loops = torch.randint(0, num_nodes, (num_edges // 4,), generator=g)
        src, dst = torch.cat([src, loops, loops[:3]]), torch.cat([dst, loops, loops[:3]])
    elif kind == "hub":  # one node receives far more edges than any block holds
        hub_src = torch.randint(0, num_src, (hub_degree,), generator=g)
        src, dst = torch.cat([src, hub_src]), torch.cat([dst, torch.full_like(hub_src, 1)])
    perm = torch.randperm(src.numel(), generator=g)
    return src[perm], dst[perm], num_src, num_dst
