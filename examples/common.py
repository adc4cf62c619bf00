"""What the Planetoid examples share: offline data loading and the GAT paper's model.

The raw Planetoid files lie in the project's shared folder (`<repo>/../shared`, read-only);
PyG's `Planetoid` reads them without a network as long as its root is writable (it writes
`processed/`), so they are copied once into a cache directory.
"""
import argparse
import importlib.util
import os
import shutil
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.datasets import Planetoid
from torch_geometric.nn import GATConv
import torch_geometric.transforms as T

from fastgat import FastGATConv

REPO = Path(__file__).resolve().parents[1]
SHARED_PLANETOID = REPO.parent / "shared" / "data" / "planetoid"
DATASETS = ("Cora", "CiteSeer")
CONVS = ("fast", "pyg")
RAW_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def default_root() -> Path:
    """Writable cache for the copied raw files: $FASTGAT_DATA or ~/.cache/fastgat/planetoid."""
    return Path(os.environ.get("FASTGAT_DATA", Path.home() / ".cache" / "fastgat" / "planetoid"))


def shared_raw_dir(name: str) -> Path:
    return SHARED_PLANETOID / name / "raw"


def load_planetoid(name: str, root=None):
    """Planetoid `name` with row-normalised features (the GAT paper's preprocessing).

    root (default: default_root()) must be writable; raw files missing from `<root>/<name>/raw`
    are copied there from the shared folder first."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    root = Path(root) if root is not None else default_root()
    raw = root / name / "raw"
    source = shared_raw_dir(name)
    needed = [f"ind.{name.lower()}.{part}" for part in RAW_PARTS]
    missing = [file for file in needed if not (raw / file).exists()]
    if missing:
        if not all((source / file).is_file() for file in missing):
            raise FileNotFoundError(
                f"the Planetoid raw files for {name} are neither in {raw} nor in the shared "
                f"folder {source}; the examples read them offline: put "
                f"{', '.join(needed)} in one of them")
        raw.mkdir(parents=True, exist_ok=True)
        for file in missing:  # copyfile keeps no read-only bits; the rename keeps no half copy
            shutil.copyfile(source / file, raw / f"{file}.part")
            os.replace(raw / f"{file}.part", raw / file)
    processed = (root / name / "processed" / "data.pt").exists()
    if not processed and importlib.util.find_spec("scipy") is None:
        raise ImportError("PyG's Planetoid reader unpickles scipy sparse matrices: "
                          "pip install scipy")
    return Planetoid(str(root), name, transform=T.NormalizeFeatures())[0]


def conv_factory(conv: str, backend: str = "auto"):
    """The GAT layer class: FastGATConv (with `backend`) or PyG's GATConv, same constructor."""
    if conv == "fast":
        return partial(FastGATConv, backend=backend)
    if conv == "pyg":
        return GATConv
    raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")


class GAT(nn.Module):
    """Velickovic et al. (2018) transductive model: 8 heads x 8 hidden with ELU, then one
    averaged output head; dropout on each layer's input and on the attention weights."""

    def __init__(self, conv, in_channels: int, num_classes: int, hidden: int = 8,
                 heads: int = 8, dropout: float = 0.6):
        super().__init__()
        self.dropout = dropout
        self.conv1 = conv(in_channels, hidden, heads=heads, dropout=dropout)
        self.conv2 = conv(hidden * heads, num_classes, heads=1, concat=False, dropout=dropout)

    def forward(self, x, edge_index):
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


def make_optimizer(model: nn.Module, lr: float = 0.005, weight_decay: float = 5e-4):
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def accuracies(model: nn.Module, data):
    """(train, val, test) accuracy of the model in eval mode."""
    model.eval()
    pred = model(data.x, data.edge_index).argmax(dim=-1)
    return tuple(float((pred[mask] == data.y[mask]).float().mean())
                 for mask in (data.train_mask, data.val_mask, data.test_mask))


def example_parser(doc: str, conv: bool = True) -> argparse.ArgumentParser:
    """The arguments the examples share: data set, layer (if `conv`), backend, epochs, root."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, default="Cora")
    if conv:
        parser.add_argument("--conv", choices=CONVS, default="fast")
    parser.add_argument("--backend", default="auto",
                        help="FastGATConv backend: auto, torch, triton, cuda or cpu")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--root", default=None,
                        help="writable Planetoid root (default: a cache of the shared raw files)")
    return parser
