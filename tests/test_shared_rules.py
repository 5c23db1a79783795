"""Rules with one home, used by several modules: the resume-state path (qgnn.train.outputs.state_path_for,
which qgnn.grid uses), BiGeaR's implied width (qgnn.train.rec.with_method_bits, used by the rec runner and by
qgnn.grid to resolve a cell as the runner will) and the name check of every command
(qgnn.train.config.check_names, whose method names come from the methods registry)."""

import pytest

from qgnn.errors import UnknownNameError
from qgnn.grid import Cell, fingerprint, resolved, state_path
from qgnn.methods import method_names
from qgnn.train import TrainConfig
from qgnn.train.config import check_names
from qgnn.train.outputs import state_path_for
from qgnn.train.rec import FIXED_BITS, with_method_bits


def test_the_grid_keeps_a_cell_state_where_the_runners_do(tmp_path):
    out = tmp_path / "cells" / "qat4.json"
    assert state_path(out) == state_path_for(out, None) == tmp_path / "cells" / "qat4.json.state.pt"
    assert state_path(str(out)) == state_path(out)


def _rec(method, bits=None):
    return TrainConfig(dataset="synthetic-rec", model="lightgcn", method=method, bits=bits,
                       quant={"pretrained": "fp32.ckpt"})


def test_bigear_without_bits_is_one_bit_in_the_runner_and_the_grid():
    assert FIXED_BITS == {"bigear": 1}
    cfg = _rec("BiGeaR")
    one = with_method_bits(cfg)
    assert one.bits == 1 and cfg.bits is None and one.quant == cfg.quant and one.quant is not cfg.quant
    assert with_method_bits(_rec("bigear", 2)).bits == 2  # a width given is kept (the runner then refuses it)
    assert with_method_bits(_rec("gnaq")).bits is None  # the other methods take the recipe's / resolve's width
    # the grid resolves a cell as the runner will: bits unset and bits 1 are the same cell
    assert resolved(Cell("b", cfg)).bits == 1
    assert fingerprint(Cell("b", cfg)) == fingerprint(Cell("b", _rec("bigear", 1)))
    assert resolved(Cell("g", _rec("gnaq", 2))).bits == 2


def test_check_names_takes_the_methods_from_the_registry():
    for name in method_names():
        check_names(TrainConfig(dataset="synthetic-node", method=name, bits=None if name == "fp32" else 4))
    with pytest.raises(UnknownNameError) as e:
        check_names(TrainConfig(dataset="synthetic-node", method="magic"))
    assert all(name in str(e.value) for name in method_names())
    with pytest.raises(UnknownNameError, match="recommendation method"):
        check_names(_rec("dq"))
    with pytest.raises(UnknownNameError, match="model"):
        check_names(TrainConfig(dataset="synthetic-node", model="lightgcn"))
