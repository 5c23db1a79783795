"""Per-node A2Q tables grouped by width (qgnn.export.tables.GroupedRows): every read equals one table at the
widest container, the bytes follow each node's own width, and the packed executor uses them end to end."""

from __future__ import annotations

import pytest
import torch
from qgnn_export_testutil import NODE_DATA, node_model, scramble_a2q_widths

from qgnn.export import IntModel, export_model
from qgnn.export.runtime import ActQuant
from qgnn.export.tables import Coefficients, CSRPlan, GroupedRows, QRows
from qgnn.testing.graphs import graph


def a2q_node(widths: torch.Tensor, signed: bool = False, seed: int = 0) -> ActQuant:
    """A per-node A2Q activation quantizer of the file format with the given widths."""
    g = torch.Generator().manual_seed(seed)
    n = widths.numel()
    tensors = {"s": torch.rand(n, generator=g) * 0.2 + 0.01, "w": widths.to(torch.int64)}
    qmin, qmax = (-128, 127) if signed else (0, 255)
    d = {"bits": 8, "qmin": qmin, "qmax": qmax, "binary": False, "granularity": "node", "kind": "a2q",
         "signed": signed, "scale": "s", "zero_point": None, "widths": "w"}
    return ActQuant(d, tensors, "test")


def _widest(q: ActQuant, x: torch.Tensor) -> QRows:
    u, s, z, gran = q.unsigned(x)
    t = QRows(x.size(0), x.size(1), q.span, gran, s, z)
    t.write(0, u, s, z)
    return t


def _grouped(q: ActQuant, x: torch.Tensor, chunk: int) -> GroupedRows:
    t = QRows.like(q, x.size(0), x[:chunk])
    assert isinstance(t, GroupedRows)
    for a in range(0, x.size(0), chunk):
        t.put(q, a, x[a:a + chunk])
    return t


def _plan(n: int, seed: int = 0, weighted: bool = False) -> CSRPlan:
    _, ei = graph(n - 3, 6 * n, 1, seed=seed, self_loops=False)  # the last 3 nodes isolated
    hub = torch.arange(1, n - 3)  # node 0: a hub, every other connected node points at it
    ei = torch.cat([ei, torch.stack([hub, torch.zeros_like(hub)])], 1)
    values = torch.rand(ei.size(1), generator=torch.Generator().manual_seed(seed)) if weighted else None
    return CSRPlan(ei[0], ei[1], n, values)


@pytest.mark.parametrize("signed", [False, True])
def test_grouped_reads_equal_the_widest_table(signed):
    n, c = 70, 13  # channels not a multiple of 8 (sub-byte rows)
    lo = 2 if signed else 1
    widths = torch.randint(lo, 9, (n,), generator=torch.Generator().manual_seed(1))
    q = a2q_node(widths, signed)
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(2)) * 3
    ref, t = _widest(q, x), _grouped(q, x, chunk=16)
    assert len(t.groups) == 3 and {sub.bits for sub in t.groups} == {2, 4, 8}
    for a, b in ((0, n), (5, 37), (60, 70), (3, 3)):
        assert torch.equal(t.codes(a, b), ref.codes(a, b))
        torch.testing.assert_close(t.dequant(a, b), ref.dequant(a, b), rtol=0, atol=0)
        for got, want in zip(t.row_params(a, b), ref.row_params(a, b), strict=True):
            assert torch.equal(got, want)
        out = torch.empty((b - a, t.code_width(True)), dtype=torch.uint8)
        assert torch.equal(t.codes_into(a, b, out), ref.codes(a, b))


@pytest.mark.parametrize(("mode", "weighted"), [("sum", False), ("sum", True), ("mean", False)])
def test_grouped_aggregation_equals_the_widest_table(mode, weighted):
    n, c = 90, 10
    widths = torch.randint(1, 9, (n,), generator=torch.Generator().manual_seed(3))
    q = a2q_node(widths)
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(4))
    ref, t = _widest(q, x), _grouped(q, x, chunk=32)
    plan = _plan(n, weighted=weighted)  # (a mean aggregation takes no edge weights)
    for a, b in ((0, n), (0, 1), (17, 64), (87, 90)):  # the hub, a middle chunk, the isolated nodes
        torch.testing.assert_close(t.aggregate(plan, a, b, mode), ref.aggregate(plan, a, b, mode),
                                   rtol=1e-5, atol=1e-5)
    assert t.aggregate(plan, 87, 90, mode).abs().sum() == 0  # isolated nodes sum nothing
    coef = Coefficients(torch.rand(plan.indices.numel(), generator=torch.Generator().manual_seed(5)), 0.5)
    torch.testing.assert_close(t.aggregate(plan, 0, n, "sum", coef=coef), ref.aggregate(plan, 0, n, "sum", coef=coef),
                               rtol=1e-5, atol=1e-5)
    assert not t.exact(plan)
    assert len(plan.__dict__["_group_splits"]) == 1  # one split per plan and grouping, reused by every chunk


def test_grouped_bytes_follow_each_nodes_width():
    n, c = 1000, 64
    widths = torch.full((n,), 2)
    widths[:100] = 4
    widths[:10] = 6  # a few wide nodes: one table would store every node at 8 bits
    q = a2q_node(widths)
    x = torch.randn(n, c)
    ref, t = _widest(q, x), _grouped(q, x, chunk=256)
    codes = sum(sub.rows.numel() for sub in t.groups)
    assert codes < 0.4 * ref.rows.numel()
    assert t.nbytes() < 0.5 * ref.nbytes()
    assert torch.equal(t.codes(0, n), ref.codes(0, n))


def test_one_container_or_per_row_groups_keep_one_table():
    x = torch.randn(20, 4)
    assert isinstance(QRows.like(a2q_node(torch.randint(3, 5, (20,))), 20, x), QRows)  # all in 4-bit rows
    assert not GroupedRows.applies(a2q_node(torch.randint(1, 9, (20,))), 19)  # another graph's row count
    q = a2q_node(torch.randint(1, 9, (20,)))
    q.granularity = "nn"  # widths picked per row from the data: one table at the widest
    assert not GroupedRows.applies(q, 20)


def test_empty_graph_and_empty_groups():
    widths = torch.tensor([2, 8, 2, 8])
    q = a2q_node(widths)
    x = torch.randn(4, 5)
    t = _grouped(q, x, chunk=4)
    plan = CSRPlan(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 4)
    assert torch.equal(t.aggregate(plan, 0, 4), torch.zeros(4, 5))
    assert {sub.bits for sub in t.groups} == {2, 8}  # no 4-bit node: no 4-bit group


@pytest.mark.parametrize("name", ["gcn", "sage", "gin", "graphconv"])
def test_packed_a2q_models_run_on_grouped_tables(name, monkeypatch):
    m = node_model(name, "a2q", 4)
    scramble_a2q_widths(m)
    tensors, desc = export_model(m)
    im, ref_model = IntModel(tensors, desc), IntModel(tensors, desc, packed=False)
    made = []
    init = GroupedRows.__init__
    monkeypatch.setattr(GroupedRows, "__init__", lambda self, *a, **k: (made.append(self), init(self, *a, **k))[1])
    d = NODE_DATA.data
    out, ref = im(d.x, d.edge_index), ref_model(d.x, d.edge_index)
    assert made, "no per-node table was grouped"
    assert float((out.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.999
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
