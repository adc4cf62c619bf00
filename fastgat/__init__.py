"""fastgat: a fused, drop-in replacement for torch_geometric.nn.GATConv."""
from .backends import available_backends
from .conv import FastGATConv
from .graph import Graph, prepare
from .ops import gat_attention

__all__ = ["FastGATConv", "Graph", "prepare", "available_backends", "gat_attention"]
__version__ = "0.1.0"
