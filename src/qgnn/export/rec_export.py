"""Export a quantized LightGCN (``qgnn train --model lightgcn --method gnaq|qat|lsq --save``) to the packed file.

What is stored is exactly what the fake-quant model's eval-mode ``ego()`` evaluates, and nothing else
(layout: :mod:`qgnn.export.rec_format`, ``docs/format.md``):

* GNAQ (:class:`~qgnn.methods.gnaq.GNAQLightGCN`): the codes of the eval forward, q = nearest levels of the
  latent z = E⁰ + P Δ (``refresh_codes``), bit-packed at b bits, and the per-node levels [N, 2^b] in the
  dtype the model uses them in: ``float8_e4m3fn`` (1 byte a level, ``level_dtype="fp8"``) or float32.
  E⁰ and Δ (training state, two FP32 tables; with FP8 levels also their float32 training copy) are left out.
* QAT / LSQ (:class:`~qgnn.methods.rec_baselines.QuantTableLightGCN`): the codes ``quant_int(E)`` of the
  per-tensor quantizer packed at b bits with its scale / zero-point inline in the JSON, written by the node /
  graph exporter's weight writer (the same checks: supported quantizer, tables reproduce the codes).

The training graph is not stored (the evaluation dataset provides it); its fingerprint is
(:func:`~qgnn.export.rec_format.graph_fingerprint`), so that the runtime can refuse another graph.
FP32 LightGCN has nothing to pack, and BiGeaR's layer-wise binarized embeddings are not in the format:
both are refused with a ConfigError.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError

from .packing import pack_bits
from .rec_format import LEVEL_FILE_DTYPES, REC_ARCH, graph_fingerprint

__all__ = ["export_rec_model"]


def export_rec_model(model: nn.Module, config: dict | None = None) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, descriptor)`` of a quantized LightGCN (module docstring); ConfigError for other models."""
    from qgnn.methods.gnaq import GNAQLightGCN
    from qgnn.methods.rec_baselines import QuantTableLightGCN

    from .exporter import _Writer

    model = model.eval()
    d = model.hidden
    if isinstance(model, GNAQLightGCN):
        with torch.no_grad():
            codes = model.refresh_codes()  # the eval forward's codes (needs the graph for RAU's latent)
            levels = model.quant.export_levels().contiguous()  # FP8 or float32: what ego() gathers from
        tensors = {"table.codes": pack_bits(codes, model.bits), "table.levels": levels}
        table = {"kind": "node_levels", "bits": model.bits, "codes": "table.codes", "levels": "table.levels",
                 "level_dtype": LEVEL_FILE_DTYPES[model.quant.level_dtype]}
    elif isinstance(model, QuantTableLightGCN):
        w = _Writer()
        table, _ = w.weight(model.quant, model.embedding.weight, "table")
        if table is None:
            raise ConfigError("the embedding table's quantizer is disabled: nothing to pack")
        table = {"kind": "uniform", **table}
        tensors = w.tensors
    else:
        from qgnn.models.lightgcn import LightGCN

        if type(model) is LightGCN:
            raise ConfigError("an FP32 LightGCN has nothing to pack: export a model trained with --method gnaq, "
                              "qat or lsq")
        raise ConfigError(f"{type(model).__name__} cannot be exported (supported recommendation methods: gnaq, "
                          "qat, lsq)")
    desc = {"task": "rec",
            "model": {"arch": REC_ARCH, "num_users": model.num_users, "num_items": model.num_items, "hidden": d,
                      "num_layers": model.num_layers, "table": table},
            "bits": {"table": int(table["bits"])}, "config": config or {}}
    if model.edge_index is not None:
        desc["graph"] = graph_fingerprint(model.edge_index, model.num_users, model.num_items)
    return tensors, desc
