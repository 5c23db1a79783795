"""format_cost_table prints its reductions and the compression with qgnn.train.results.format_ratio, the one
ratio format of the CLI (``256x``, ``15.2x``, ``3.41x``), not a fixed two decimals."""

import re

from torch_geometric.data import Data

from qgnn.methods import QuantConfig, quantize_
from qgnn.models import GCN
from qgnn.search import cost_report, format_cost_table
from qgnn.testing import graph
from qgnn.train.results import format_ratio


def test_cost_table_ratios_use_format_ratio():
    x, ei = graph(n=20, e=60, f=128)
    model = GCN(128, 128, 4, dropout=0.0)  # wide enough for the weights to dominate the bytes
    quantize_(model, QuantConfig(method="qat", bits=2))  # 2-bit everywhere: reductions of 256x per op
    r = cost_report(model, Data(x=x, edge_index=ei))
    table = format_cost_table(r)
    total = next(line for line in table.splitlines() if line.startswith("| total"))
    assert total.rstrip(" |").endswith(format_ratio(r.bitops_fp32 / r.bitops))
    assert f"compression {format_ratio(r.compression)};" in table
    assert r.bitops_fp32 / r.bitops >= 100 and r.compression >= 10  # where format_ratio drops decimals
    assert not re.search(r"\d\.\d\dx", table)  # no ratio >= 10 with two decimals
