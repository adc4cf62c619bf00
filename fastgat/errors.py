"""Exceptions for bad input that are also what GATConv raises for the same input.

GATConv does not check its inputs: a bad shape or dtype fails deep inside torch, with an
IndexError or a RuntimeError that depends on the shape and on add_self_loops. FastGATConv checks
first and names the problem; each class here also derives from GATConv's types for that input,
so code written to catch GATConv's errors catches FastGATConv's.
"""


class InputShapeError(ValueError, IndexError, RuntimeError):
    """edge_index not of shape (2, E), or edge_attr not of shape (E, edge_dim)."""


class FeatureTypeError(TypeError, RuntimeError):
    """Node features that are not floating point (GATConv: a dtype mismatch in its matmul)."""


class EdgeIndexTypeError(TypeError, ValueError):
    """edge_index that is not an integer tensor nor a sparse adjacency (GATConv: ValueError)."""
