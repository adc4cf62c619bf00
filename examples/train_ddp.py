"""The GAT paper's model trained with DistributedDataParallel, one shard of training nodes a rank.

    torchrun --nproc-per-node 2 examples/train_ddp.py --dataset Cora
    python examples/train_ddp.py --world-size 2 --dataset Cora     # spawns the ranks itself

Every rank holds the full graph and runs the full forward pass (a GAT layer needs every
neighbour), but takes the loss on its own shard of the training nodes only: the cross-entropy
summed over the shard and divided by num_train / world_size. DDP averages gradients over the
ranks, so the averaged gradient is exactly the gradient of the mean loss over all training
nodes, the single-process full-batch gradient. All ranks seed torch alike, so their dropout
masks, and with them the forward passes, are identical. gloo on CPU, nccl on GPU.
"""
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common import (GAT, accuracies, conv_factory, example_parser, load_planetoid,
                    make_optimizer)


def shard(train_idx: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s contiguous share of the training nodes (sizes differ by at most one)."""
    return train_idx.tensor_split(world_size)[rank]


def shard_loss(out, y, shard_idx, num_train: int, world_size: int):
    """This rank's loss, scaled so that DDP's average over ranks is the global mean loss."""
    return F.cross_entropy(out[shard_idx], y[shard_idx], reduction="sum") * (world_size / num_train)


def train_step(model, data, shard_idx, num_train: int, world_size: int, optimizer) -> float:
    """One full-batch step; returns this rank's scaled loss (they sum to world_size x mean)."""
    model.train()
    optimizer.zero_grad()
    out = model(data.x, data.edge_index)
    loss = shard_loss(out, data.y, shard_idx, num_train, world_size)
    loss.backward()  # DDP all-reduces (averages) the gradients here
    optimizer.step()
    return loss.item()


def init_distributed(rank: int, world_size: int,
                     timeout: timedelta = timedelta(minutes=10)) -> torch.device:
    """Join the process group (nccl with one GPU a rank when CUDA is there, else gloo);
    MASTER_ADDR and MASTER_PORT come from the environment. A collective waiting longer than
    `timeout` fails instead of hanging. Returns this rank's device."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device,
                                timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout)
    return device


def exit_rank() -> None:
    """End this rank once every rank is done, without interpreter teardown. torch's
    ~ProcessGroupGloo joins its worker threads while holding the GIL, and a worker freeing a
    finished work's thread-local Python state waits for the GIL: tearing down can deadlock
    (seen here, torch 2.13). Everything worth keeping is written before this is called."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker(rank: int, world_size: int, args) -> None:
    device = init_distributed(rank, world_size)
    try:
        if rank != 0:  # rank 0 copies and processes the data set first; the rest read its cache
            dist.barrier()
        data = load_planetoid(args.dataset, args.root, args.offline_copy)
        if rank == 0:
            dist.barrier()
        data = data.to(device)
        train_idx = data.train_mask.nonzero().view(-1)
        shard_idx = shard(train_idx, rank, world_size)
        num_classes = int(data.y.max()) + 1

        torch.manual_seed(args.seed)  # the same on every rank: same init, same dropout masks
        model = GAT(conv_factory(args.conv, args.backend), data.num_features, num_classes)
        model = DistributedDataParallel(model.to(device),
                                        device_ids=[device] if device.type == "cuda" else None)
        optimizer = make_optimizer(model)
        best_val = best_test = 0.0
        bar = tqdm(range(args.epochs), desc=f"{world_size} ranks", disable=rank != 0)
        for _ in bar:
            loss = train_step(model, data, shard_idx, train_idx.numel(), world_size, optimizer)
            if rank == 0:  # evaluation draws no random numbers: the ranks' RNGs stay in step
                _, val, test = accuracies(model.module, data)
                if val > best_val:
                    best_val, best_test = val, test
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}", test=f"{best_test:.3f}")
        if rank == 0:
            sizes = [len(shard(train_idx, r, world_size)) for r in range(world_size)]
            print(f"{args.dataset}, {world_size} ranks ({dist.get_backend()}), training nodes "
                  f"split {sizes}: test accuracy {100 * best_test:.1f}% at best validation "
                  f"{100 * best_val:.1f}%")
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_rank()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = example_parser(__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=2,
                        help="processes to spawn when not launched by torchrun")
    args = parser.parse_args()

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    if args.world_size < 1:
        parser.error("--world-size must be at least 1")
    if torch.cuda.is_available() and args.world_size > torch.cuda.device_count():
        parser.error(f"--world-size {args.world_size} exceeds the "
                     f"{torch.cuda.device_count()} visible GPUs (nccl needs one a rank)")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    mp.spawn(worker, args=(args.world_size, args), nprocs=args.world_size)


if __name__ == "__main__":
    main()
