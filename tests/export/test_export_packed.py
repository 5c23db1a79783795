"""The packed executor (qgnn.export.packed): node models run on packed code tables, chunk by chunk, and give
what the per-layer integer runtime (``IntModel(..., packed=False)``) gives: the same predictions on
>= 99.9 % of nodes and logits within float rounding (a tie flip of a later quantizer may move a logit by
one step: the bound on the largest difference is loose, the one on the median tight, as
qgnn_export_testutil.assert_matches). Graphs with an isolated node and a hub; prepare / run; what falls
back to the per-layer path; the tables' packed sizes."""

from __future__ import annotations

import functools
import gc
import math
import weakref

import pytest
import torch
from qgnn_export_testutil import NODE_DATA, graph_batches, graph_model, node_model, scramble_a2q_widths

import qgnn.export.tables as packed_mod  # the chunk sizes the packed ops read
from qgnn.errors import ConfigError
from qgnn.export import IntModel, export_model
from qgnn.export.packed import QRows
from qgnn.kernels.cpu.fbgemm import fbgemm_available, fbgemm_linear_exact
from qgnn.kernels.intops import exact_backend
from qgnn.kernels.reference.rowwise import row_bytes
from qgnn.methods.config import ALL_SLOTS
from qgnn.quant import UniformQuantizer

D = NODE_DATA.data
N = D.num_nodes
ISOLATED, HUB = 5, 7
MIN_AGREEMENT = 0.999


def awkward_graph() -> torch.Tensor:
    """NODE_DATA's graph with node ISOLATED cut off and node HUB joined to every other node both ways."""
    ei = D.edge_index
    ei = ei[:, (ei[0] != ISOLATED) & (ei[1] != ISOLATED)]
    others = torch.tensor([j for j in range(N) if j not in (ISOLATED, HUB)])
    spokes = torch.stack([others, torch.full_like(others, HUB)])
    return torch.cat([ei, spokes, spokes.flip(0)], 1)


GRAPH = awkward_graph()


def int_models(m, **kw) -> tuple[IntModel, IntModel]:
    """(packed, per-layer) integer models of the fake-quant model ``m``."""
    tensors, desc = export_model(m)
    return IntModel(tensors, desc, **kw), IntModel(tensors, desc, packed=False, **kw)


def assert_agrees(out: torch.Tensor, ref: torch.Tensor, max_rel: float = 2e-2) -> None:
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean()
    assert float(agree) >= MIN_AGREEMENT, f"predictions agree on {float(agree):.4f} of nodes"
    rel = (out - ref).abs() / ref.abs().max().clamp(min=1e-6)
    assert float(rel.median()) < 1e-6 and float(rel.max()) < max_rel, (float(rel.median()), float(rel.max()))


KINDS = ("gcn", "sage", "gin", "gat", "graphconv")
CASES = [(name, method, bits) for name in KINDS
         for method, bits in (("qat", 8), ("qat", 4), ("lsq", 4), ("dq", 4), ("a2q", 4), ("qat", 2), ("qat", 1))
         if (name, method) != ("gat", "a2q")]  # per-node X·W scales: GAT's per-layer path (test below)


@pytest.mark.parametrize(("name", "method", "bits"), CASES)
def test_packed_equals_per_layer_runtime(name, method, bits):
    m = node_model(name, method, bits)
    if method == "a2q":
        scramble_a2q_widths(m)  # per-node widths that really differ
    im, ref_model = int_models(m)
    assert ref_model.packed is None and im.packed is not None, im.packed_why
    calls = spy_on(im)
    out = im(D.x, GRAPH)
    assert calls == [1]  # __call__ ran the packed executor
    ref = ref_model(D.x, GRAPH)
    assert_agrees(out, ref)
    # the same ops as the per-layer runtime, the same paths (per-node scales, A2Q, stay inside the sums)
    if method != "a2q":
        assert set(ref_model.paths.values()) == {"int8 x int8 -> int32", "integer"}, ref_model.paths
    assert im.paths == packed_paths(ref_model.paths)
    # on the training graph too
    assert_agrees(im(D.x, D.edge_index), ref_model(D.x, D.edge_index))


def packed_paths(per_layer: dict[str, str]) -> dict[str, str]:
    """The packed executor's paths for the per-layer runtime's: the same ops and labels, except that an
    aggregation the per-layer runtime does in float on dequantized values is a float32 sum of the codes."""
    return {k: "float32 sums of codes" if k.endswith(".aggregate") and v == "float (fake-quant)" else v
            for k, v in per_layer.items()}


def spy_on(im: IntModel) -> list[int]:
    """Count the packed executor's forwards (a list holding the count)."""
    calls = [0]
    run = im.packed.run

    def counted(prepared):
        calls[0] += 1
        return run(prepared)

    im.packed.run = counted
    return calls


@pytest.mark.parametrize("name", KINDS)
def test_prepare_and_run_equal_call(name):
    im, _ = int_models(node_model(name, "qat", 4))
    out = im(D.x, GRAPH)
    paths = dict(im.paths)
    prepared = im.prepare(D.x, GRAPH)
    im.paths = {}
    assert torch.equal(im.run(prepared), out)
    assert torch.equal(im.run(prepared), out)  # a forward leaves the prepared graph and codes as they were
    assert im.paths == paths
    assert isinstance(prepared["x"], QRows)


def test_float_features_can_be_freed_after_prepare():
    im, ref_model = int_models(node_model("sage", "qat", 4))
    x, ei = D.x.clone(), GRAPH.clone()
    alive_x, alive_ei = weakref.ref(x), weakref.ref(ei)
    prepared = im.prepare(x, ei)
    del x, ei
    gc.collect()
    assert alive_x() is None, "the prepared state (or the model) still holds the float features"
    assert alive_ei() is None, "the prepared state (or the model) still holds edge_index"
    assert_agrees(im.run(prepared), ref_model(D.x, GRAPH))


@pytest.mark.parametrize(("name", "method", "bits"), [("gcn", "qat", 4), ("sage", "qat", 2), ("gin", "qat", 2),
                                                      ("sage", "a2q", 4), ("gin", "qat", 8), ("gat", "qat", 4)])
def test_chunks_change_nothing(name, method, bits, monkeypatch):
    m = node_model(name, method, bits)
    if method == "a2q":
        scramble_a2q_widths(m)  # per-node tables: chunks must index them from their first row
    im, _ = int_models(m)
    whole = im(D.x, GRAPH)
    # 160 = 3 · 53 + 1: a last aggregation chunk of one row; GEMM chunks of another size
    monkeypatch.setattr(packed_mod, "row_chunk", lambda channels: 37)
    monkeypatch.setattr(packed_mod, "target_chunk", lambda channels: 53)
    im, _ = int_models(m)
    assert torch.equal(im(D.x, GRAPH), whole)


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("bits", [4, 2])
def test_large_graph_with_a_hub(name, bits):
    """The chunk sizes as shipped: over 100,000 nodes, a last aggregation chunk of one row for the hidden
    layer (64 channels, build_model's default), node 0 the target of every other node, plus random edges."""
    g = torch.Generator().manual_seed(bits)
    step = packed_mod.target_chunk(64)
    n = (100_000 // step + 1) * step + 1
    x = D.x[torch.randint(0, N, (n,), generator=g)] * (0.5 + torch.rand(n, 1, generator=g))
    others = torch.arange(1, n)
    ei = torch.cat([torch.stack([others, torch.zeros_like(others)]), torch.randint(0, n, (2, 3 * n), generator=g)], 1)
    im, ref_model = int_models(node_model(name, "qat", bits))
    out = im(x, ei)
    assert_agrees(out, ref_model(x, ei))
    # GAT at 4 bits: 100,000 attention codes of up to 15 times codes of up to 15 can pass 2^24, so its
    # float32 sum is no longer certainly the integer one, and says so
    assert set(im.paths) == set(ref_model.paths)
    for k, v in im.paths.items():
        assert v == ref_model.paths[k] or (k.endswith(".aggregate") and v == "float32 sums of codes"), (k, v)


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_single_node_and_edgeless_graphs(name, bits):
    im, ref_model = int_models(node_model(name, "qat", bits))
    no_edges = torch.zeros((2, 0), dtype=torch.long)
    for x, ei in ((D.x[:1], no_edges), (D.x[:1], torch.zeros((2, 1), dtype=torch.long)), (D.x, no_edges)):
        out = im(x, ei)
        assert im.packed is not None and out.shape == (x.size(0), NODE_DATA.num_classes)
        assert_agrees(out, ref_model(x, ei))


VARIANTS = {  # QuantConfig fields of each variant
    "8 then 2 bits": {"overrides": {"convs.1": {"bits": 2}}},  # tables of two containers in one model
    "every slot": {"slots": tuple(s for s in ALL_SLOTS if s != "message")},  # messages cannot be exported
    "per-tensor weights": {"options": {"weight_granularity": "tensor"}},
}


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_quantizer_variants(name, variant):
    m = node_model(name, "qat", 8 if variant == "8 then 2 bits" else 4, **VARIANTS[variant])
    im, ref_model = int_models(m)
    assert im.packed is not None, im.packed_why
    if variant == "8 then 2 bits":
        assert [c.q["input"].bits for c in im.convs] == [8, 2]
    if variant == "every slot":
        assert all(c.q.get("aggr") is not None and c.q.get("output") is not None for c in im.convs)
    assert_agrees(im(D.x, GRAPH), ref_model(D.x, GRAPH))
    assert im.paths == packed_paths(ref_model.paths)


def test_float_edge_coefficients():
    m = node_model("gcn", "qat", 8, slots=("input", "weight", "xw"))  # GCN's normalised weights stay float
    im, ref_model = int_models(m)
    assert_agrees(im(D.x, GRAPH), ref_model(D.x, GRAPH))
    assert ref_model.paths["convs.0.aggregate"] == "float (fake-quant)"
    assert im.paths["convs.0.aggregate"] == "float32 sums of codes"


def test_a_new_or_edited_graph_rebuilds_the_plans():
    m = node_model("gcn", "qat", 4)
    im, _ = int_models(m)
    ei = GRAPH.clone()
    im(D.x, ei)
    ei[1, :40] = ISOLATED  # edited in place: the cached plan must not be reused
    fresh, _ = int_models(m)
    assert torch.equal(im(D.x, ei), fresh(D.x, ei))
    assert torch.equal(im(D.x, D.edge_index), fresh(D.x, D.edge_index))


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("layer", [0, 1])
def test_per_channel_activations(name, layer):
    m = node_model(name, "qat", 8, steps=0)
    m.convs[layer].set_quantizer("input", UniformQuantizer(8, granularity="channel"))
    m.train()
    m(D.x, D.edge_index)  # calibrate
    m.eval()
    im, ref_model = int_models(m)
    assert im.packed is not None, im.packed_why
    assert_agrees(im(D.x, GRAPH), ref_model(D.x, GRAPH))


def test_packed_backends():
    m = node_model("gin", "qat", 4)
    tensors, desc = export_model(m)
    ref = IntModel(tensors, desc, packed=False)(D.x, GRAPH)
    fallback = exact_backend()[0]
    auto_lin = ("fbgemm" if fbgemm_linear_exact()[0] else
                f"fbgemm where a layer's codes cannot saturate it, else {fallback}" if fbgemm_available()[0]
                else fallback)
    for gemm, agg in (("reference", "reference"), ("int_mm", "auto"), ("float", "auto"), ("auto", "reference"),
                      ("auto", "auto")):
        im = IntModel(tensors, desc, gemm=gemm, agg=agg)
        assert_agrees(im(D.x, GRAPH), ref)
        lin = auto_lin if gemm == "auto" else gemm
        aggr = ("fbgemm" if fbgemm_available()[0] else "reference") if agg == "auto" else agg
        k = im.packed.kernels()  # with "auto", also the float-out GEMM choices measured in this process
        assert {key: k[key] for key in ("linear", "aggregate")} == {"linear": lin, "aggregate": aggr}
        assert set(k) <= {"linear", "aggregate"} | ({"linear_float_out", "linear_small_layers"} if gemm == "auto"
                                                     else set())
        assert set(im.paths.values()) == {"int8 x int8 -> int32", "integer"}, im.paths


def test_per_node_scales_use_the_exact_fallback():
    im, _ = int_models(node_model("gcn", "a2q", 4, steps=2))
    assert im.packed.kernels()["linear"].endswith(f"{exact_backend()[0]} (per-node scales)")


# --------------------------------------------------------------------------------------------------
# what falls back, what is refused
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "quant"), [("a2q", {}), ("qat", {"slots": ("input", "weight", "att")})])
def test_gat_without_a_per_tensor_xw_falls_back(method, quant):
    # GAT's packed path stores X·W as per-tensor codes: per-node (A2Q) or float X·W run the per-layer path
    m = node_model("gat", method, 4, **quant)
    tensors, desc = export_model(m)
    im = IntModel(tensors, desc)
    assert im.packed is None and "GAT without a per-tensor quantized X·W" in im.packed_why
    out = im(D.x, GRAPH)
    assert out.shape == (N, NODE_DATA.num_classes)
    assert torch.equal(im.run(im.prepare(D.x, GRAPH)), out)  # prepare keeps the inputs, run calls the layers
    with pytest.raises(ConfigError, match="GAT"):
        IntModel(tensors, desc, packed=True)


@pytest.mark.parametrize(("name", "method", "bits", "readout_norm"),
                         [("gin", "qat", 4, False), ("gin", "qat", 8, True), ("gcn", "qat", 8, False),
                          ("gin", "dq", 4, True)])
def test_graph_models_run_packed(name, method, bits, readout_norm):
    # graph-level models: each layer's chunks are pooled as they are produced; the result equals the
    # per-layer runtime's (which pools the whole layer) up to float rounding
    m = graph_model(name, method, bits, readout_norm=readout_norm)
    tensors, desc = export_model(m)
    im, ref = IntModel(tensors, desc), IntModel(tensors, desc, packed=False)
    assert type(im.packed).__name__ == "PackedGraphModel"
    outs, refs = [], []
    for b in graph_batches(20):
        outs.append(im(b.x, b.edge_index, b.batch))
        refs.append(ref(b.x, b.edge_index, b.batch))
        assert torch.equal(im.run(im.prepare(b.x, b.edge_index, b.batch)), outs[-1])
    out, r = torch.cat(outs), torch.cat(refs)
    assert float((out.argmax(1) == r.argmax(1)).float().mean()) >= 0.999
    assert float(((out - r).abs() / r.abs().max()).max()) < 2e-2
    assert "int8 x int8 -> int32" in set(im.paths.values()) and any(k.startswith("heads.") for k in im.paths)


def test_graph_model_with_a2q_groups_runs_packed():
    # graph tasks take A2Q's nearest-neighbour groups (per-node tables are transductive)
    m = graph_model("gin", "a2q", 4, options={"node_strategy": "nn"})
    scramble_a2q_widths(m, seed=1)
    tensors, desc = export_model(m)
    im, ref = IntModel(tensors, desc), IntModel(tensors, desc, packed=False)
    assert im.packed is not None
    for b in graph_batches(20):
        out, r = im(b.x, b.edge_index, b.batch), ref(b.x, b.edge_index, b.batch)
        assert torch.equal(out.argmax(1), r.argmax(1))
        assert float(((out - r).abs() / r.abs().max()).max()) < 2e-2


def test_graph_model_on_an_empty_batch_and_edgeless_graphs():
    m = graph_model("gin", "qat", 8)
    tensors, desc = export_model(m)
    im, ref = IntModel(tensors, desc), IntModel(tensors, desc, packed=False)
    b = graph_batches(20)[0]
    no_edges = b.edge_index[:, :0]
    assert torch.allclose(im(b.x, no_edges, b.batch), ref(b.x, no_edges, b.batch), rtol=1e-4, atol=1e-4)
    x0 = b.x[:0]
    out = im(x0, no_edges, torch.zeros(0, dtype=torch.long))
    assert out.shape == (1, desc["num_classes"]) and bool(torch.isfinite(out).all())


def test_per_layer_backend_names_keep_the_per_layer_path():
    tensors, desc = export_model(node_model("gcn", "qat", 8))
    im = IntModel(tensors, desc, gemm="float", agg="scipy")
    assert im.packed is None and "per-layer path" in im.packed_why
    with pytest.raises(ConfigError, match="per-layer path"):
        IntModel(tensors, desc, gemm="float", agg="float_csr", packed=True)
    assert IntModel(tensors, desc, gemm="float").packed is not None  # the exact float GEMM: both paths have it


def test_per_node_tables_refuse_another_graph_size():
    m = node_model("sage", "a2q", 4, steps=2)
    im, _ = int_models(m)
    assert im.packed is not None
    x = torch.cat([D.x, D.x[:1]])
    with pytest.raises(ConfigError, match="per-node"):
        im(x, D.edge_index)


# --------------------------------------------------------------------------------------------------
# the tables are packed
# --------------------------------------------------------------------------------------------------


@functools.cache
def input_quantizer(bits: int):
    """A per-tensor activation quantizer of ``bits`` bits, as the runtime reads it from a file."""
    tensors, desc = export_model(node_model("gin", "qat", bits))
    q = IntModel(tensors, desc).convs[1].q["input"]
    assert q.granularity == "tensor" and q.bits == bits
    return q


@pytest.mark.parametrize(("bits", "container"), [(8, 8), (5, 8), (4, 4), (3, 4), (2, 2), (1, 2)])
@pytest.mark.parametrize("c", [13, 20, 64])
def test_table_bytes(bits, container, c):
    q = input_quantizer(bits)
    x = torch.rand((57, c)) * 3
    table = QRows.encode(q, x)
    assert table.bits == container and table.rows.dtype == torch.uint8
    assert table.rows.shape == (57, math.ceil(c * container / 8) + (8 if container == 8 else 4))
    assert table.rows.shape[1] == row_bytes(c, container)
    assert table.nbytes() == table.rows.numel() + 8  # one scale and one zero-point
    bare = QRows.encode(q, x, fields=False)
    code_bytes = math.ceil(c * container / 8)  # planar sub-byte rows: whole 32-bit words
    assert bare.rows.shape == (57, code_bytes if container == 8 else 4 * math.ceil(code_bytes / 4))
    # the codes are the quantizer's: dequantized, the table is the fake-quant value
    expect = q(x).dequant()
    assert torch.equal(table.dequant(0, 57), expect) and torch.equal(bare.dequant(0, 57), expect)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fake_quant_of_a_plain_grid_is_the_quantizer_s(bits):
    # the packed ops requantize chunks with ActQuant.fake: four in-place ops on a plain grid, which must be
    # the codes' dequantized value bit for bit (ties to even, both clamps, huge values, a row chunk's start)
    q = input_quantizer(bits)
    assert q.plain and q.s == float(q.scale.reshape(()))
    g = torch.Generator().manual_seed(bits)
    ties = (torch.arange(-40, 40, dtype=torch.float32) + 0.5) * q.s  # x / s lands on half-integers
    x = torch.cat([torch.randn(500, generator=g) * 4 * q.s * 2**bits, ties, torch.tensor([3e38, -3e38, 0.0, -0.0])])
    x = x.view(-1, 4)
    want = q(x, 7).dequant()
    assert torch.equal(q.fake(x, 7), want)
    y = x.clone()
    got = q.fake(y, 7, inplace=True)
    assert got.data_ptr() == y.data_ptr() and torch.equal(got, want)
    q.plain = False  # the general path: the codes, then their value
    assert torch.equal(q.fake(x, 7), want)


def test_four_bit_model_tables():
    im, _ = int_models(node_model("gin", "qat", 4))
    prepared = im.prepare(D.x, GRAPH)
    x = prepared["x"]
    c = NODE_DATA.num_features
    assert x.bits == 4 and x.rows.shape == (N, math.ceil(c / 2) + 4) and x.rows.dtype == torch.uint8
    assert x.nbytes() == N * (c // 2 + 4) + 8  # 14 bytes a row where float32 takes 80
    im, _ = int_models(node_model("gcn", "qat", 4))
    x = im.prepare(D.x, GRAPH)["x"]
    # GCN only multiplies X: the codes alone, planar rows of whole 32-bit words
    assert x.bits == 4 and x.rows.shape == (N, 4 * math.ceil(c / 8))


@pytest.mark.parametrize("bits", [8, 4])
def test_gemm_chunks_reach_the_kernel_without_copies(bits, monkeypatch):
    # GCN's input table: 8-bit codes live in a quint8 tensor's storage and every GEMM chunk is a view of it;
    # sub-byte codes are unpacked into one CodeBuffer for the layer, whose quint8 view the kernel reads
    from qgnn.export.packed_ops import _gemm_chunks

    monkeypatch.setattr(packed_mod, "row_chunk", lambda c: 7)  # several chunks, a short last one
    im, per_layer = int_models(node_model("gcn", "qat", bits))
    prepared = im.prepare(D.x, GRAPH)
    x = prepared["x"]
    assert (x.quantized is not None) == (bits == 8)
    base, seen = x.rows.data_ptr(), set()
    for start, end, u, qx, s, z in _gemm_chunks(x, 7):
        assert qx is not None and torch.equal(qx.int_repr(), u) and qx.q_zero_point() == int(z)
        assert qx.q_scale() == float(s)
        assert torch.equal(u[:, :x.channels], x.codes(start, end))
        if bits == 8:
            assert u.data_ptr() == base + start * x.rows.stride(0)  # a view of the table itself
        else:
            seen.add(u.data_ptr())  # the same buffer for every chunk
    assert bits == 8 or len(seen) == 1
    assert torch.equal(im.run(prepared).argmax(1), per_layer(D.x, GRAPH).argmax(1))


def test_gat_head_bags_index_the_head_interleaved_table():
    from qgnn.export.packed_ops import PackedGAT

    ptr = torch.tensor([0, 2, 2, 3], dtype=torch.int32)  # target 1 has no in-edge
    idx = torch.tensor([4, 1, 0], dtype=torch.int32)
    offsets, indices = PackedGAT._head_bags(ptr, idx, heads=2, n=5)
    # head-major bags: (head 0: targets 0, 1, 2), (head 1: targets 0, 1, 2); row j · heads + k
    assert offsets.tolist() == [0, 2, 2, 3, 5, 5, 6] and indices.tolist() == [8, 2, 0, 9, 3, 1]
    assert offsets.dtype == indices.dtype == torch.int32
    offsets, indices = PackedGAT._head_bags(ptr, idx, heads=8, n=2**28)  # 2^31 rows: int32 would overflow
    assert offsets.dtype == indices.dtype == torch.int64 and int(indices.max()) == 4 * 8 + 7
