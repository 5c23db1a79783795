"""The integer runtime reproduces the fake-quant model it was exported from (eval mode): identical
predictions, logits equal up to float rounding of the rescales, integer paths taken where the docs say;
backends give bit-identical outputs; per-channel activations take the float fallback and still match."""

from __future__ import annotations

import pytest
import torch
from qgnn_export_testutil import (
    NODE_DATA,
    assert_matches,
    graph_batches,
    graph_model,
    node_model,
    roundtrip,
    scramble_a2q_widths,
)

from qgnn.errors import ConfigError
from qgnn.export import export_model
from qgnn.nn import set_integer_aggregation
from qgnn.quant import RelaxedQuantizer, UniformQuantizer

D = NODE_DATA.data


@pytest.mark.parametrize("name", ["gcn", "gin", "sage", "gat", "graphconv"])
@pytest.mark.parametrize("method", ["qat", "lsq", "dq"])
@pytest.mark.parametrize("bits", [8, 4])
def test_node_models_match_fake_quant(name, method, bits, tmp_path):
    m = node_model(name, method, bits)
    with torch.no_grad():
        ref = m(D.x, D.edge_index)
    im = roundtrip(m, tmp_path)
    assert_matches(im(D.x, D.edge_index), ref)
    # every matmul and every aggregation of the default slots runs on integers
    assert set(im.paths.values()) == {"int8 x int8 -> int32", "integer"}, im.paths


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_very_low_bits(bits, tmp_path):
    m = node_model("gcn", "qat", bits)  # 1 bit: binary weights {-1, +1}, unsigned {0, 1} activations
    with torch.no_grad():
        ref = m(D.x, D.edge_index)
    assert_matches(roundtrip(m, tmp_path)(D.x, D.edge_index), ref)


@pytest.mark.parametrize("name", ["gin", "gcn"])
@pytest.mark.parametrize("method", ["qat", "lsq", "dq"])
@pytest.mark.parametrize("readout_norm", [False, True])
def test_graph_models_match_fake_quant(name, method, readout_norm, tmp_path):
    m = graph_model(name, method, 8 if readout_norm else 4, readout_norm=readout_norm)
    im = roundtrip(m, tmp_path)
    for integer in (False, True):
        # one-hot degree features put aggregated values exactly on rounding ties of the next quantizer, which
        # the fake-quant float sum breaks by its rounding error and the exact integer sum does not: logits
        # can move by a step (still the same predictions). Against the layers' own integer aggregation
        # (docs/integer.md) the sums agree exactly.
        set_integer_aggregation(m, integer)
        for b in graph_batches(20):
            with torch.no_grad():
                ref = m(b.x, b.edge_index, b.batch)
            assert_matches(im(b.x, b.edge_index, b.batch), ref, max_rel=2e-2 if integer else 0.1)


@pytest.mark.parametrize("name", ["gcn", "gin", "sage", "gat"])
def test_a2q_per_node_widths(name, tmp_path):
    # A2Q: a step and a width per node (activations) and per output channel (weights), each weight row
    # packed at its own width; per-node scales cannot leave a neighbourhood sum, so aggregation is float
    m = node_model(name, "a2q", 4, steps=2)
    scramble_a2q_widths(m)
    with torch.no_grad():
        ref = m(D.x, D.edge_index)
    im = roundtrip(m, tmp_path)
    assert_matches(im(D.x, D.edge_index), ref)
    widths = {v for k, v in im.desc["mean_bits"].items()}
    assert len(widths) > 2  # the tables really hold mixed widths
    assert "int8 x int8 -> int32" in set(im.paths.values())


def test_a2q_nearest_neighbour_groups(tmp_path):
    m = graph_model("gin", "a2q", 4, options={"node_strategy": "nn"})
    scramble_a2q_widths(m, seed=1)
    im = roundtrip(m, tmp_path)
    for b in graph_batches(20):
        with torch.no_grad():
            ref = m(b.x, b.edge_index, b.batch)
        assert_matches(im(b.x, b.edge_index, b.batch), ref)


@pytest.mark.parametrize("method", ["qat", "a2q"])
def test_row_chunks_change_nothing(method, tmp_path, monkeypatch):
    import qgnn.export.runtime as runtime

    m = node_model("gcn", method, 4, steps=1)
    if method == "a2q":
        scramble_a2q_widths(m)  # per-node tables: chunks must index them from their first row
    im = roundtrip(m, tmp_path)
    whole = im(D.x, D.edge_index)  # 160 nodes: below MIN_CHUNK_ROWS, one pass
    monkeypatch.setattr(runtime, "MIN_CHUNK_ROWS", 17)
    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 1)
    assert runtime.chunk_rows(D.x.size(1)) == 17
    assert torch.equal(roundtrip(m, tmp_path)(D.x, D.edge_index), whole)


def test_chunk_rows_bound_the_chunk_size():
    from qgnn.export.runtime import CHUNK_ELEMENTS, MIN_CHUNK_ROWS, chunk_rows

    assert chunk_rows(1433) * 1433 <= CHUNK_ELEMENTS  # wide inputs: a bounded buffer
    assert chunk_rows(64) == CHUNK_ELEMENTS // 64  # narrow inputs: large chunks, few calls
    assert chunk_rows(10**9) == MIN_CHUNK_ROWS


def test_backends_bit_identical(tmp_path):
    for name in ("gcn", "gat", "sage", "gin"):
        m = node_model(name, "qat", 8, steps=2)
        outs = [roundtrip(m, tmp_path, gemm=g, agg=a)(D.x, D.edge_index)
                for g in ("reference", "int_mm", "float") for a in ("reference", "scipy", "float_csr")]
        for o in outs[1:]:
            assert torch.equal(o, outs[0]), name


def test_per_channel_activations_fall_back_to_float(tmp_path):
    m = node_model("gcn", "qat", 8, steps=0)
    q = UniformQuantizer(8, granularity="channel")
    m.convs[0].set_quantizer("input", q)
    m.train()
    m(D.x, D.edge_index)  # calibrate the new quantizer
    m.eval()
    with torch.no_grad():
        ref = m(D.x, D.edge_index)
    im = roundtrip(m, tmp_path)
    assert_matches(im(D.x, D.edge_index), ref)
    assert im.paths["convs.0.xw"] == "float (fake-quant)"  # a per-channel scale sits inside Σ_k
    assert im.paths["convs.0.aggregate"] == "integer"


def test_float_slot_falls_back(tmp_path):
    m = node_model("gcn", "qat", 8, steps=1, slots=("input", "weight", "xw"))  # edge weights stay float
    with torch.no_grad():
        ref = m(D.x, D.edge_index)
    im = roundtrip(m, tmp_path)
    assert_matches(im(D.x, D.edge_index), ref)
    # float coefficients: the packed runtime sums codes times float edge weights in float32
    assert im.paths["convs.0.aggregate"] == "float32 sums of codes"


def test_graph_cache_follows_the_graph(tmp_path):
    m = node_model("gcn", "qat", 8, steps=1)
    im = roundtrip(m, tmp_path)
    first = im(D.x, D.edge_index)
    sub = D.edge_index[:, D.edge_index[0] < 80]  # another graph: the cached plan must not be reused
    for conv in m.convs:
        conv._cached_edge_index = None
        conv.cached = False
    with torch.no_grad():
        ref = m(D.x, sub)
    assert_matches(im(D.x, sub), ref)
    assert not torch.equal(im(D.x, sub), first)


def test_refuses_what_it_cannot_run():
    with pytest.raises(ConfigError, match="calibrated"):
        export_model(node_model("gcn", "qat", 8, steps=0))  # quantizers that never saw data
    m = node_model("gcn", "qat", 8, steps=1)
    m.convs[1].set_quantizer("message", UniformQuantizer(8))
    with pytest.raises(ConfigError, match="message"):
        export_model(m)
    m = node_model("gcn", "qat", 8, steps=1)
    m.convs[0].set_quantizer("input", RelaxedQuantizer((2, 4)))
    with pytest.raises(ConfigError, match="cannot be exported"):
        export_model(m)
    from qgnn.models import build_model

    with pytest.raises(ConfigError, match="not quantized"):
        export_model(build_model("gcn", "node", 20, 4))


def test_input_checks(tmp_path):
    im = roundtrip(node_model("gcn", "qat", 8, steps=1), tmp_path)
    with pytest.raises(ConfigError, match="node features"):
        im(D.x[:, :5], D.edge_index)
    with pytest.raises(ConfigError, match="edge_index"):
        im(D.x, D.edge_index[0])
