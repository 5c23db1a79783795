"""Config values are typed (issue 23: a config file with "bits": "four" gave a traceback), fp32 and --bits agree,
and every config shares one versioned dict form (TrainConfig, PromptConfig, SearchConfig)."""

from __future__ import annotations

import json

import pytest

from qgnn.cli import main
from qgnn.config import CONFIG_VERSION
from qgnn.errors import ConfigError
from qgnn.prompts import PromptConfig
from qgnn.search.mixq import SearchConfig
from qgnn.train import TrainConfig

FAST = ["--dataset", "synthetic-node", "--epochs", "1", "--seeds", "1", "--quiet"]


@pytest.mark.parametrize("field, value, expected", [
    ("bits", "four", "an integer or null"),
    ("epochs", 2.5, "an integer or null"),
    ("lr", "x", "a number or null"),
    ("seeds", True, "an integer or null"),
    ("seed", None, "an integer"),
    ("normalize_features", 1, "true or false or null"),
    ("node_features", "colour", "one of 'auto', 'degree', 'constant'"),
    ("quant", [1], "a JSON object (dict)"),
    ("prompt", "lorap", "a JSON object (dict)"),
    ("model_kwargs", 3, "a JSON object (dict)"),
    ("dataset", 7, "a string"),
])
def test_a_wrong_value_type_names_field_value_and_expected_type(field, value, expected):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    msg = str(e.value)
    assert msg == f"config {field} must be {expected}, got {value!r}" and "\n" not in msg


def test_integral_floats_are_ints_and_ints_are_floats():
    cfg = TrainConfig(epochs=3.0, lr=1, dropout=0)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and isinstance(cfg.dropout, float)


def test_config_file_of_the_wrong_type_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"dataset": "synthetic-node", "bits": "four", "method": "qat"}))
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "qgnn: error: config bits must be an integer or null, got 'four'"


@pytest.mark.parametrize("content", [bytes(range(256)), b"[1, 2]"])
def test_a_binary_or_non_object_config_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "cfg.bin"
    path.write_bytes(content)
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qgnn: error: cannot read config") and "cfg.bin" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- fp32 and --bits
def test_fp32_with_bits_32_is_fp32_recorded_as_null():
    assert TrainConfig(method="fp32", bits=32).bits is None
    assert TrainConfig(method="fp32", bits=32).to_dict() == TrainConfig(method="fp32").to_dict()
    assert TrainConfig(method="FP32", bits=32).bits is None


@pytest.mark.parametrize("kw, match", [
    ({"method": "fp32", "bits": 4},
     r"^fp32 trains in float32; --bits 4 needs a quantization method \(qat, lsq, dq, a2q, mixq\)$"),
    ({"method": "qat", "bits": 32}, r"^--bits 32 is float32: use --method fp32"),
    ({"method": "qat", "bits": 16},
     r"^--bits must be in 1\.\.8 \(quantized\) or 32 \(float32, --method fp32\), got 16"),
    ({"method": "fp32", "bits": 0}, r"^--bits must be in 1\.\.8"),
])
def test_inconsistent_bits_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)


def test_cli_fp32_and_bits_agree(tmp_path, capsys):
    assert main(["train", *FAST, "--method", "fp32", "--bits", "4"]) == 2
    assert "fp32 trains in float32; --bits 4 needs a quantization method" in capsys.readouterr().err
    assert main(["train", *FAST, "--method", "qat", "--bits", "32"]) == 2
    assert "use --method fp32" in capsys.readouterr().err
    out = tmp_path / "fp32.json"
    assert main(["train", *FAST, "--bits", "32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["method"] == "fp32" and res["config"]["bits"] is None


# --------------------------------------------------------------------------------------------- versions
def test_results_written_before_versions_still_load(tmp_path):
    out = tmp_path / "run.json"
    assert main(["train", *FAST, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["version"] == CONFIG_VERSION
    del res["config"]["version"]  # as an older qgnn wrote it
    old = tmp_path / "old.json"
    old.write_text(json.dumps(res))
    assert TrainConfig.from_json(old).to_dict() == TrainConfig.from_dict(res["config"]).to_dict()
    assert main(["train", "--config", str(old), "--out", str(tmp_path / "again.json"), "--quiet"]) == 0


def test_a_newer_version_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "new.json"
    path.write_text(json.dumps({"config": {"version": CONFIG_VERSION + 1, "dataset": "synthetic-node"}}))
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"qgnn: error: config version {CONFIG_VERSION + 1} was written by a newer qgnn (this one reads "
                   f"versions up to {CONFIG_VERSION}); upgrade qgnn to load it")


def test_unknown_keys_name_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown config keys: colour; valid keys: .*bits.*epochs"):
        TrainConfig.from_dict({"colour": 1})


# --------------------------------------------------------------------------------------------- nested configs
def test_quant_dict_is_checked_by_quant_config_once_the_task_is_known():
    cfg = TrainConfig(dataset="synthetic-node", method="dq", bits=4, quant={"options": {"p_mn": 0.1}})
    with pytest.raises(ConfigError, match="unknown dq options: p_mn; valid options: .*p_min"):
        cfg.resolve("node")
    with pytest.raises(ConfigError, match="unknown QuantConfig keys: slotz"):
        TrainConfig(method="qat", bits=4, quant={"slotz": ["input"]}).resolve("node")
    with pytest.raises(ConfigError, match="fp32 takes no quant settings, got options"):
        TrainConfig(quant={"options": {"momentum": 0.5}}).resolve("node")
    ok = TrainConfig(dataset="synthetic-node", method="dq", bits=4, quant={"options": {"p_min": 0.05}}).resolve("node")
    assert ok.quant["options"]["p_min"] == 0.05


def test_recommendation_quant_is_checked_by_the_method_options():
    with pytest.raises(ConfigError, match="unknown gnaq options: top_r"):
        TrainConfig(dataset="synthetic-rec", model="lightgcn", method="gnaq", bits=2,
                     quant={"options": {"top_r": 5}}).resolve("rec")
    with pytest.raises(ConfigError, match="unknown quant keys for a recommendation run: slots"):
        TrainConfig(dataset="synthetic-rec", model="lightgcn", method="qat", bits=2,
                    quant={"slots": ["input"]}).resolve("rec")


def test_prompt_config_is_typed_and_versioned():
    cfg = PromptConfig(kind="gpf-lorap", k=4.0, rank=2, targets=("convs.0",))
    assert cfg.k == 4 and cfg.targets == ["convs.0"]
    d = cfg.to_dict()
    assert d["version"] == CONFIG_VERSION and PromptConfig.from_dict(d) == cfg
    assert PromptConfig.from_dict({k: v for k, v in d.items() if k != "version"}) == cfg
    with pytest.raises(ConfigError, match="prompt k must be an integer, got '4'"):
        PromptConfig(k="4")
    with pytest.raises(ConfigError, match="prompt backend must be one of auto, triton, reference"):
        PromptConfig(backend="cuda")
    # the runner's prompt dict (results JSON) nests the fields without a version
    resolved = TrainConfig(dataset="synthetic-node", prompt={"kind": "lorap"}).resolve("node").prompt
    assert "version" not in resolved and resolved["k"] == 40


def test_search_config_is_typed_validated_when_built_and_versioned():
    sc = SearchConfig(lam=1, candidates=[4, 8], weight_candidates=[2, 4, 8], alpha_init=8)
    assert sc.lam == 1.0 and sc.candidates == (4, 8)
    d = sc.to_dict()
    assert d["version"] == CONFIG_VERSION and d["candidates"] == [4, 8] and SearchConfig.from_dict(d) == sc
    with pytest.raises(ConfigError, match="search lam must be a number, got 'big'"):
        SearchConfig(lam="big")
    with pytest.raises(ConfigError, match="unknown sampling 'hard'"):
        SearchConfig(sampling="hard")
    with pytest.raises(ConfigError, match="unknown search keys: lambda; valid keys: "):
        SearchConfig.from_dict({"lambda": 1.0})
    with pytest.raises(ConfigError, match="search alpha_init must be a string or an integer, got True"):
        SearchConfig(alpha_init=True)


def test_typed_nested_configs_are_stored_in_their_dict_form():
    from qgnn.methods import DQConfig

    cfg = TrainConfig(dataset="synthetic-node", method="dq", bits=4, quant={"options": DQConfig(p_max=0.3)},
                      prompt=PromptConfig(kind="lorap", k=4))
    assert cfg.quant["options"]["p_max"] == 0.3 and cfg.prompt["k"] == 4
    resolved = cfg.resolve("node")
    assert resolved.quant["options"]["p_max"] == 0.3 and resolved.prompt["kind"] == "lorap"
    assert json.loads(json.dumps(resolved.to_dict()))["quant"]["options"]["p_max"] == 0.3
