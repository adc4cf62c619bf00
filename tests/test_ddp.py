"""examples/train_ddp.py: two gloo ranks, each with a shard of the training nodes, take the
same gradients and the same optimizer step as one process on the whole training set."""
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from common import GAT, conv_factory, make_optimizer  # noqa: E402
import train_ddp  # noqa: E402

# Minutes, not seconds: `pytest -m "not slow"` leaves it out of the quick loop.
pytestmark = pytest.mark.slow

WORLD_SIZE = 2
TIMEOUT_S = 120  # per collective; the whole spawn gets twice that
DROPOUTS = (0.0, 0.6)  # with dropout, equal seeds give every rank (and the reference) one mask


def random_graph(seed: int = 0) -> Data:
    """60 nodes, 3 classes, 21 training nodes: the shards (11, 10) differ in size, so a
    per-shard mean would weight nodes unequally and fail the comparison."""
    g = torch.Generator().manual_seed(seed)
    n, features, classes, edges = 60, 12, 3, 400
    edge_index = torch.randint(0, n, (2, edges), generator=g)
    train_mask = torch.zeros(n, dtype=torch.bool)
    train_mask[torch.randperm(n, generator=g)[:21]] = True
    return Data(x=torch.randn(n, features, generator=g), edge_index=edge_index,
                y=torch.randint(0, classes, (n,), generator=g), train_mask=train_mask)


def one_step(model, step):
    """One Adam step via `step` with seeded dropout; (gradients, new parameters)."""
    optimizer = make_optimizer(model)
    torch.manual_seed(1)
    step(model, optimizer)
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return ({name: p.grad.clone() for name, p in module.named_parameters()},
            {name: p.detach().clone() for name, p in module.named_parameters()})


def build(data: Data, dropout: float) -> GAT:
    torch.manual_seed(0)
    return GAT(conv_factory("fast"), data.num_features, int(data.y.max()) + 1, dropout=dropout)


def ddp_worker(rank: int, data: Data, out_dir: str) -> None:
    train_ddp.init_distributed(rank, WORLD_SIZE, timeout=timedelta(seconds=TIMEOUT_S))
    train_idx = data.train_mask.nonzero().view(-1)
    shard_idx = train_ddp.shard(train_idx, rank, WORLD_SIZE)
    results = {}
    for dropout in DROPOUTS:
        model = DistributedDataParallel(build(data, dropout))
        results[dropout] = one_step(model, lambda m, opt: train_ddp.train_step(
            m, data, shard_idx, train_idx.numel(), WORLD_SIZE, opt))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    train_ddp.exit_rank()


def single_process_step(model, data, optimizer) -> None:
    model.train()
    optimizer.zero_grad()
    out = model(data.x, data.edge_index)
    F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
    optimizer.step()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    data = random_graph()
    out_dir = tmp_path_factory.mktemp("ddp")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(train_ddp.free_port())}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        ranks = mp.spawn(ddp_worker, args=(data, str(out_dir)), nprocs=WORLD_SIZE, join=False)
        deadline = time.monotonic() + 2 * TIMEOUT_S  # a hung rank fails the test, not CI
        while not ranks.join(timeout=1):
            if time.monotonic() > deadline:
                for process in ranks.processes:
                    process.kill()
                pytest.fail(f"the DDP ranks did not finish in {2 * TIMEOUT_S} s")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return data, [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("dropout", DROPOUTS)
def test_ddp_step_equals_full_batch_step(ddp_results, dropout):
    data, ranks = ddp_results
    grads, params = one_step(build(data, dropout),
                             lambda m, opt: single_process_step(m, data, opt))
    for rank, results in enumerate(ranks):
        rank_grads, rank_params = results[dropout]
        assert rank_grads.keys() == grads.keys()
        for name in grads:  # float32; only the summation order differs
            torch.testing.assert_close(rank_grads[name], grads[name], rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"rank {rank}, grad of {name}: {m}")
            torch.testing.assert_close(rank_params[name], params[name], rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"rank {rank}, {name} after the step: {m}")
