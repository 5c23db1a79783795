"""Prompts in the runner and the CLI: `--prompt` trains prompts jointly with the quantized weights, records
them (config, parameter count, bytes), survives --save / load_model; `--freeze-backbone --backbone CKPT`
trains only the prompts on a saved host."""

from __future__ import annotations

import json

import pytest
import torch

from qgnn.cli import main
from qgnn.errors import ConfigError
from qgnn.prompts import PromptedLayer, prompt_state_dict
from qgnn.train import TrainConfig, load_checkpoint, load_model
from qgnn.train.runner import load_for

COMMON = ["--dataset", "synthetic-node", "--model", "gcn", "--seeds", "1", "--epochs", "8", "--quiet"]


def _acc(model, data):
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    return (pred[data.test_mask] == data.y[data.test_mask]).float().mean().item()


@pytest.mark.parametrize("method", ["dq", "a2q"])
def test_cli_prompt_records_size_and_reloads(tmp_path, method):
    out, ckpt = tmp_path / "p.json", tmp_path / "p.ckpt"
    assert main(["train", *COMMON, "--method", method, "--bits", "4", "--prompt", "gpf-lorap", "--prompt-k", "6",
                 "--prompt-rank", "3", "--out", str(out), "--save", str(ckpt)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["prompt"]["kind"] == "gpf-lorap" and res["config"]["prompt"]["k"] == 6
    d, c, h = 16, 3, 16  # synthetic-node: 16 features, 3 classes; GCN hidden 16
    expected = 2 * 6 * d + sum(6 * w + 6 * 3 + 3 * w for w in (h, c))
    assert res["prompt"]["params"] == expected and res["prompt"]["bytes"] == 4 * expected
    model, meta = load_model(ckpt)
    assert all(isinstance(conv, PromptedLayer) for conv in model.convs)
    assert prompt_state_dict(model)
    data = load_for(TrainConfig.from_dict(res["config"])).data
    assert _acc(model, data) == pytest.approx(meta["selected_run"]["test_acc"], abs=1e-6)


def test_frozen_backbone_trains_only_the_prompts(tmp_path):
    host = tmp_path / "host.ckpt"
    assert main(["train", *COMMON, "--method", "qat", "--bits", "4", "--save", str(host),
                 "--out", str(tmp_path / "h.json")]) == 0
    tuned = tmp_path / "tuned.ckpt"
    assert main(["train", *COMMON, "--method", "qat", "--bits", "4", "--prompt", "lorap", "--freeze-backbone",
                 "--backbone", str(host), "--save", str(tuned), "--out", str(tmp_path / "t.json")]) == 0
    base, _ = load_checkpoint(host)
    after, meta = load_checkpoint(tuned)
    assert meta["config"]["prompt"]["freeze_backbone"] is True
    prompts = {k for k in after if ".aggr_prompt." in k}
    assert prompts and set(after) - prompts == {k.replace("convs.0.", "convs.0.base_layer.", 1)
                                                .replace("convs.1.", "convs.1.base_layer.", 1) for k in base}
    for k, v in base.items():
        wrapped = k.replace("convs.0.", "convs.0.base_layer.", 1).replace("convs.1.", "convs.1.base_layer.", 1)
        assert torch.equal(after[wrapped], v), k  # weights, quantizer ranges: untouched
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in prompts if k.endswith(".v"))


def test_prompt_options_need_a_prompt(capsys):
    assert main(["train", *COMMON, "--prompt-k", "4"]) == 2
    assert "need --prompt" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown prompt keys"):
        TrainConfig(dataset="synthetic-node", prompt={"kind": "lorap", "alpha": 1}).resolve("node")


def test_prompt_lr_and_weight_decay_form_their_own_optimizer_group():
    from qgnn.prompts import prompt_parameters
    from qgnn.train.runner import Runner

    cfg = TrainConfig(dataset="synthetic-node", model="gcn", method="qat", bits=4, epochs=2, lr=0.01,
                      weight_decay=5e-4, prompt={"kind": "lorap", "lr": 1e-3, "weight_decay": 0})
    runner = Runner(cfg)
    model = runner.build()
    opt, _ = runner._optim(model)
    prompts = {id(p) for p in prompt_parameters(model).values()}
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert prompts and all(by_param[i]["lr"] == 1e-3 and by_param[i]["weight_decay"] == 0.0 for i in prompts)
    others = [g for i, g in by_param.items() if i not in prompts]
    assert others and all(g["lr"] == 0.01 and g["weight_decay"] == 5e-4 for g in others)
    assert len(by_param) == sum(1 for p in model.parameters() if p.requires_grad)  # each parameter once
    # unset: the prompt recipe's lr (qgnn.recipes), else one group with the run's settings
    from qgnn.recipes import prompt_recipe

    plain = Runner(TrainConfig(dataset="synthetic-node", model="gcn", method="qat", bits=4, prompt={"kind": "lorap"}))
    model = plain.build()
    opt = plain._optim(model)[0]
    recipe_lr = (prompt_recipe("qat", "node", "gcn").settings or {}).get("lr")
    if recipe_lr is None:
        assert len(opt.param_groups) == 1
    else:
        prompts = {id(p) for p in prompt_parameters(model).values()}
        assert all(g["lr"] == recipe_lr for g in opt.param_groups if any(id(p) in prompts for p in g["params"]))


@pytest.mark.parametrize("bad", [{"lr": 0}, {"lr": -1e-3}, {"weight_decay": -1}, {"lr": "fast"}, {"lr": True}])
def test_bad_prompt_optimizer_settings_are_named(bad):
    with pytest.raises(ConfigError, match=f"prompt {next(iter(bad))}"):
        TrainConfig(dataset="synthetic-node", prompt={"kind": "lorap", **bad}).resolve("node")


def test_cli_prompt_lr_reaches_the_config(tmp_path):
    out = tmp_path / "p.json"
    assert main(["train", *COMMON, "--method", "qat", "--bits", "4", "--prompt", "lorap", "--prompt-lr", "0.002",
                 "--prompt-weight-decay", "0", "--prompt-align", "0.5", "--out", str(out)]) == 0
    prompt = json.loads(out.read_text())["config"]["prompt"]
    assert prompt["lr"] == 0.002 and prompt["weight_decay"] == 0.0 and prompt["align"] == 0.5
    assert main(["train", *COMMON, "--method", "qat", "--bits", "4", "--prompt", "gpf-plus", "--no-prompt-after-quant",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["prompt"]["node_after_quant"] is False
    assert main(["train", *COMMON, "--method", "qat", "--bits", "4", "--prompt", "gpf-plus", "--prompt-after-quant",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["prompt"]["node_after_quant"] is True
