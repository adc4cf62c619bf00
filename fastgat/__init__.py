"""fastgat: fused, drop-in replacements for torch_geometric.nn.GATConv, GATv2Conv and
TransformerConv."""
from .backends import available_backends
from .conv import FastGATConv
from .gatv2_conv import FastGATv2Conv
from .graph import Graph, prepare
from .ops import gat_attention, gatv2_attention, transformer_attention
from .transformer_conv import FastTransformerConv

__all__ = ["FastGATConv", "FastGATv2Conv", "FastTransformerConv", "Graph", "prepare",
           "available_backends", "gat_attention", "gatv2_attention", "transformer_attention"]
__version__ = "0.1.0"
