"""ONNX graph building for :mod:`qgnn.export.onnx_export`: a small node / initializer builder and the graph
operations of message passing written with standard ONNX ops (opset 18) that onnxruntime's CPU provider runs.

* **Edges**: ``edge_index`` [2, E] int64; ``flow`` picks which row is the source (``source_to_target``: row 0).
* **Neighbourhood sums** ``out[i] = Σ_{j→i} m_j``: ``Gather`` the source rows, then ``ScatterND`` with
  ``reduction="add"`` into zeros [N, ...] (``reduction="max"`` for GAT's softmax and max pooling). ONNX has
  no sparse matmul, so the messages are materialised ([E, C]); integer sums are done in int32 / int64, where
  any summation order gives the same exact result, as in the runtime (``qgnn.export.intops``).
* **Self loops** as PyG adds them: existing loops removed (``Compress``), one loop per node appended
  (``Range``), in that order (PyG's ``add_remaining_self_loops`` / ``add_self_loops`` without edge features).
* **GCN normalisation** ``w_ij = d_i^-1/2 · 1 · d_j^-1/2`` with ``d`` the in-degree over (A + I) (without
  input edge weights PyG's ``gcn_norm`` weights the loops 1 even when ``improved``), op for op as
  ``gcn_norm``: ``1 / sqrt(d)`` (torch's ``pow(-0.5)`` is ``1 / sqrt``), 0 where ``d = 0``,
  ``(d_src^-1/2 · w) · d_dst^-1/2``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Builder", "OPSET"]

OPSET = 18  # ScatterND reduction "max" needs 18; onnxruntime >= 1.14 runs it
IR_VERSION = 8  # the lowest IR version that carries opset 18: older onnxruntime builds load the file


class Builder:
    """Collects nodes and initializers; every value gets a unique name ``<scope>/<hint>_<k>``."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self.scope = ""
        self._count = 0
        self._consts: dict = {}  # small constants shared by value
        self.memo: dict = {}  # graph forms (edges, degrees, normalised weights) built once per model

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}/{hint}_{self._count}" if self.scope else f"{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "const") -> str:
        """An initializer holding ``value`` (numpy array or scalar); small ones are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 8:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.name(hint)
        # copy(order="C"), not ascontiguousarray: that one turns a 0-d scalar into a [1] array
        self.initializers.append(self._numpy_helper.from_array(arr.copy(order="C"), name))
        if key is not None:
            self._consts[key] = name
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, outputs: int = 1, **attrs):
        """Append one node; returns its output name (or a list of ``outputs`` names)."""
        outs = [self.name(hint or op_type) for _ in range(outputs)]
        self.nodes.append(self._helper.make_node(op_type, list(inputs), outs, name=outs[0] + ":" + op_type,
                                                 **attrs))
        return outs[0] if outputs == 1 else outs

    # ---------------------------------------------------------------------------------------------
    # shapes and constants
    # ---------------------------------------------------------------------------------------------

    def dim(self, x: str, axis: int) -> str:
        """Size of ``x`` along ``axis`` as an int64 [1] tensor."""
        return self.op("Shape", x, hint="dim", start=axis, end=axis + 1)

    def fill(self, shape: str, value, dtype) -> str:
        """A tensor of ``shape`` (int64 [r]) filled with ``value`` of numpy ``dtype``."""
        v = self._numpy_helper.from_array(np.array([value], dtype=dtype))
        return self.op("ConstantOfShape", shape, hint="fill", value=v)

    def unsqueeze(self, x: str, axis: int) -> str:
        return self.op("Unsqueeze", x, self.const(np.array([axis], np.int64)))

    # ---------------------------------------------------------------------------------------------
    # graph operations
    # ---------------------------------------------------------------------------------------------

    def endpoints(self, edge_index: str, flow: str) -> tuple[str, str]:
        """(source, target) node ids [E] of ``edge_index`` for a layer of ``flow``."""
        key = ("endpoints", edge_index, flow)
        if key not in self.memo:
            rows = [self.op("Gather", edge_index, self.const(np.array(i, np.int64)), hint=f"row{i}", axis=0)
                    for i in (0, 1)]
            self.memo[key] = (rows[0], rows[1]) if flow == "source_to_target" else (rows[1], rows[0])
        return self.memo[key]

    def scatter(self, updates: str, index: str, n: str, dtype, reduction: str = "add", init=0) -> str:
        """``out[index[e]] ⊕= updates[e]`` into a tensor [n, *updates.shape[1:]] filled with ``init``."""
        rest = self.op("Shape", updates, hint="rest", start=1)
        base = self.fill(self.op("Concat", n, rest, axis=0), init, dtype)
        return self.op("ScatterND", base, self.unsqueeze(index, -1), updates, reduction=reduction)

    def aggregate(self, values: str, src: str, dst: str, n: str, dtype, edge_factor: str | None = None) -> str:
        """``out[i] = Σ_{j→i} e_ji · values[j]`` (``edge_factor`` [E] or [E, H] broadcast on the last axis)."""
        msg = self.op("Gather", values, src, axis=0, hint="msg")
        if edge_factor is not None:
            msg = self.op("Mul", msg, self.unsqueeze(edge_factor, -1), hint="msg")
        return self.scatter(msg, dst, n, dtype)

    def in_degree(self, dst: str, n: str) -> str:
        """Number of incoming edges per node, float32 [N] (GraphPlan.deg)."""
        key = ("deg", dst)
        if key not in self.memo:
            ones = self.fill(self.op("Shape", dst), 1.0, np.float32)
            self.memo[key] = self.scatter(ones, dst, n, np.float32)
        return self.memo[key]

    def _split_loops(self, edge_index: str, n: str) -> tuple[str, str]:
        """(edges without self loops [2, E'], loops [2, N]): PyG's remove_self_loops and the loop index."""
        r0, r1 = self.endpoints(edge_index, "source_to_target")
        keep = self.op("Not", self.op("Equal", r0, r1))
        kept = self.op("Compress", edge_index, keep, axis=1, hint="no_loops")
        nodes = self.op("Range", self.const(np.array(0, np.int64)), self.op("Squeeze", n),
                        self.const(np.array(1, np.int64)), hint="nodes")
        loops = self.op("Concat", self.unsqueeze(nodes, 0), self.unsqueeze(nodes, 0), axis=0, hint="loops")
        return kept, loops

    def with_self_loops(self, edge_index: str, n: str) -> str:
        """Self loops removed, then one per node appended (GAT's remove_self_loops + add_self_loops)."""
        key = ("loops", edge_index)
        if key not in self.memo:
            kept, loops = self._split_loops(edge_index, n)
            self.memo[key] = self.op("Concat", kept, loops, axis=1, hint="edge_index_loops")
        return self.memo[key]

    def gcn_norm(self, edge_index: str, n: str, add_self_loops: bool, flow: str) -> tuple[str, str]:
        """(edge_index', edge weights [E'] float32) of PyG's ``gcn_norm`` with no input edge weights."""
        key = ("gcn_norm", edge_index, add_self_loops, flow)
        if key in self.memo:
            return self.memo[key]
        if add_self_loops:  # add_remaining_self_loops: non-loop edges, then a loop per node
            kept, loops = self._split_loops(edge_index, n)
            ei = self.op("Concat", kept, loops, axis=1, hint="edge_index_norm")
        else:
            ei = edge_index
        # every weight 1, loops included: without input edge weights PyG's add_remaining_self_loops drops
        # the fill value, so ``improved`` (loops weighted 2) changes nothing in gcn_norm, nor here
        w = self.fill(self.dim(ei, 1), 1.0, np.float32)
        row, col = self.endpoints(ei, "source_to_target")
        deg = self.scatter(w, col if flow == "source_to_target" else row, n, np.float32)
        dis = self.op("Reciprocal", self.op("Sqrt", deg), hint="deg_inv_sqrt")
        dis = self.op("Where", self.op("IsInf", dis), self.const(np.array(0.0, np.float32)), dis)
        w = self.op("Mul", self.op("Mul", self.op("Gather", dis, row, axis=0), w),
                    self.op("Gather", dis, col, axis=0), hint="gcn_weight")
        self.memo[key] = (ei, w)
        return ei, w

    def segment_softmax(self, alpha: str, dst: str, n: str) -> str:
        """PyG's ``softmax(alpha, dst)`` over the edges entering each node: exp(a − max) / (Σ exp + 1e-16)."""
        amax = self.scatter(alpha, dst, n, np.float32, reduction="max", init=-np.inf)
        e = self.op("Exp", self.op("Sub", alpha, self.op("Gather", amax, dst, axis=0)))
        total = self.op("Add", self.scatter(e, dst, n, np.float32), self.const(np.array(1e-16, np.float32)))
        return self.op("Div", e, self.op("Gather", total, dst, axis=0), hint="softmax")

    def pool(self, h: str, batch: str, size: str, how: str) -> str:
        """PyG's global sum / mean / max pooling of node rows into ``size`` graphs (empty graphs: 0)."""
        if how == "max":
            out = self.scatter(h, batch, size, np.float32, reduction="max", init=-np.inf)
            return self.op("Where", self.op("IsInf", out), self.const(np.array(0.0, np.float32)), out)
        out = self.scatter(h, batch, size, np.float32)
        if how == "mean":
            count = self.scatter(self.fill(self.op("Shape", batch), 1.0, np.float32), batch, size, np.float32)
            count = self.op("Max", count, self.const(np.array(1.0, np.float32)))
            out = self.op("Div", out, self.unsqueeze(count, -1), hint="mean_pool")
        return out
