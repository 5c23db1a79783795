"""Typed method configs (issue 23, item 3): one dataclass per method, checked when built, one handler registry
for quantize_ (config type -> handler), overrides as typed partial configs, one versioned dict form."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch_geometric.nn import GCNConv

from qgnn.config import CONFIG_VERSION
from qgnn.errors import ConfigError, UnknownNameError
from qgnn.methods import (
    A2QConfig,
    DQConfig,
    LSQConfig,
    Method,
    MethodConfig,
    MixQConfig,
    ModuleOverride,
    QATConfig,
    QuantConfig,
    get_method,
    method_configs,
    quantize_,
    rec_method_config,
    register_method,
)
from qgnn.methods import base as methods_base
from qgnn.methods.degree_quant import DegreeQuant
from qgnn.models import build_model
from qgnn.nn import QuantGCNConv
from qgnn.quant import UniformQuantizer

CONFIGS = {"qat": QATConfig, "lsq": LSQConfig, "dq": DQConfig, "a2q": A2QConfig, "mixq": MixQConfig}


def _gcn():
    torch.manual_seed(0)
    return build_model("gcn", "node", 8, 3)


def test_every_registered_method_has_its_own_config_class():
    assert {name: cls for name, cls in method_configs().items()} == CONFIGS
    for name, cls in CONFIGS.items():
        assert issubclass(cls, MethodConfig) and get_method(name) is get_method(cls) is get_method(cls())
        assert get_method(name).config_class is cls


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_a_misspelt_option_is_refused_naming_the_valid_ones(method):
    valid = CONFIGS[method].keys()
    with pytest.raises(ConfigError, match=f"unknown {method} options: colour; valid options: ") as e:
        quantize_(_gcn(), QuantConfig(method=method, bits=4, options={"colour": 1}))
    assert all(k in str(e.value) for k in valid)


def test_degree_quant_no_longer_ignores_a_misspelt_option():
    with pytest.raises(ConfigError, match="unknown dq options: p_mn.*p_min"):
        QuantConfig(method="dq", bits=4, options={"p_mn": 0.3})


@pytest.mark.parametrize("method, options, match", [
    ("qat", {"momentum": "high"}, "qat momentum must be a number, got 'high'"),
    ("qat", {"momentum": 1.5}, r"qat momentum must be in \[0, 1\], got 1.5"),
    ("qat", {"estimator": "magic"}, "qat estimator must be one of 'ste', 'clipped_ste', got 'magic'"),
    ("lsq", {"weight_granularity": "node"}, "lsq weight_granularity must be one of 'channel', 'tensor'"),
    ("dq", {"p_min": 2.0}, r"dq p_min must be a probability in \[0, 1\]"),
    ("dq", {"p_min": 0.5, "p_max": 0.2}, "p_min .* must not exceed p_max"),
    ("dq", {"sample_size": 10.5}, "dq sample_size must be an integer, got 10.5"),
    ("dq", {"per_layer_mask": 1}, "dq per_layer_mask must be true or false, got 1"),
    ("a2q", {"groups": 0}, "a2q groups must be an integer >= 1"),
    ("a2q", {"b_min": 6.0, "b_max": 4.0}, "b_min .* must not exceed b_max"),
    ("mixq", {"lambda": "big"}, "mixq lambda must be a number, got 'big'"),
    ("mixq", {"lambda": float("inf")}, "mixq lambda must be a finite number"),
    ("mixq", {"candidates": [2, 16]}, "bits must be an integer in 1..8"),
    ("mixq", {"init": 3}, "mixq init must be 'uniform' or a width in every candidate set"),
])
def test_wrong_type_or_range_names_option_value_and_expectation(method, options, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(method=method, bits=4, options=options)
    with pytest.raises(ConfigError, match=match):  # the same check for the typed form
        CONFIGS[method].from_dict(options)


def test_integral_floats_are_accepted_as_ints_and_bools_are_not_numbers():
    assert DQConfig(sample_size=1024.0).sample_size == 1024 and isinstance(DQConfig(sample_size=1024.0).sample_size,
                                                                           int)
    assert QATConfig(momentum=1).momentum == 1.0
    with pytest.raises(ConfigError, match="qat momentum must be a number, got True"):
        QATConfig(momentum=True)


def test_dict_form_and_typed_form_build_the_same_config_and_model():
    as_dict = QuantConfig(method="dq", bits=4, options={"p_max": 0.3})
    typed = QuantConfig(bits=4, options=DQConfig(p_max=0.3))  # the method follows from the options' type
    assert as_dict == typed and typed.method == "dq" and isinstance(as_dict.options, DQConfig)
    a, b = quantize_(_gcn(), as_dict), quantize_(_gcn(), typed)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert a.convs[0].node_protect.p_max == b.convs[0].node_protect.p_max == 0.3


def test_quantize_takes_a_method_config_alone_torchao_style():
    model = quantize_(_gcn(), DQConfig(percentile=0.99))
    conv = model.convs[0]
    assert isinstance(conv, QuantGCNConv) and conv.slot_bits("weight") == 8  # QuantConfig's default bits
    assert model.qgnn_config.method == "dq" and model.qgnn_config.options.percentile == 0.99
    assert conv.node_protect.p_min == 0.0 and conv.node_protect.p_max == 0.1  # DQ's 8-bit defaults


def test_options_of_another_method_are_refused():
    with pytest.raises(ConfigError, match="method 'qat' was given the options of method 'dq'"):
        QuantConfig(method="qat", options=DQConfig())
    with pytest.raises(ConfigError, match="options must be a dict or a method config"):
        QuantConfig(method="qat", options=[1, 2])
    with pytest.raises(ConfigError, match="quantize_ takes a QuantConfig"):
        quantize_(_gcn(), "dq")


@pytest.mark.parametrize("bits, expected", [(8, (0.0, 0.1)), (4, (0.1, 0.2)), (2, (0.1, 0.2))])
def test_degree_quant_probabilities_default_by_bits(bits, expected):
    assert DQConfig().p_min is None and DQConfig().p_max is None  # "by bits" until resolved
    assert (DQConfig().resolve(bits).p_min, DQConfig().resolve(bits).p_max) == expected
    model = quantize_(_gcn(), QuantConfig(method="dq", bits=bits))
    assert (model.convs[0].node_protect.p_min, model.convs[0].node_protect.p_max) == expected
    assert DQConfig(p_min=0.05).resolve(bits).p_min == 0.05  # a given value wins
    with pytest.raises(ConfigError, match="must not exceed"):
        DQConfig(p_min=0.15).resolve(8)  # consistent only with the < 8-bit p_max


def test_a2q_local_grad_follows_the_node_strategy_unless_given():
    assert A2QConfig().resolve(4).local_grad is True
    assert A2QConfig(node_strategy="nn").resolve(4).local_grad is False
    assert A2QConfig(node_strategy="nn", local_grad=True).resolve(4).local_grad is True


def test_option_defaults_are_the_dataclass_fields():
    # a recipe is a dict of field overrides: every default sits in a field, none in the handler
    for cls in CONFIGS.values():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                   for f in fields.values())
    recipe = {"candidates": [4, 8], "weight_candidates": [2, 4, 8], "lambda": 50.0}
    cfg = QuantConfig(method="mixq", bits=8, options=recipe)
    assert (cfg.options.candidates, cfg.options.weight_candidates, cfg.options.lam) == ((4, 8), (2, 4, 8), 50.0)
    assert cfg.options.replace(**{"lambda": 1.0}).lam == 1.0


@pytest.mark.parametrize("cls", list(CONFIGS.values()))
def test_method_config_dict_round_trip_with_version(cls):
    cfg = cls()
    d = cfg.to_dict()
    assert d["version"] == CONFIG_VERSION and json.loads(json.dumps(d)) == d
    assert cls.from_dict(d) == cfg
    assert cls.from_dict({k: v for k, v in d.items() if k != "version"}) == cfg  # written before versions
    with pytest.raises(ConfigError, match="newer qgnn"):
        cls.from_dict({**d, "version": CONFIG_VERSION + 1})


def test_mixq_lambda_keeps_its_dict_key():
    d = MixQConfig(lam=2.0).to_dict()
    assert d["lambda"] == 2.0 and "lam" not in d
    assert "lambda" in MixQConfig.keys()


def test_quant_config_round_trip_nests_the_options_without_a_version():
    cfg = QuantConfig(bits=4, options=A2QConfig(node_strategy="nn", groups=8),
                      overrides={"convs.0": ModuleOverride(bits=8)})
    d = json.loads(cfg.to_json())
    assert d["version"] == CONFIG_VERSION and "version" not in d["options"] and d["options"]["groups"] == 8
    assert d["overrides"] == {"convs.0": {"bits": 8}}
    assert QuantConfig.from_dict(d) == cfg
    old = {k: v for k, v in d.items() if k != "version"}
    assert QuantConfig.from_dict(old) == cfg


def test_overrides_are_typed_partial_configs():
    model = quantize_(_gcn(), QuantConfig(bits=8, overrides={"convs.0": ModuleOverride(bits=4),
                                                              r"convs\.1": ModuleOverride(skip=True)}))
    assert model.convs[0].slot_bits("weight") == 4 and type(model.convs[1]) is GCNConv
    with pytest.raises(ConfigError, match="override for 'convs.0': unknown override keys: bitz; valid keys: "):
        QuantConfig(overrides={"convs.0": {"bitz": 4}})
    with pytest.raises(ConfigError, match="override for 'convs.0': override bits must be an integer"):
        QuantConfig(overrides={"convs.0": {"bits": "four"}})
    with pytest.raises(ConfigError, match="is a DQConfig: overrides set bits, slots or skip per module"):
        QuantConfig(overrides={"convs.0": DQConfig()})
    with pytest.raises(ConfigError, match="not a module name or a valid regular expression"):
        QuantConfig(overrides={"convs.(": {"bits": 4}})
    assert QuantConfig(overrides={"convs.0": {"bits": 4.0}}).overrides == {"convs.0": {"bits": 4}}


def test_a_new_method_registers_its_config_type_and_handler(monkeypatch):
    @dataclasses.dataclass
    class HalfConfig(MethodConfig):
        name = "half-test"
        momentum: float = 0.5

    monkeypatch.setattr(methods_base, "_HANDLERS", dict(methods_base._HANDLERS))

    @register_method(HalfConfig)
    class Half(Method):
        def quantizer(self, slot, bits, layer, name):
            return UniformQuantizer(bits, observer="ema", observer_kwargs={"momentum": self.options.momentum})

    assert get_method(HalfConfig(momentum=0.2)) is Half and "half-test" in method_configs()
    model = quantize_(_gcn(), QuantConfig(bits=4, options=HalfConfig(momentum=0.2)))
    assert model.qgnn_config.method == "half-test" and model.convs[0].slot_bits("input") == 4
    assert QuantConfig(method="half-test", options={"momentum": 0.3}).options == HalfConfig(momentum=0.3)
    with pytest.raises(TypeError, match="MethodConfig subclass"):
        register_method("half")


def test_unknown_method_name_lists_the_registered_ones():
    with pytest.raises(UnknownNameError, match="valid methods: a2q, dq, lsq, mixq, qat"):
        QuantConfig(method="magic")
    assert get_method("DQ") is DegreeQuant  # names are case-insensitive


# ------------------------------------------------------------------------------------ recommendation methods
@pytest.mark.parametrize("method, options, match", [
    ("gnaq", {"lambda_rnk": 0.1}, "unknown gnaq options: lambda_rnk; valid options: candidates, dynamic, "
                                  "estimator, lambda_rank"),
    ("gnaq", {"estimator": "magic"}, "gnaq estimator must be one of 'rau', 'ste'"),
    ("gnaq", {"candidates": 1}, "gnaq candidates must be an integer >= 2"),
    ("bigear", {"top_r": "ten"}, "bigear top_r must be an integer, got 'ten'"),
    ("bigear", {"lambda_id": -1.0}, "bigear lambda_id must be a number >= 0"),
    ("qat", {"momentum": 0.5}, "unknown qat options: momentum; valid options: none"),
])
def test_recommendation_options_are_typed_too(method, options, match):
    from qgnn.methods.bigear import BiGeaRLightGCN
    from qgnn.methods.gnaq import GNAQLightGCN
    from qgnn.methods.rec_baselines import QuantTableLightGCN

    with pytest.raises(ConfigError, match=match):
        rec_method_config(method).from_dict(options)
    model = {"gnaq": GNAQLightGCN, "bigear": BiGeaRLightGCN}.get(method)
    with pytest.raises(ConfigError, match=match):  # the model classes check the same way (no TypeError)
        if model is None:
            QuantTableLightGCN(4, 4, hidden=4, bits=2, kind=method, **options)
        else:
            model(4, 4, hidden=4, **options)


def test_recommendation_option_defaults_live_in_the_config():
    from qgnn.methods.gnaq import GNAQConfig, GNAQLightGCN

    m = GNAQLightGCN(4, 4, hidden=4, bits=2)
    d = GNAQConfig()
    assert (m.dynamic, m.estimator, m.lambda_rank, m.candidates) == (d.dynamic, d.estimator, d.lambda_rank,
                                                                     d.candidates)
