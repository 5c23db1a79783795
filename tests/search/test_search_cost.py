"""Cost model: BitOPs counted by hand, bytes, average bits, hooks and warnings.

Quantized layers follow the contract of qgnn.nn (a ``quant`` ModuleDict of slot -> Quantizer on a
subclass of the float layer). The cost model only reads that dict, so most tests attach one to plain PyG
layers (``_attach``); ``test_real_quantized_layers_*`` runs on qgnn.nn's layers when they exist.
"""

import json
import warnings

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv, LEConv

from qgnn.models import GAT, GCN, SAGE, GINGraph
from qgnn.quant import LSQQuantizer, UniformQuantizer
from qgnn.search import CostReport, cost_report, format_cost_table, model_bytes

F32 = 32 * 32


def _attach(layer: nn.Module, **bits) -> nn.Module:
    """Give a float layer quantizer slots (slot=bits); weight slots symmetric per tensor."""
    layer.quant = nn.ModuleDict({
        s: UniformQuantizer(b, symmetric=s in ("weight", "weight_root", "att")) for s, b in bits.items()
    })
    return layer


def _path_graph(n=5, loops=()):
    """Undirected path 0-1-...-(n-1): 2(n-1) directed edges, no self loops unless asked."""
    src = torch.arange(n - 1)
    ei = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])])
    if loops:
        ei = torch.cat([ei, torch.tensor([list(loops), list(loops)])], 1)
    g = torch.Generator().manual_seed(0)
    return Data(x=torch.randn(n, 3, generator=g), edge_index=ei)


# ----------------------------------------------------------------------------------------------- GCN
def test_gcn_fp32_bitops_by_hand():
    d = _path_graph()  # N = 5, E = 8
    n, e = 5, 8
    model = GCN(3, 4, 2, num_layers=2, dropout=0.0)
    r = cost_report(model, d)
    macs = (n * 3 * 4 + (e + n) * 4) + (n * 4 * 2 + (e + n) * 2)  # N·in·out + (E+N)·out per layer
    assert r.macs == macs == 178
    assert r.bitops == r.bitops_fp32 == macs * F32
    assert r.bitops_reduction == 1.0
    assert [layer["shape"]["edges"] for layer in r.layers] == [e + n, e + n]
    assert r.avg_bits == r.avg_bits_weights == r.avg_bits_activations == 32.0


def test_gcn_self_loops_already_present_are_not_added_twice():
    d = _path_graph(loops=(0, 3))  # 8 edges + 2 loops; gcn_norm keeps one loop per node
    r = cost_report(GCN(3, 4, 2, cached=False), d)
    assert [layer["shape"]["edges"] for layer in r.layers] == [8 + 5, 8 + 5]


def test_gcn_quantized_slots_exact_integer():
    d = _path_graph()
    n, e = 5, 8
    model = GCN(3, 4, 2, num_layers=2, dropout=0.0)
    _attach(model.convs[0], input=8, weight=4, xw=8, edge=4)
    _attach(model.convs[1], input=4, weight=4)  # xw, edge float: the aggregation is 32 x 32
    r = cost_report(model, d)
    l1 = n * 3 * 4 * 8 * 4 + (e + n) * 4 * 8 * 4
    l2 = n * 4 * 2 * 4 * 4 + (e + n) * 2 * 32 * 32
    assert (l1, l2) == (3584, 27264)
    assert r.bitops == l1 + l2 and isinstance(r.bitops, int)
    assert r.bitops_fp32 == 178 * F32
    assert r.bitops_reduction == pytest.approx(178 * F32 / (l1 + l2))
    ops = {o["op"]: o for o in r.layers[0]["ops"]}
    assert (ops["aggregate"]["b_a"], ops["aggregate"]["b_w"]) == (8, 4)
    # a disabled quantizer is a float slot
    model.convs[0].quant["xw"].enabled = False
    assert cost_report(model, d).bitops == l1 - (e + n) * 4 * 8 * 4 + (e + n) * 4 * 32 * 4 + l2


def test_gcn_unnormalized_unweighted_adjacency_counts_one_bit():
    d = _path_graph()
    conv = _attach(GCNConv(3, 4, normalize=False), input=4, weight=4, xw=4)
    r = cost_report(conv, d)  # a bare layer is a model too
    assert r.bitops == 5 * 3 * 4 * 16 + 8 * 4 * 4 * 1
    assert r.bitops_fp32 == 5 * 3 * 4 * F32 + 8 * 4 * 32 * 1


def test_cached_gcn_reports_the_graph_it_cached():
    d = _path_graph()
    model = GCN(3, 4, 2, cached=True).eval()
    model(d.x, d.edge_index)  # fills the cache with the 8-edge graph
    fewer = Data(x=d.x, edge_index=d.edge_index[:, :2])
    r = cost_report(model, fewer)
    assert [layer["shape"]["edges"] for layer in r.layers] == [13, 13]
    r2 = cost_report(GCN(3, 4, 2, cached=True), fewer)
    assert [layer["shape"]["edges"] for layer in r2.layers] == [2 + 5, 2 + 5]


# ----------------------------------------------------------------------------------------------- GAT / SAGE
def test_gat_fp32_and_quantized_by_hand():
    d = _path_graph()
    n, e = 5, 8
    model = GAT(3, 2, 2, num_layers=2, heads=2, out_heads=1)
    r = cost_report(model, d)
    l1 = n * 3 * 4 + 2 * n * 4 + (e + n) * 4  # transform, attention logits, aggregate (heads·out = 4)
    l2 = n * 4 * 2 + 2 * n * 2 + (e + n) * 2
    assert r.bitops == r.bitops_fp32 == (l1 + l2) * F32
    _attach(model.convs[0], input=8, weight=4, xw=8, att=4, attention=8)
    r = cost_report(model, d)
    q1 = n * 3 * 4 * 8 * 4 + 2 * n * 4 * 8 * 4 + (e + n) * 4 * 8 * 8
    assert r.bitops == q1 + l2 * F32


def test_sage_mean_by_hand():
    d = _path_graph()
    n, e = 5, 8
    model = SAGE(3, 4, 2, num_layers=2, dropout=0.0)
    r = cost_report(model, d)

    def layer(fin, fout, b_in=32, b_w=32, b_root=32, b_aggr=32):
        return (e * fin * b_in * 1  # sum over a 0/1 adjacency: b_w = 1 in both counts
                + n * fin * F32  # x 1/deg
                + n * fin * fout * b_aggr * b_w  # lin_l on the mean
                + n * fin * fout * b_in * b_root)  # lin_r on the root

    assert r.bitops == r.bitops_fp32 == layer(3, 4) + layer(4, 2)
    _attach(model.convs[1], input=4, weight=2, weight_root=4, aggr=8)
    r = cost_report(model, d)
    assert r.bitops == layer(3, 4) + layer(4, 2, b_in=4, b_w=2, b_root=4, b_aggr=8)
    assert r.bitops_fp32 == layer(3, 4) + layer(4, 2)


# ----------------------------------------------------------------------------------------------- GIN graph model
def _batch():
    g = torch.Generator().manual_seed(1)
    graphs = []
    for n, e in ((4, 3), (6, 5), (3, 0)):
        src = torch.arange(e)
        ei = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])]) if e else torch.empty(2, 0)
        graphs.append(Data(x=torch.randn(n, 5, generator=g), edge_index=ei.long()))
    return Batch.from_data_list(graphs)


def test_gin_graph_fp32_bitops_and_bytes_by_hand():
    b = _batch()
    n, e, graphs = 13, 16, 3
    fin, hidden, out, layers = 5, 8, 3, 2
    model = GINGraph(fin, hidden, out, num_layers=layers, dropout=0.0)
    r = cost_report(model, b)
    macs_1 = 0
    for i in range(layers):
        d = fin if i == 0 else hidden
        # sum over neighbours and the (1 + eps) x_i term: additions over a 0/1 adjacency (b_w = 1)
        macs_1 += e * d + n * d
    macs_32 = sum(n * (fin if i == 0 else hidden) * hidden + n * hidden * hidden for i in range(layers))
    macs_32 += graphs * fin * out + layers * graphs * hidden * out  # pooled readout heads
    assert r.bitops_fp32 == r.bitops == macs_1 * 32 + macs_32 * F32
    assert r.macs == macs_1 + macs_32
    params = sum(p.numel() for p in model.parameters())
    bn = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
             if isinstance(m, nn.BatchNorm1d))
    assert r.model_bytes_fp32 == r.model_bytes == 4 * (params + bn)
    assert model_bytes(model) == (4 * (params + bn), 4 * (params + bn))


# ----------------------------------------------------------------------------------------------- bytes and bits
@pytest.mark.parametrize(
    "make_q, table_bytes",
    [
        (lambda: UniformQuantizer(4, symmetric=True), 4),  # one scale
        (lambda: LSQQuantizer(4, symmetric=True), 4),  # the learned step is the scale, not counted twice
        (lambda: UniformQuantizer(4, symmetric=True, granularity="channel", ch_axis=0), 8 * 4),
        (lambda: UniformQuantizer(4, symmetric=True, granularity="channel", ch_axis=0, num_channels=8), 8 * 4),
        (lambda: UniformQuantizer(4, symmetric=False, granularity="channel", ch_axis=0), 8 * 4 * 2),  # + zp
        (lambda: LSQQuantizer(4, symmetric=False, granularity="channel", ch_axis=0, learn_zero_point=True), 64),
    ],
)
def test_model_bytes_packed_weights_plus_tables(make_q, table_bytes):
    lin = nn.Linear(16, 8)
    lin.quant = nn.ModuleDict({"weight": make_q()})
    packed = 16 * 8 * 4 // 8
    assert model_bytes(lin) == (packed + table_bytes + 8 * 4, (16 * 8 + 8) * 4)


def test_activation_quantizer_tables_count_and_disabled_slots_do_not():
    lin = nn.Linear(16, 8)
    lin.quant = nn.ModuleDict({"weight": UniformQuantizer(2, symmetric=True), "input": UniformQuantizer(8)})
    assert model_bytes(lin)[0] == 16 * 8 * 2 // 8 + 4 + (4 + 4) + 8 * 4  # input: asymmetric scale + zp
    lin.quant["weight"].enabled = False
    lin.quant["input"].enabled = False
    assert model_bytes(lin) == ((16 * 8 + 8) * 4, (16 * 8 + 8) * 4)


def test_average_bits_by_hand():
    lin = nn.Linear(16, 8)
    lin.quant = nn.ModuleDict({"weight": UniformQuantizer(4, symmetric=True), "input": UniformQuantizer(8)})
    data = Data(x=torch.randn(10, 16), edge_index=torch.empty(2, 0, dtype=torch.long))
    r = cost_report(lin, data, forward=lambda m, d: m(d.x))
    w_bits = 16 * 8 * 4 + 8 * 32
    a_bits = 10 * 16 * 8
    assert r.avg_bits_weights == pytest.approx(w_bits / (16 * 8 + 8))
    assert r.avg_bits_activations == 8.0
    assert r.avg_bits == pytest.approx((w_bits + a_bits) / (16 * 8 + 8 + 10 * 16))
    assert r.bitops == 10 * 16 * 8 * 8 * 4
    assert r.compression == pytest.approx((16 * 8 + 8) * 4 / (64 + 4 + 8 + 32))


def test_per_element_bit_widths_count_at_their_mean():
    class PerNodeBits(nn.Module):  # A2Q-style: one width per node
        enabled = True
        symmetric = True
        bit_width = torch.tensor([2, 4, 4, 6])

    lin = nn.Linear(3, 2, bias=False)
    lin.quant = nn.ModuleDict({"input": PerNodeBits(), "weight": UniformQuantizer(8, symmetric=True)})
    r = cost_report(lin, Data(x=torch.randn(4, 3)), forward=lambda m, d: m(d.x))
    assert r.bitops == 4 * 3 * 2 * 4 * 8


# ----------------------------------------------------------------------------------------------- behaviour
def test_train_eval_flags_are_restored_per_module():
    d = _path_graph()
    model = GCN(3, 4, 2)
    model.train()
    model.convs[1].eval()  # e.g. a frozen part inside a training model
    before = [m.training for m in model.modules()]
    cost_report(model, d)
    assert [m.training for m in model.modules()] == before
    model.eval()
    cost_report(model, d)
    assert not any(m.training for m in model.modules())


def test_forward_runs_in_eval_mode_without_grad():
    seen = {}

    def forward(m, data):
        seen["training"], seen["grad"] = m.training, torch.is_grad_enabled()
        return m(data.x, data.edge_index)

    cost_report(GCN(3, 4, 2).train(), _path_graph(), forward=forward)
    assert seen == {"training": False, "grad": False}


class _Prompt(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x + self.token


class _Prompted(nn.Module):
    def __init__(self):
        super().__init__()
        self.prompt = _Prompt(3)
        self.conv = GCNConv(3, 4)
        self.other = LEConv(4, 2)  # a PyG layer qgnn has no facts for

    def forward(self, x, edge_index):
        return self.other(self.conv(self.prompt(x), edge_index), edge_index)


def test_unsupported_modules_warn_once_and_still_count_bytes():
    model = _Prompted()
    with pytest.warns(UserWarning, match="LEConv, _Prompt") as rec:
        r = cost_report(model, _path_graph())
    assert len([w for w in rec if "cost_report" in str(w.message)]) == 1
    assert r.unsupported == ["LEConv", "_Prompt"]
    assert [layer["name"] for layer in r.layers] == ["conv"]
    assert r.model_bytes_fp32 == 4 * sum(p.numel() for p in model.parameters())


def test_supported_models_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cost_report(GINGraph(5, 8, 3, num_layers=2), _batch())
        cost_report(SAGE(3, 4, 2), _path_graph())


def test_empty_graph():
    d = Data(x=torch.randn(4, 3), edge_index=torch.empty(2, 0, dtype=torch.long))
    r = cost_report(GCN(3, 4, 2, cached=False), d)
    assert [layer["shape"]["edges"] for layer in r.layers] == [4, 4]  # only the self loops GCN adds
    assert r.bitops == (4 * 3 * 4 + 4 * 4 + 4 * 4 * 2 + 4 * 2) * F32
    r = cost_report(SAGE(3, 4, 2), d)
    agg = [o for layer in r.layers for o in layer["ops"] if o["op"] == "aggregate"]
    assert [o["macs"] for o in agg] == [0, 0]
    assert cost_report(GAT(3, 2, 2, heads=2), d).bitops > 0


def test_module_called_twice_accumulates():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, edge_index):
            return self.lin(self.lin(x))

    r = cost_report(Twice(), _path_graph())
    assert r.layers[0]["calls"] == 2 and r.macs == 2 * 5 * 3 * 3


def test_to_dict_keys_json_and_table():
    model = GCN(3, 4, 2)
    _attach(model.convs[0], input=4, weight=4, xw=4, edge=4)
    r = cost_report(model, _path_graph())
    assert isinstance(r, CostReport)
    d = r.to_dict()
    assert set(d) == {"bitops", "bitops_fp32", "avg_bits", "model_bytes", "model_bytes_fp32", "bitops_reduction",
                      "bitops_reduction_linear", "compression", "avg_bits_weights", "avg_bits_activations", "per_layer"}
    assert json.loads(json.dumps(d)) == d
    assert d["bitops_reduction"] > 1 and d["compression"] > 1
    table = format_cost_table(r)
    assert "convs.0" in table and "aggregate" in table and "total" in table and "model bytes" in table


# ----------------------------------------------------------------------------------------------- real qgnn.nn
def _real_quant_layers():
    try:
        from qgnn.methods import QuantConfig, quantize_
        from qgnn.nn import QuantModule  # noqa: F401
    except (ImportError, AttributeError):
        pytest.skip("qgnn.nn quantized layers are not available yet")
    return QuantConfig, quantize_


def test_real_quantized_gcn_matches_hand_count():
    QuantConfig, quantize_ = _real_quant_layers()
    d = _path_graph()
    n, e = 5, 8
    model = GCN(3, 4, 2, dropout=0.0)
    quantize_(model, QuantConfig(method="qat", bits=8, weight_bits=4, slot_bits={"edge": 4}))
    r = cost_report(model, d)
    expected = 0
    for conv, (fin, fout) in zip(model.convs, [(3, 4), (4, 2)], strict=True):
        def b(slot, conv=conv):
            return conv.slot_bits(slot) or 32

        expected += n * fin * fout * b("input") * b("weight") + (e + n) * fout * b("xw") * b("edge")
    assert r.bitops == expected
    assert r.bitops_fp32 == 178 * F32
    # the layers record what they aggregated: the hooks must agree
    assert [layer["shape"]["edges"] for layer in r.layers] == [c._last_stats["num_edges"] for c in model.convs]
    # packed 4-bit weights + float biases; the quantizer tables come on top
    assert r.model_bytes - r.qparam_bytes == (3 * 4 + 4 * 2) * 4 // 8 + (4 + 2) * 4
    assert r.qparam_bytes > 0
    assert r.model_bytes_fp32 == 4 * sum(p.numel() for n, p in model.named_parameters() if ".quant." not in n)


@pytest.mark.parametrize("method", ["qat", "lsq", "dq"])
@pytest.mark.parametrize("name", ["gcn", "gat", "gin", "sage"])
def test_real_quantized_node_models_edges_match_layer_stats(name, method):
    QuantConfig, quantize_ = _real_quant_layers()
    from qgnn.models import build_model
    from qgnn.nn import QuantModule

    g = torch.Generator().manual_seed(0)
    d = Data(x=torch.randn(12, 6, generator=g), edge_index=torch.randint(0, 12, (2, 40), generator=g))
    model = build_model(name, "node", 6, 3)
    fp32 = cost_report(model, d)
    quantize_(model, QuantConfig(method=method, bits=4))
    r = cost_report(model, d)
    layers = {layer["name"]: layer for layer in r.layers}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, QuantModule) and "num_edges" in mod._last_stats and mod.GRAPH_LAYER:
            assert layers[mod_name]["shape"]["edges"] == mod._last_stats["num_edges"]
    assert r.bitops_fp32 == fp32.bitops_fp32  # quantizing changes widths, never MACs
    assert r.macs == fp32.macs
    assert r.model_bytes_fp32 == fp32.model_bytes_fp32  # quantizer parameters (LSQ steps) are not weights
    assert r.bitops < r.bitops_fp32 and r.avg_bits_weights < 32
