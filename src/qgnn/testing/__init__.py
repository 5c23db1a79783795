"""Test kit for the tests of qgnn and of user layers built on it.

Import what a test needs; nothing here imports pytest at import time except :mod:`qgnn.testing.fixtures`
(pytest fixtures, for test modules only), so the kit also serves a user's own test runner.

* graphs (:mod:`qgnn.testing.graphs`): small seeded random graphs as ``(x, edge_index)``, with isolated
  nodes, a hub node, no edges, no nodes, and a batch of graphs of different sizes;
* layers (:mod:`qgnn.testing.layers`, imported on its own: it builds PyG layers): the table of float
  layers the quantized layers must reproduce, and factories of their quantized copies;
* data (:mod:`qgnn.testing.data`): ``needs_data`` (a skip marker when ``QGNN_DATA`` lacks a dataset's raw
  files), ``require_data`` and ``use_test_data`` (offline, shared raw files, a session-wide cache);
* parity (:mod:`qgnn.testing.parity`): ``assert_close`` with a stated tolerance, ``sqnr``, and the
  permutation-equivariance check of a node-level layer or model.
"""

from qgnn.testing.data import data_root, has_data, needs_data, require_data, use_test_data
from qgnn.testing.graphs import batch_of_graphs, edgeless_graph, graph, hub_graph, isolated_graph
from qgnn.testing.parity import assert_close, assert_permutation_equivariant, permute_graph, sqnr

__all__ = [
    "assert_close",
    "assert_permutation_equivariant",
    "batch_of_graphs",
    "data_root",
    "edgeless_graph",
    "graph",
    "has_data",
    "hub_graph",
    "isolated_graph",
    "needs_data",
    "permute_graph",
    "require_data",
    "sqnr",
    "use_test_data",
]
