"""What the Planetoid examples share: data loading and the GAT paper's model.

Data comes from PyG's `Planetoid(root, name)`, which downloads the raw files into
`<root>/<name>/raw` the first time. Offline, point `--offline-copy` (or $FASTGAT_PLANETOID_RAW)
at a folder holding `<name>/raw/ind.<name>.*` (as the Planetoid authors publish them): missing
raw files are copied from it into the root, which must be writable (PyG writes `processed/`),
so nothing is downloaded. CI runs the tests that way.
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
from torch_geometric.nn import GATConv, GATv2Conv
import torch_geometric.transforms as T

from fastgat import FastGATConv, FastGATv2Conv

DATASETS = ("Cora", "CiteSeer")
# --conv: the fused layer or PyG's, of GAT ("fast", "pyg") or GATv2 ("fast-v2", "pyg-v2").
LAYERS = {"fast": FastGATConv, "pyg": GATConv, "fast-v2": FastGATv2Conv, "pyg-v2": GATv2Conv}
CONVS = tuple(LAYERS)
RAW_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
OFFLINE_COPY_VAR = "FASTGAT_PLANETOID_RAW"


def default_root() -> Path:
    """Where data sets go: $FASTGAT_DATA, else ~/.cache/fastgat/planetoid."""
    return Path(os.environ.get("FASTGAT_DATA", Path.home() / ".cache" / "fastgat" / "planetoid"))


def offline_copy():
    """The folder named by $FASTGAT_PLANETOID_RAW, or None."""
    folder = os.environ.get(OFFLINE_COPY_VAR)
    return Path(folder) if folder else None


def raw_files(name: str):
    return [f"ind.{name.lower()}.{part}" for part in RAW_PARTS]


def copy_raw(name: str, root: Path, source: Path) -> None:
    """Copy the raw files of `name` missing from `<root>/<name>/raw` from `<source>/<name>/raw`."""
    raw, origin = root / name / "raw", source / name / "raw"
    missing = [file for file in raw_files(name) if not (raw / file).exists()]
    absent = [file for file in missing if not (origin / file).is_file()]
    if absent:
        raise FileNotFoundError(f"the offline copy {source} lacks {', '.join(absent)} in "
                                f"{origin}")
    raw.mkdir(parents=True, exist_ok=True)
    for file in missing:  # copyfile keeps no read-only bits; the rename keeps no half copy
        shutil.copyfile(origin / file, raw / f"{file}.part")
        os.replace(raw / f"{file}.part", raw / file)


def load_planetoid(name: str, root=None, offline=None):
    """Planetoid `name` with row-normalised features (the GAT paper's preprocessing).

    root (default: default_root()) must be writable. With `offline` (default: the folder named
    by $FASTGAT_PLANETOID_RAW, if set) the raw files come from there, not from the network."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    root = Path(root) if root is not None else default_root()
    offline = Path(offline) if offline is not None else offline_copy()
    if offline is not None:
        copy_raw(name, root, offline)
    processed = (root / name / "processed" / "data.pt").exists()
    if not processed and importlib.util.find_spec("scipy") is None:
        raise ImportError("PyG's Planetoid reader unpickles scipy sparse matrices: "
                          "pip install scipy")
    return Planetoid(str(root), name, transform=T.NormalizeFeatures())[0]


def conv_factory(conv: str, backend: str = "auto"):
    """The attention layer class of LAYERS[conv], a fused one with `backend`; the fused and
    PyG's layers share one constructor."""
    if conv not in LAYERS:
        raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
    return partial(LAYERS[conv], backend=backend) if conv.startswith("fast") else LAYERS[conv]


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
                        help="fused layer's backend: auto, torch, triton, cuda or cpu")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--root", default=None,
                        help="writable Planetoid root, as PyG's Planetoid(root, name) (default: "
                             "$FASTGAT_DATA or ~/.cache/fastgat/planetoid)")
    parser.add_argument("--offline-copy", default=None,
                        help="folder with <name>/raw/ind.<name>.* to copy instead of "
                             f"downloading (default: ${OFFLINE_COPY_VAR} if set)")
    return parser
