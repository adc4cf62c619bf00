"""fastgat: fused, drop-in replacements for torch_geometric.nn.GATConv and TransformerConv."""
from .backends import available_backends
from .conv import FastGATConv
from .graph import Graph, prepare
from .ops import gat_attention, transformer_attention
from .transformer_conv import FastTransformerConv

__all__ = ["FastGATConv", "FastTransformerConv", "Graph", "prepare", "available_backends", "gat_attention",
           "transformer_attention"]
__version__ = "0.1.0"
