"""fastgat: fused, drop-in replacements for torch_geometric.nn.GATConv and GATv2Conv."""
from .backends import available_backends
from .conv import FastGATConv
from .gatv2_conv import FastGATv2Conv
from .graph import Graph, prepare
from .ops import gat_attention, gatv2_attention

__all__ = ["FastGATConv", "FastGATv2Conv", "Graph", "prepare", "available_backends",
           "gat_attention", "gatv2_attention"]
__version__ = "0.1.0"
