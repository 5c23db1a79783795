"""Helpers for the export tests: small quantized models trained a few steps on synthetic graphs (plain
functions: a conftest.py here would shadow tests/conftest.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader

from qgnn import QuantConfig, quantize_
from qgnn.data.synthetic import random_graph_dataset, random_node_dataset
from qgnn.export import IntModel, export_model, read_file, write_file
from qgnn.models import build_model

NODE_DATA = random_node_dataset(160, 20, 4, seed=1)
GRAPH_DATA = random_graph_dataset(40, seed=0)


def node_model(name: str, method: str, bits: int, steps: int = 4, seed: int = 0, **quant):
    torch.manual_seed(seed)
    d = NODE_DATA.data
    m = build_model(name, "node", NODE_DATA.num_features, NODE_DATA.num_classes)
    quantize_(m, QuantConfig(method=method, bits=bits, **quant))
    opt = torch.optim.Adam(m.parameters(), 0.01)
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(d.x, d.edge_index), d.y).backward()
        opt.step()
    return m.eval()


def graph_batches(batch_size: int = 16):
    return list(DataLoader(GRAPH_DATA.dataset, batch_size=batch_size))


def graph_model(name: str, method: str, bits: int, readout_norm: bool = False, seed: int = 0, **quant):
    torch.manual_seed(seed)
    m = build_model(name, "graph", GRAPH_DATA.num_features, GRAPH_DATA.num_classes, readout_norm=readout_norm,
                    num_layers=3)
    quantize_(m, QuantConfig(method=method, bits=bits, **quant))
    opt = torch.optim.Adam(m.parameters(), 0.01)
    m.train()
    for b in graph_batches():
        opt.zero_grad()
        F.cross_entropy(m(b.x, b.edge_index, b.batch), b.y).backward()
        opt.step()
    return m.eval()


def scramble_a2q_widths(model, seed: int = 0) -> None:
    """Give every A2Q entry a random integer width in its range (training a few steps leaves them all at
    the initial bits), so that per-entry widths really differ in the tests."""
    from qgnn.quant.a2q import A2QQuantizer

    g = torch.Generator().manual_seed(seed)
    for q in model.modules():
        if isinstance(q, A2QQuantizer):
            q.b_delta.data = (torch.rand(q.b_delta.shape, generator=g) - 0.5) * 7 / q.bits_lr_scale


def roundtrip(model, tmp_path, **kw) -> IntModel:
    """export -> write -> read -> IntModel."""
    tensors, desc = export_model(model)
    path = tmp_path / "m.qgnn.safetensors"
    write_file(path, tensors, desc)
    return IntModel(*read_file(path), **kw)


def assert_matches(out: torch.Tensor, ref: torch.Tensor, max_rel: float = 2e-2) -> None:
    """Identical predictions; logits equal up to float rounding of the rescales. A tie flip (one code of a
    later quantizer, docs/integer.md) may move some logits by about one quantization step, so the bound on
    the largest difference is loose and the median one is tight."""
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    scale = ref.abs().max().clamp(min=1e-6)
    rel = (out - ref).abs() / scale
    assert float(rel.median()) < 1e-6
    assert float(rel.max()) < max_rel
