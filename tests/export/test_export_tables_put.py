"""QRows.put on a 4-bit per-tensor grid: the codes packed two to a byte from their float values (lo + 16 hi in
float, converted by the copy) give the bytes the general path (codes as uint8, then pack_fused_codes /
pack_rows) gives, in fused rows (columns 2j, 2j + 1) and planar rows (columns j, j + nb); odd widths and a
planar row with a padding column take the general path; chunks, ties, huge values and an empty chunk."""

from __future__ import annotations

import pytest
import torch
from qgnn_export_testutil import node_model

from qgnn.export import IntModel, export_model
from qgnn.export.tables import QRows


def _quantizer(bits: int = 4):
    tensors, desc = export_model(node_model("gin", "qat", bits))
    q = IntModel(tensors, desc).convs[1].q["input"]
    assert q.plain and q.bits == bits
    return q


@pytest.mark.parametrize("fields", [True, False])
@pytest.mark.parametrize("c", [64, 40, 24, 13, 7, 2])
def test_nibbles_from_float_equal_the_general_path(fields, c):
    q = _quantizer()
    g = torch.Generator().manual_seed(c + fields)
    n = 61
    x = torch.randn(n, c, generator=g) * q.s * 10
    x[0] = (torch.arange(c) - c // 2 + 0.5) * q.s  # ties to even
    x[1, :2] = torch.tensor([1e30, -1e30])
    fast = QRows.like(q, n, x, 0, fields)
    slow = QRows.like(q, n, x, 0, fields)
    assert fast.bits == 4
    for start in (0, 17, 40):
        end = {0: 17, 17: 40, 40: n}[start]
        fast.put(q, start, x[start:end].clone(), inplace=True)
        u, s, z, _ = q.unsigned(x[start:end], start)
        slow.write(start, u, s, z)
    fast.put(q, n, x[:0].clone())  # an empty chunk writes nothing
    assert torch.equal(fast.rows, slow.rows)
    assert torch.equal(fast.codes(0, n), slow.codes(0, n))
    nibbles = fast._put_nibbles(0, torch.zeros(1, c))
    planar_fits = 2 * fast.rows.size(1) == c
    assert nibbles == ((c % 2 == 0) if fields else planar_fits)
