"""MixQ-GNN search pieces: relaxed quantizer, BitOPs penalty, bit assignment, the two-phase pipeline."""

import json
import math

import pytest
import torch

from qgnn.errors import ConfigError
from qgnn.methods import QuantConfig, quantize_
from qgnn.models import build_model
from qgnn.quant import RelaxedQuantizer, fake_quant
from qgnn.quant.primitives import calc_qparams
from qgnn.search import cost_report
from qgnn.search.assignment import BitAssignment
from qgnn.search.penalty import BitOpsPenalty
from qgnn.testing import graph


# ------------------------------------------------------------------------------------------- quantizer
def test_relaxed_forward_is_the_softmax_mixture_of_uniform_grids():
    torch.manual_seed(0)
    q = RelaxedQuantizer((2, 4, 8), observer="minmax")
    with torch.no_grad():
        q.alpha.copy_(torch.tensor([0.3, -1.0, 2.0]))
    x = torch.randn(20, 5)
    y = q(x)
    p = torch.softmax(q.alpha.detach(), 0)
    ref = 0
    for k, b in enumerate((2, 4, 8)):
        s, z = calc_qparams(x.min(), x.max(), b)
        ref = ref + p[k] * fake_quant(x, s, z, 0, 2 ** b - 1)
    torch.testing.assert_close(y, ref)
    assert float(q.expected_bits()) == pytest.approx(float((p * torch.tensor([2.0, 4.0, 8.0])).sum()))


def test_gradients_reach_alpha_and_x():
    q = RelaxedQuantizer((2, 4, 8))
    x = torch.randn(16, 4, requires_grad=True)
    (q(x) ** 2).sum().backward()
    assert q.alpha.grad is not None and q.alpha.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_alpha_gradient_matches_finite_differences():
    torch.manual_seed(1)
    q = RelaxedQuantizer((2, 4, 8), observer="minmax").double()
    x = torch.randn(10, 3, dtype=torch.float64)
    w = torch.randn(10, 3, dtype=torch.float64)
    (q(x) * w).sum().backward()
    analytic = q.alpha.grad.clone()
    eps = 1e-6
    for k in range(3):
        with torch.no_grad():
            q.alpha[k] += eps
            up = float((q(x) * w).sum())
            q.alpha[k] -= 2 * eps
            down = float((q(x) * w).sum())
            q.alpha[k] += eps
        assert analytic[k].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-8)


def test_gumbel_sampling_is_one_candidate_in_eval():
    q = RelaxedQuantizer((2, 8), observer="minmax", sampling="gumbel", init=8)
    x = torch.randn(12, 3)
    q.train()
    q(x)
    q.eval()
    s, z = calc_qparams(x.min(), x.max(), 8)
    torch.testing.assert_close(q(x), fake_quant(x, s, z, 0, 255))


@pytest.mark.parametrize("bad", [(), [0, 4], [4, 9], ["a"]])
def test_bad_candidate_sets_are_refused(bad):
    with pytest.raises(ConfigError):
        RelaxedQuantizer(bad)


def test_constant_and_empty_inputs_do_not_produce_nan():
    q = RelaxedQuantizer((2, 4, 8))
    assert torch.isfinite(q(torch.full((5, 3), 0.7))).all()
    assert torch.isfinite(q(torch.zeros(5, 3))).all()
    assert q(torch.zeros(0, 3)).shape == (0, 3)


# ------------------------------------------------------------------------------------------- penalty
def _mixq_gcn(lam=1.0, **options):
    torch.manual_seed(0)
    model = build_model("gcn", "node", 6, 3)
    return quantize_(model, QuantConfig(method="mixq", bits=8, options={"lambda": lam, **options}))


def _set_alphas(model, width):
    for m in model.modules():
        if isinstance(m, RelaxedQuantizer):
            with torch.no_grad():
                m.alpha.fill_(-1e4)
                m.alpha[m.candidates.index(width)] = 1e4


def test_penalty_equals_cost_model_when_alpha_is_one_hot():
    model = _mixq_gcn(lam=1.0)
    x, ei = graph(30, 90, 6, features="rand", undirected=True)
    model.train()
    model(x, ei)  # calibrates the observers
    _set_alphas(model, 4)
    model(x, ei)
    pen = model.mixq_penalty.penalty()
    fixed = quantize_(build_model("gcn", "node", 6, 3), QuantConfig(method="qat", bits=4))
    from torch_geometric.data import Data

    report = cost_report(fixed, Data(x=x, edge_index=ei))
    assert float(pen) == pytest.approx(report.bitops / report.bitops_fp32, rel=1e-6)


def test_penalty_gradient_lowers_expected_bits():
    model = _mixq_gcn(lam=1.0)
    x, ei = graph(30, 90, 6, features="rand", undirected=True)
    model.train()
    model(x, ei)
    model.mixq_penalty.penalty().backward()
    grads = [m.alpha.grad for m in model.modules() if isinstance(m, RelaxedQuantizer)]
    assert grads and all(g is not None for g in grads)
    for g in grads:
        # descending the gradient moves weight from the widest candidate to the narrowest
        assert g[-1] > 0 > g[0]


def test_penalty_is_zero_in_eval_and_rejects_non_finite_lambda():
    model = _mixq_gcn()
    x, ei = graph(30, 90, 6, features="rand", undirected=True)
    model.eval()
    model(x, ei)
    assert model.mixq_penalty.penalty() == 0.0
    for bad in (math.nan, math.inf, "0.1"):
        with pytest.raises(ConfigError, match="finite"):
            BitOpsPenalty(model, bad)


def test_memory_penalty_kind():
    model = _mixq_gcn(lam=1.0, penalty="memory")
    x, ei = graph(30, 90, 6, features="rand", undirected=True)
    model.train()
    model(x, ei)
    _set_alphas(model, 8)
    model(x, ei)
    assert 0 < float(model.mixq_penalty.penalty()) <= 8 / 32 + 1e-6


# ------------------------------------------------------------------------------------------- assignment
def test_argmax_assignment_survives_json_and_quantize_():
    model = _mixq_gcn()
    x, ei = graph(30, 90, 6, features="rand", undirected=True)
    model.train()
    model(x, ei)
    with torch.no_grad():
        model.convs[0].quant["xw"].alpha.copy_(torch.tensor([5.0, 0.0, 0.0]))  # 2 bits
        model.convs[1].quant["weight"].alpha.copy_(torch.tensor([0.0, 5.0, 0.0]))  # 4 bits
    a = BitAssignment.from_model(model)
    assert a.bits["convs.0"]["xw"] == 2 and a.bits["convs.1"]["weight"] == 4
    b = BitAssignment.from_dict(json.loads(a.to_json()))
    assert b == a
    fixed = quantize_(build_model("gcn", "node", 6, 3),
                      QuantConfig(method="qat", bits=8, overrides=b.to_overrides()))
    for name, slots in a.bits.items():
        layer = fixed.get_submodule(name)
        assert {s: layer.slot_bits(s) for s in slots} == slots


def test_assignment_naming_missing_modules_is_refused(tmp_path):
    a = BitAssignment({"convs.7": {"weight": 4}})
    with pytest.raises(ConfigError, match="convs"):
        quantize_(build_model("gcn", "node", 6, 3), QuantConfig(method="qat", overrides=a.to_overrides()))
    with pytest.raises(ConfigError, match="bits"):
        BitAssignment({"convs.0": {"weight": 12}})
    with pytest.raises(ConfigError, match="slot"):
        BitAssignment({"convs.0": {"wieght": 4}})
    bad = tmp_path / "a.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="a.json"):
        BitAssignment.load(bad)


# ------------------------------------------------------------------------------------------- pipeline
def test_search_pipeline_on_synthetic_graph(tmp_path, monkeypatch):
    from qgnn.data.synthetic import random_node_dataset
    from qgnn.search.mixq import SearchConfig, run_search
    from qgnn.train import TrainConfig, load_model
    from qgnn.train import runner as runner_mod

    ds = random_node_dataset(num_nodes=60, num_features=8, seed=0)
    monkeypatch.setattr(runner_mod, "load_for", lambda cfg, root=None: ds)
    monkeypatch.setattr(runner_mod, "_dataset_task", lambda name: "node")
    cfg = TrainConfig(dataset="synthetic", model="gcn", seeds=2, epochs=5)
    res = run_search(cfg, SearchConfig(lam=0.5, search_epochs=4), out=tmp_path / "s.json",
                     save=tmp_path / "s.ckpt", progress=False)
    assert len(res["runs"]) == 2 and all("assignment" in r for r in res["runs"])
    # The fixed-bit phase runs the recipe's final method (qgnn.recipes.SEARCH) unless the config names one.
    assert res["search"]["lam"] == 0.5 and res["config"]["method"] == SearchConfig().final_method
    assert res["cost_runs"]["bitops_reduction"]["mean"] >= 1024 / 64 - 1e-9  # nothing wider than 8 bits
    assert json.loads((tmp_path / "s.json").read_text())["selected_run"] in (0, 1)
    model, meta = load_model(tmp_path / "s.ckpt")
    sel = res["runs"][res["selected_run"]]["assignment"]
    for name, slots in sel.items():
        assert {s: model.get_submodule(name).slot_bits(s) for s in slots} == slots


def test_a_prompt_trains_in_the_fixed_bit_phase_only(monkeypatch):
    """The search runs on the bare host: with and without a prompt, the same seed gets the same assignment;
    the prompt is in the final model and in the results."""
    from qgnn.data.synthetic import random_node_dataset
    from qgnn.prompts import PromptedLayer
    from qgnn.search.mixq import SearchConfig, run_search
    from qgnn.train import TrainConfig
    from qgnn.train import runner as runner_mod

    ds = random_node_dataset(num_nodes=60, num_features=8, seed=0)
    monkeypatch.setattr(runner_mod, "load_for", lambda cfg, root=None: ds)
    monkeypatch.setattr(runner_mod, "_dataset_task", lambda name: "node")
    sc = dict(lam=5.0, candidates=(4, 8), weight_candidates=(2, 4, 8), search_epochs=6, alpha_lr=0.2)
    host = run_search(TrainConfig(dataset="synthetic", model="gcn", seeds=2, epochs=3), SearchConfig(**sc),
                      progress=False)
    built = []
    monkeypatch.setattr(runner_mod.Runner, "build",
                        lambda self, _b=runner_mod.Runner.build: built.append(_b(self)) or built[-1])
    prompted = run_search(TrainConfig(dataset="synthetic", model="gcn", seeds=2, epochs=3,
                                      prompt={"kind": "lorap", "k": 4, "rank": 2}), SearchConfig(**sc),
                          progress=False)
    assert [r["assignment"] for r in prompted["runs"]] == [r["assignment"] for r in host["runs"]]
    assert prompted["prompt"]["kind"] == "lorap" and prompted["prompt"]["params"] > 0 and "prompt" not in host
    has_prompt = [any(isinstance(m, PromptedLayer) for m in model.modules()) for model in built]
    assert True in has_prompt and False in has_prompt  # the final models carry it, the searched ones not


def test_weight_slots_take_their_own_candidates(tmp_path, monkeypatch):
    from qgnn.data.synthetic import random_node_dataset
    from qgnn.search.mixq import SearchConfig, run_search
    from qgnn.train import TrainConfig
    from qgnn.train import runner as runner_mod

    model = _mixq_gcn(candidates=[4, 8], weight_candidates=[2, 4, 8])
    relaxed = {n: m for n, m in model.named_modules() if isinstance(m, RelaxedQuantizer)}
    assert relaxed and all(tuple(m.candidates) == ((2, 4, 8) if n.endswith("weight") else (4, 8))
                           for n, m in relaxed.items())
    ds = random_node_dataset(num_nodes=60, num_features=8, seed=0)
    monkeypatch.setattr(runner_mod, "load_for", lambda cfg, root=None: ds)
    monkeypatch.setattr(runner_mod, "_dataset_task", lambda name: "node")
    # a large λ pushes every slot to its narrowest candidate: weights to 2 bits, activations only to 4
    res = run_search(TrainConfig(dataset="synthetic", model="gcn", seeds=1, epochs=2),
                     SearchConfig(lam=50.0, candidates=(4, 8), weight_candidates=(2, 4, 8), search_epochs=30,
                                  alpha_lr=0.5), progress=False)
    bits = [(slot, b) for slots in res["runs"][0]["assignment"].values() for slot, b in slots.items()]
    assert {b for slot, b in bits if slot == "weight"} == {2}
    assert {b for slot, b in bits if slot != "weight"} == {4}
    assert res["search"]["weight_candidates"] == [2, 4, 8]
    with pytest.raises(ConfigError, match="every candidate set"):
        SearchConfig(candidates=(4, 8), weight_candidates=(2, 4), alpha_init=8).validate()


@pytest.mark.parametrize("kw,match", [({"lam": math.nan}, "finite"), ({"candidates": ()}, "empty"),
                                      ({"penalty": "flops"}, "penalty"), ({"alpha_split": "test"}, "split")])
def test_search_config_rejects_bad_input(kw, match):
    from qgnn.search.mixq import SearchConfig

    with pytest.raises(ConfigError, match=match):
        SearchConfig(**kw).validate()


# ------------------------------------------------------------------------------------------- CLI
def test_cli_search_and_sweep(tmp_path, capsys):
    from qgnn.cli import main

    out = tmp_path / "s.json"
    assert main(["search", "--dataset", "synthetic-node", "--seeds", "1", "--epochs", "3", "--lambda", "0.5",
                 "--quiet", "--out", str(out)]) == 0
    screen = capsys.readouterr().out
    assert "assignment of the selected run" in screen and out.exists()
    assert main(["sweep", "--dataset", "synthetic-node", "--seeds", "1", "--epochs", "2", "--lambdas", "0", "1",
                 "--quiet", "--out-dir", str(tmp_path / "sw")]) == 0
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["lambda"] for r in summary["rows"]] == [0.0, 1.0] and summary["fp32_test_acc"] is not None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 0


def test_cli_search_bad_input_exits_2(capsys):
    from qgnn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["search", "--lambda", "inf"])
    assert e.value.code == 2 and "finite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["search", "--candidates", "0"])
    assert e.value.code == 2
    assert main(["search", "--penalty", "flops"]) == 2
    assert "penalty" in capsys.readouterr().err


def _search_results(metrics: dict) -> dict:
    stat = {"mean": 1.0, "std": 0.0}
    return {"search": {"lam": 5.0}, "metrics": metrics,
            "cost_runs": {"bitops_reduction": stat, "bitops_reduction_linear": stat, "avg_bits": stat},
            "timing": {"search_seconds_per_epoch": 0.5, "seconds_per_epoch": 0.25}}


def test_sweep_rows_of_a_regression_task_report_errors(tmp_path):
    # `qgnn sweep --dataset esol` once died on results["metrics"]["test_acc"]: regression rows carry RMSE / MAE
    from qgnn.search.cli import _row, _write_summary, format_rows, plot_sweep

    reg = _row(_search_results({"test_rmse": {"mean": 1.25, "std": 0.1}, "test_mae": {"mean": 0.9, "std": 0.1},
                                "val_mae": {"mean": 0.8, "std": 0.05}}))
    assert reg["test_rmse"] == 1.25 and "test_acc" not in reg
    table = format_rows([reg])
    assert "test RMSE" in table and "1.250 ± 0.100" in table and "acc" not in table
    fp32 = {"metrics": {"test_rmse": {"mean": 1.1, "std": 0.0}}, "timing": {"seconds_per_epoch": 0.1}}
    summary = _write_summary(tmp_path, [reg], fp32, "esol")
    assert summary["fp32_test_rmse"] == 1.1 and "fp32_test_acc" not in summary
    cls = _row(_search_results({"test_acc": {"mean": 0.8, "std": 0.01}, "val_acc": {"mean": 0.79, "std": 0.0}}))
    assert cls["test_acc"] == pytest.approx(80.0) and "test acc (%)" in format_rows([cls])
    pytest.importorskip("matplotlib")
    assert plot_sweep(summary, tmp_path / "sweep.png", title="esol / gin").is_file()


def test_the_molecules_search_recipe_fills_only_unset_flags():
    import argparse

    from qgnn.recipes import SEARCH, search_recipe
    from qgnn.search.cli import _common, _configs

    assert search_recipe("cora") is SEARCH and search_recipe() is SEARCH
    p = argparse.ArgumentParser()
    _common(p)
    _, sc = _configs(p.parse_args(["--dataset", "ESOL", "--model", "gin"]), None)
    assert sc.lam == 5.0 and sc.weight_candidates == (4, 8) and sc.candidates == SEARCH.settings["candidates"]
    _, sc = _configs(p.parse_args(["--dataset", "esol", "--weight-candidates", "2", "4", "8"]), 50.0)
    assert sc.lam == 50.0 and sc.weight_candidates == (2, 4, 8)
    _, sc = _configs(p.parse_args(["--dataset", "cora"]), None)
    assert sc.lam == SEARCH.settings["lam"] and sc.weight_candidates == SEARCH.settings["weight_candidates"]
