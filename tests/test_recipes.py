"""The recipe table (qgnn.recipes): what unset flags mean, and that a user's value always wins."""

from __future__ import annotations

import pytest

from qgnn.recipes import apply_method_recipe, apply_prompt_recipe, method_recipe, prompt_recipe, search_recipe
from qgnn.train import TrainConfig


def test_a2q_starts_from_the_validated_width():
    c = TrainConfig(dataset="cora", model="gcn", method="a2q").resolve("node")
    assert c.bits == method_recipe("a2q").bits == 4
    assert method_recipe("a2q").name in c.recipes
    # The user's --bits wins over the recipe.
    assert TrainConfig(method="a2q", bits=8).resolve("node").bits == 8


def test_methods_without_a_recipe_keep_8_bits_and_record_nothing():
    c = TrainConfig(method="qat").resolve("node")
    assert c.bits == 8 and c.recipes == []
    assert TrainConfig(method="fp32").resolve("node").recipes == []


def test_mixq_options_filled_but_user_options_win():
    c = TrainConfig(method="mixq").resolve("node")
    assert c.quant["options"]["candidates"] == [4, 8]
    assert c.quant["options"]["weight_candidates"] == [2, 4, 8]
    c = TrainConfig(method="mixq", quant={"options": {"candidates": [2, 4, 8]}}).resolve("node")
    assert c.quant["options"]["candidates"] == [2, 4, 8]
    assert c.quant["options"]["weight_candidates"] == [2, 4, 8]  # the keys the user left out still come in


def test_prompt_recipe_fills_lr_and_placement():
    c = TrainConfig(model="gin", method="dq", bits=4, prompt={"kind": "gpf-lorap"}).resolve("node")
    rec = prompt_recipe("dq", "node", "gin")
    assert rec.name in c.recipes
    for key, value in rec.settings.items():
        assert c.prompt[key] == value
    c = TrainConfig(model="gin", method="dq", bits=4, prompt={"kind": "gpf-lorap", "lr": 0.01,
                                                             "node_after_quant": False}).resolve("node")
    assert c.prompt["lr"] == 0.01 and c.prompt["node_after_quant"] is False


def test_no_prompt_no_prompt_recipe():
    c = TrainConfig(method="dq", bits=4).resolve("node")
    assert c.prompt == {} and not any(r.startswith("prompt") for r in c.recipes)
    assert apply_prompt_recipe({"kind": "none"}, "dq", "node", "gcn") == ({"kind": "none"}, None)


def test_apply_method_recipe_does_not_mutate_its_input():
    quant = {"options": {"lambda": 1.0}}
    bits, out, name = apply_method_recipe("mixq", "node", "gcn", None, quant)
    assert quant == {"options": {"lambda": 1.0}}
    assert out["options"]["lambda"] == 1.0 and name


def test_resolved_config_round_trips_with_its_recipes():
    c = TrainConfig(method="a2q").resolve("node")
    again = TrainConfig.from_dict(c.to_dict()).resolve("node")
    assert again.to_dict() == c.to_dict()


def test_plain_qgnn_search_runs_the_search_recipe():
    """`qgnn search` with no search flags searches with the recipe's settings (not argparse's own defaults), and a
    flag given wins."""
    from qgnn.cli import build_parser
    from qgnn.search.cli import _configs

    def searched(*flags):
        args = build_parser().parse_args(["search", *flags])
        return _configs(args, args.lam)[1]

    sc = searched()
    for key, value in search_recipe().settings.items():
        got = getattr(sc, key)
        assert (tuple(got) if isinstance(got, list | tuple) else got) == \
            (tuple(value) if isinstance(value, list | tuple) else value), key
    assert searched("--lambda", "1", "--final-method", "qat").lam == 1.0
    assert searched("--final-method", "qat").final_method == "qat"


@pytest.mark.parametrize("method", ["a2q", "mixq"])
def test_recipes_build_valid_models(method):
    """The recipe's options are accepted by the method (a misspelt option would be an error)."""
    import torch

    from qgnn import quantize_
    from qgnn.methods import QuantConfig
    from qgnn.models import build_model

    c = TrainConfig(method=method).resolve("node")
    model = build_model("gcn", "node", 8, 3)
    quantize_(model, QuantConfig(method=c.method, bits=c.bits, **c.quant))
    x = torch.randn(5, 8)
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    assert model(x, ei).shape == (5, 3)


def test_plain_qat_hosts_get_their_own_prompt_recipe():
    """QAT hosts: the node prompt in front of the input quantizer (GIN, GAT), GCN keeps the grid's setting;
    both recipes carry a note that is printed under the results table."""
    from qgnn.recipes import recipe_notes
    from qgnn.train.results import table_notes

    gin = TrainConfig(model="gin", method="qat", bits=4, prompt={"kind": "gpf-lorap"}).resolve("node")
    assert gin.prompt["node_after_quant"] is False and gin.prompt["lr"] == 1e-3
    gcn = TrainConfig(model="gcn", method="qat", bits=4, prompt={"kind": "gpf-lorap"}).resolve("node")
    assert gcn.prompt["node_after_quant"] is True
    assert recipe_notes(gcn.recipes) and recipe_notes(gin.recipes)  # both warn: prompts rarely help a QAT host
    dq_notes = recipe_notes(TrainConfig(model="gin", method="dq", bits=4, prompt={"kind": "gpf-lorap"})
                            .resolve("node").recipes)
    assert dq_notes == []
    notes = table_notes({"config": gcn.to_dict(), "cost": {}})
    assert any("plain-QAT GCN" in n for n in notes)
    dq = TrainConfig(model="gin", method="dq", bits=4, prompt={"kind": "gpf-lorap"}).resolve("node")
    assert dq.prompt["node_after_quant"] is True


def test_a_fully_pinned_config_records_no_recipe():
    pinned = TrainConfig(method="dq", bits=4, prompt={"kind": "lorap", "lr": 0.01, "node_after_quant": False})
    assert pinned.resolve("node").recipes == []
    assert TrainConfig(method="a2q", bits=4).resolve("node").recipes == []
    assert TrainConfig(method="a2q").resolve("node").recipes == ["a2q-start4"]


@pytest.mark.parametrize("method, bits", [("gnaq", 2), ("qat", 2), ("lsq", 2), ("bigear", 1)])
def test_quantized_lightgcn_from_a_checkpoint_fine_tunes_as_the_documented_rows(method, bits):
    """The plain `qgnn train --dataset ml-100k --model lightgcn --method gnaq --bits 2 --pretrained fp32.ckpt
    --seeds 3` resolves to the configuration of the documented row (benchmarks/recsys.py: lr 5e-3, 15 epochs,
    patience 5), so it reaches that row's figure."""
    plain = TrainConfig(dataset="ml-100k", model="lightgcn", method=method, bits=bits, seeds=3,
                        quant={"pretrained": "fp32.ckpt"}).resolve("rec").to_dict()
    opts = {"options": {"level_dtype": "fp8"}} if method == "gnaq" else {}  # GNAQ's recipe: FP8 levels
    row = TrainConfig(dataset="ml-100k", model="lightgcn", method=method, bits=bits, seeds=3, lr=5e-3, epochs=15,
                      patience=5, quant={"pretrained": "fp32.ckpt", **opts}).resolve("rec").to_dict()
    assert plain.pop("recipes") and not row.pop("recipes")
    assert plain == row
    # From scratch (no checkpoint) the model's own recipe applies: a 15-epoch budget would be far too short.
    scratch = TrainConfig(dataset="ml-100k", model="lightgcn", method="qat", bits=2).resolve("rec")
    assert scratch.epochs > 15 and scratch.recipes == []


def test_molecules_pool_by_mean_unless_the_user_says_otherwise():
    from qgnn.train import TrainConfig

    cfg = TrainConfig(dataset="ESOL", model="gin").resolve("graph")
    assert cfg.model_kwargs == {"pooling": "mean"} and "molecules-l1-100ep-mean" in cfg.recipes
    mine = TrainConfig(dataset="lipo", model="gin", model_kwargs={"pooling": "sum"}).resolve("graph")
    assert mine.model_kwargs == {"pooling": "sum"}
    assert TrainConfig(dataset="PROTEINS", model="gin").resolve("graph").model_kwargs == {}  # TU: GIN's own sum


def test_freesolv_trains_longer_than_the_other_molecules():
    # FreeSolv's epochs are about 8 steps: its recipe trains 200 epochs (chosen on validation MAE), the others 100;
    # a user's --epochs still wins
    from qgnn.train import TrainConfig

    fs = TrainConfig(dataset="freesolv", model="gin").resolve("graph")
    assert (fs.epochs, fs.patience) == (200, 200) and fs.recipes == ["molecules-l1-200ep-mean"]
    for name in ("esol", "lipo"):
        other = TrainConfig(dataset=name, model="gcn", method="dq", bits=4).resolve("graph")
        assert (other.epochs, other.patience) == (100, 100) and other.recipes == ["molecules-l1-100ep-mean"]
    assert TrainConfig(dataset="freesolv", model="gin", epochs=30).resolve("graph").epochs == 30


def test_dense_feature_graphs_give_degree_quant_its_tighter_range():
    """DENSE_FEATURES datasets (sbm, OGB, Reddit): dq's percentile 0.99 unless given; sparse inputs keep the
    method's 0.999; other methods and FP32 get nothing."""
    from qgnn.methods.degree_quant import DQConfig
    from qgnn.recipes import RECIPES

    def resolve(ds, method="dq", **kw):
        return TrainConfig(dataset=ds, model="gcn", method=method, **kw).resolve("node")

    for ds in ("sbm-100k", "sbm-1m", "ogbn-arxiv"):
        c = resolve(ds)
        assert c.quant["options"] == {"percentile": 0.99}
        assert RECIPES["dense_features"].name in c.recipes
    c = resolve("sbm-100k", quant={"options": {"percentile": 0.995, "momentum": 0.5}})
    assert c.quant["options"] == {"percentile": 0.995, "momentum": 0.5} and not c.recipes  # the user's wins
    c = resolve("sbm-100k", quant={"options": {"momentum": 0.5}})
    assert c.quant["options"] == {"percentile": 0.99, "momentum": 0.5}  # the missing key only
    assert "options" not in resolve("cora").quant and DQConfig().percentile == 0.999  # bag-of-words: 0.999
    for method in ("qat", "lsq", "fp32"):
        assert "options" not in resolve("sbm-100k", method).quant
