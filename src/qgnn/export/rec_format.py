"""The recommendation layout of the ``.qgnn.safetensors`` file: LightGCN's quantized ego embedding table.

A LightGCN model (He et al., SIGIR 2020) has one parameter, the ego table E⁰ [N, d] (N = users + items);
its quantized variants store that table at b bits (``docs/format.md``, "Recommendation models"). The
descriptor has ``task = "rec"`` and::

    model = {"arch": "lightgcn", "num_users": U, "num_items": I, "hidden": d, "num_layers": L, "table": T}
    bits  = {"table": b}
    graph = {"num_interactions": E, "sha256": "<hex>"}    # fingerprint of the training interactions (optional)

with the table ``T`` one of

* ``kind = "node_levels"`` (GNAQ, Li et al., CIKM 2025): ``codes`` names a uint8 tensor of
  ``ceil(N d b / 8)`` bytes, the level indices q_ij ∈ [0, 2^b) packed LSB first in row-major order
  (:mod:`qgnn.export.packing`); ``levels`` names a tensor [N, 2^b] of dtype ``level_dtype``:
  ``"float8_e4m3fn"`` (1 byte a level, GNAQ's default) or ``"float32"`` (the default when the key is absent,
  as in files written before FP8 levels); ê_ij = float32(levels[i, q_ij]);
* ``kind = "uniform"`` (QAT / LSQ on the whole table): the weight-quantizer object of the node / graph
  layout with ``granularity = "tensor"`` and ``shape = [N, d]`` (grid, inline scale / zero-point, packed
  ``codes`` u = q − qmin, binary u = (q + 1) / 2); ê = (q − z) · s.

:func:`rec_tensor_specs` is what :func:`qgnn.export.format.tensor_specs` returns for such a descriptor:
every tensor with its dtype and shape, after checking the fields (ConfigError, turned into a
CheckpointError naming the file by ``read_file``).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from .format import _fail, _int, weight_specs
from .packing import packed_nbytes

__all__ = ["LEVEL_FILE_DTYPES", "REC_ARCH", "TABLE_KINDS", "rec_tensor_specs", "graph_fingerprint"]

REC_ARCH = "lightgcn"
TABLE_KINDS = ("node_levels", "uniform")
# GNAQ's level dtype (qgnn.quant.nodewise.LEVEL_DTYPES name) -> its name in the file (a safetensors dtype)
LEVEL_FILE_DTYPES = {"fp8": "float8_e4m3fn", "fp32": "float32"}


def graph_fingerprint(edge_index: Tensor, num_users: int, num_items: int) -> dict:
    """``{"num_interactions", "sha256"}`` of the training interactions of a bipartite ``edge_index`` (users
    0..U-1, items U..U+I-1, both directions): the SHA-256 of the sorted, deduplicated codes u · I + i as
    little-endian int64. The runtime compares it with the evaluation dataset's graph."""
    row, col = edge_index[0].long().cpu(), edge_index[1].long().cpu()
    keep = row < num_users
    code = torch.unique(row[keep] * num_items + (col[keep] - num_users))
    data = code.numpy().astype("<i8", copy=False).tobytes()
    return {"num_interactions": int(code.numel()), "sha256": hashlib.sha256(data).hexdigest()}


def _check_graph(g) -> None:
    if g is None:
        return
    if not isinstance(g, dict):
        _fail("graph must be an object")
    _int(g.get("num_interactions"), "graph.num_interactions", 0)
    h = g.get("sha256")
    if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
        _fail("graph.sha256 must be 64 lowercase hex digits")


def rec_tensor_specs(desc: dict) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """name -> (dtype, shape, where) of every tensor of a ``task = "rec"`` descriptor (module docstring)."""
    model = desc.get("model")
    if not isinstance(model, dict):
        _fail("descriptor has no 'model' object")
    if model.get("arch") != REC_ARCH:
        _fail(f"unknown model.arch {model.get('arch')!r} for a rec model; valid: {REC_ARCH}")
    nu = _int(model.get("num_users"), "model.num_users", 1)
    ni = _int(model.get("num_items"), "model.num_items", 1)
    d = _int(model.get("hidden"), "model.hidden", 1)
    _int(model.get("num_layers"), "model.num_layers", 0)
    n = nu + ni
    t = model.get("table")
    if not isinstance(t, dict):
        _fail("model.table must be an object")
    kind = t.get("kind")
    specs: dict = {}
    if kind == "node_levels":
        bits = _int(t.get("bits"), "model.table: bits", 1)
        if bits > 8:
            _fail(f"model.table: bits must be in 1..8, got {bits}")
        for key in ("codes", "levels"):
            if not isinstance(t.get(key), str):
                _fail(f"model.table: {key} must name a tensor")
        if t["codes"] == t["levels"]:
            _fail("model.table: codes and levels must be different tensors")
        specs[t["codes"]] = ("uint8", (packed_nbytes(n * d, bits),), "model.table.codes")
        ldt = t.get("level_dtype", "float32")
        if ldt not in LEVEL_FILE_DTYPES.values():
            _fail(f"model.table: level_dtype must be one of {', '.join(LEVEL_FILE_DTYPES.values())}, got {ldt!r}")
        specs[t["levels"]] = (ldt, (n, 1 << bits), "model.table.levels")
    elif kind == "uniform":
        if t.get("granularity") != "tensor":
            _fail(f"model.table: a uniform table is quantized per tensor, got {t.get('granularity')!r}")
        weight_specs(t, "model.table", (n, d), specs)
        bits = t["bits"]
    else:
        _fail(f"model.table: unknown kind {kind!r}; valid: {', '.join(TABLE_KINDS)}")
    if desc.get("bits") != {"table": bits}:
        _fail(f"bits must be {{'table': {bits}}}, got {desc.get('bits')!r}")
    _check_graph(desc.get("graph"))
    return specs
