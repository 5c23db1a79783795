"""The configuration of one experiment, and how unset fields take the model's published recipe.

`TrainConfig.resolve()` returns a copy with every field filled in; that copy is
what the results JSON records under ``config``, so a run can be repeated from it.

A TrainConfig is a typed config (:class:`qgnn.config.ConfigBase`): every value is checked against its
field's type when built (``"bits": "four"`` in a config file is one ``qgnn: error:`` line naming the field,
the value and the expected type), and ``to_dict`` / ``from_dict`` carry the config version (a results file
without one, written before versions, loads as the current version). The nested dicts are checked by
their own configs once the task is known (``validate`` after ``resolve``): ``quant`` by
:class:`~qgnn.methods.QuantConfig` (or, for recommendation, the method's options class), ``prompt`` by
:class:`~qgnn.prompts.PromptConfig`, ``model_kwargs`` by the model's constructor.

Bits: 1..8 quantize (with a quantization method); 32 means float32, i.e. ``--method fp32``. An fp32 config
records ``bits`` as null (``--method fp32 --bits 32`` is accepted and stored as null, the same run as
``--method fp32``); fp32 with bits below 32, or a quantization method at 32 bits, is an error saying which
flag to change.

Batches (``batch_size``, ``fanout``):

* graph tasks: ``batch_size`` graphs per batch (default: the model's recipe, else 32); recommendation: BPR
  triples per batch (the recipe, else 32). ``fanout`` is refused for both.
* node tasks train full-batch (one forward over the whole graph per epoch; ``batch_size`` and ``fanout``
  recorded as null) unless either is given; then they train on sampled mini-batches
  (:mod:`qgnn.train.minibatch`): ``batch_size`` seed (training) nodes per batch, ``fanout[l]`` in-neighbours
  sampled per node at hop ``l`` (``-1``: all of them), one per layer. ``fanout`` alone: ``batch_size`` 1024;
  ``batch_size`` alone: ``fanout`` -1 for every layer. Both are recorded resolved.
* A node config written before fanouts existed (``task`` "node" and no ``fanout`` key) recorded the unused
  ``batch_size`` 32: it is read as null, so the file still describes the full-batch run that produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

from qgnn.config import ConfigBase
from qgnn.errors import ConfigError

SAMPLINGS = ("user", "interaction")  # recommendation: how an epoch draws its (user, positive) pairs
NODE_BATCH_SIZE = 1024  # node tasks: seeds per mini-batch when only --fanout is given
GRAPH_BATCH_SIZE = 32  # graph / recommendation tasks: batch size when neither the user nor the recipe sets one
FLOAT_BITS = 32  # --bits 32: float32, the same as --method fp32 (recorded as bits null)
QUANT_METHODS_HINT = "qat, lsq, dq, a2q, mixq"
REC_KEYS = ("options", "pretrained", "val_frac", "test_curve")  # TrainConfig.quant keys of recommendation runs


@dataclass
class TrainConfig(ConfigBase):
    dataset: str = "cora"
    model: str = "gcn"
    method: str = "fp32"
    bits: int | None = None
    task: str | None = None            # filled from the dataset
    seeds: int | None = None           # runs per fold: 10 for node tasks, 1 for graph tasks
    seed: int = 0                      # first seed; run r uses seed + r
    folds: int | None = None           # graph tasks: how many of the 10 CV folds to run (default all)
    fold_seed: int = 0                 # seed of the stratified fold assignment
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    patience: int | None = None        # early stopping: validations without improvement
    eval_every: int = 1                # validate every N epochs (and after the last); patience counts validations
    batch_size: int | None = None       # graphs / BPR triples per batch; node tasks: seed nodes (module docstring)
    fanout: list[int] | None = None     # node tasks: sampled in-neighbours per layer, -1 = all (module docstring)
    sampling: str | None = None        # recommendation: BPR triples per epoch, "user" (default) or "interaction"
    lr_step: int | None = None         # StepLR period in epochs (graph recipe), 0 = constant lr
    lr_gamma: float | None = None
    hidden: int | None = None
    num_layers: int | None = None
    dropout: float | None = None
    normalize_features: bool | None = None   # row-normalise node features (Kipf & Welling's recipe)
    node_features: Literal["auto", "degree", "constant"] = "auto"  # TU graphs without features
    device: str = "cpu"
    model_kwargs: dict = field(default_factory=dict)
    quant: dict = field(default_factory=dict)   # extra QuantConfig fields: slots, overrides, options, ...
    prompt: dict = field(default_factory=dict)  # prompts (qgnn.prompts.train): kind, k, rank, freeze_backbone, ...
    recipes: list[str] = field(default_factory=list)  # filled by resolve(): the qgnn.recipes entries that applied

    def __post_init__(self):
        # typed configs given in Python (prompt=PromptConfig(...), quant={"options": DQConfig(...)}) are stored
        # in their dict form, as a config file gives them
        if isinstance(self.prompt, ConfigBase):
            self.prompt = self.prompt.fields_dict()
        if isinstance(self.quant, dict) and isinstance(self.quant.get("options"), ConfigBase):
            self.quant = {**self.quant, "options": self.quant["options"].fields_dict()}
        self.check_types()
        # Method names are looked up case-insensitively; the config holds the canonical (lower-case) name, which
        # the recipes, the fp32 checks and the runner compare against.
        self.method = self.method.lower()
        if self.method == "fp32" and self.bits == FLOAT_BITS:
            self.bits = None  # float32: one record for `--method fp32` and `--method fp32 --bits 32`
        self.validate()

    def resolve(self, task: str) -> TrainConfig:
        """Fill unset fields from the model's recipe for `task`; validate ranges."""
        from qgnn.models import default_hparams
        from qgnn.recipes import apply_dataset_recipe, apply_method_recipe, apply_prompt_recipe, apply_train_recipe

        model_kw, train_kw = default_hparams(self.model, task)
        c = dataclasses.replace(self, task=task, model_kwargs=dict(self.model_kwargs), quant=dict(self.quant))
        # A method's own training defaults (qgnn.recipes: e.g. fine-tuning a pretrained LightGCN) come before
        # the model's published recipe.
        train_recipe = apply_train_recipe(c)
        data_recipe = apply_dataset_recipe(c)  # e.g. molecules: regression defaults, not the TU recipe
        for k, v in train_kw.items():
            if getattr(c, k, None) is None:
                setattr(c, k, v)
        for k in ("hidden", "num_layers", "dropout"):
            if getattr(c, k) is None:
                setattr(c, k, model_kw.get(k))
        # Validated method / prompt defaults (qgnn.recipes) fill what the user left unset; their names are
        # recorded, so the results JSON says which recipe ran.
        applied = [r for r in (train_recipe, data_recipe) if r]
        c.bits, c.quant, name = apply_method_recipe(c.method, task, c.model, c.bits, c.quant)
        applied += [name] if name else []
        prompt, name = apply_prompt_recipe(dict(self.prompt), c.method, task, c.model)
        applied += [name] if name else []
        c.recipes = sorted(set(self.recipes) | set(applied))
        if c.method != "fp32" and c.bits is None:
            c.bits = 8
        c.seeds = c.seeds if c.seeds is not None else (10 if task == "node" else 1)
        c.folds = c.folds if c.folds is not None else 10
        c.lr_step = c.lr_step if c.lr_step is not None else 0
        c.lr_gamma = c.lr_gamma if c.lr_gamma is not None else 1.0
        c._resolve_batches(task)
        if task == "rec" and c.sampling is None:
            c.sampling = "user"  # LightGCN's and NGCF's samplers (qgnn.train.rec)
        if c.method == "a2q" and task == "graph":
            # Per-node tables belong to one fixed graph; graph-level tasks see new graphs every batch, so
            # A2Q uses its nearest-neighbour groups there unless the config says otherwise. Set here, so
            # the results JSON records it.
            c.quant["options"] = {"node_strategy": "nn", **c.quant.get("options", {})}
        if c.normalize_features is None:
            from qgnn.data.registry import row_normalize_by_default

            c.normalize_features = task == "node" and row_normalize_by_default(c.dataset)
        from qgnn.prompts.train import resolve_prompt

        c.prompt = resolve_prompt(prompt)
        c.validate()
        return c

    def _resolve_batches(self, task: str) -> None:
        """Fill ``batch_size`` / ``fanout`` for ``task`` in place (module docstring) and check the fanouts against
        the model's layers."""
        check_batching(self, task)
        if task != "node":
            self.batch_size = self.batch_size if self.batch_size is not None else GRAPH_BATCH_SIZE
            return
        if self.batch_size is None and self.fanout is None:
            return  # full-batch, as before mini-batches existed
        if self.batch_size is None:
            self.batch_size = NODE_BATCH_SIZE
        if self.fanout is None and self.num_layers is not None:
            self.fanout = [-1] * self.num_layers
        if self.num_layers is not None and len(self.fanout) != self.num_layers:
            n = len(self.fanout)
            raise ConfigError(f"--fanout gives {n} number{'s' if n != 1 else ''} ({' '.join(map(str, self.fanout))}) "
                              f"for a {self.num_layers}-layer model: give one per layer (--layers sets the layers)")

    @property
    def minibatch(self) -> bool:
        """Whether this (resolved) node config trains on sampled mini-batches (module docstring)."""
        return self.task == "node" and self.fanout is not None

    @classmethod
    def from_dict(cls, d):
        # a node config from before fanouts existed: its batch_size was never used (module docstring)
        if isinstance(d, dict) and d.get("task") == "node" and "fanout" not in d and d.get("batch_size") is not None:
            d = {**d, "batch_size": None}
        return super().from_dict(d)

    def validate(self) -> None:
        checks = [
            (self.seeds is None or self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.folds is None or 1 <= self.folds <= 10, f"--folds must be in 1..10, got {self.folds}"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.batch_size is None or self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.fanout is None or len(self.fanout) >= 1, "--fanout needs one number per layer, got none"),
            (self.fanout is None or min(self.fanout, default=-1) >= -1,
             f"--fanout must be -1 (all neighbours) or a number of neighbours >= 0, got {self.fanout}"),
            (self.sampling in (None, *SAMPLINGS),
             f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}"),
            (self.sampling is None or self.task in (None, "rec"),
             f"--sampling applies to recommendation datasets only, not to a {self.task} task"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        self._validate_bits()
        if self.task is not None:
            check_batching(self, self.task)
            self._validate_quant()

    def _validate_bits(self) -> None:
        """1..8 with a quantization method, 32 / null with fp32 (module docstring)."""
        bits, fp32 = self.bits, self.method.lower() == "fp32"
        if bits is None or (fp32 and bits == FLOAT_BITS):
            return
        if not (1 <= bits <= 8 or bits == FLOAT_BITS):
            raise ConfigError(f"--bits must be in 1..8 (quantized) or {FLOAT_BITS} (float32, --method fp32), "
                              f"got {bits}")
        if fp32:
            raise ConfigError(f"fp32 trains in float32; --bits {bits} needs a quantization method "
                              f"({QUANT_METHODS_HINT})")
        if bits == FLOAT_BITS:
            raise ConfigError(f"--bits {FLOAT_BITS} is float32: use --method fp32 (--method {self.method} quantizes "
                              "to 1..8 bits)")

    def _validate_quant(self) -> None:
        """``quant`` through its own config, once the task is known: QuantConfig for node / graph tasks, the
        method's options class (and the runner's keys) for recommendation."""
        method = self.method.lower()
        if self.task == "rec":
            unknown = sorted(set(self.quant) - set(REC_KEYS))
            if unknown:
                raise ConfigError(f"unknown quant keys for a recommendation run: {', '.join(unknown)}; valid keys: "
                                  f"{', '.join(REC_KEYS)}")
            if method != "fp32" and self.quant.get("options"):
                from qgnn.methods.config import rec_method_config

                rec_method_config(method).from_dict(self.quant["options"])
            return
        if method == "fp32":
            if self.quant:
                raise ConfigError(f"fp32 takes no quant settings, got {', '.join(sorted(self.quant))} "
                                  f"(they need a quantization method: {QUANT_METHODS_HINT})")
            return
        from qgnn.methods.config import QuantConfig

        if "method" in self.quant or "bits" in self.quant:
            raise ConfigError("quant must not set method or bits: they are the config's own method and bits")
        QuantConfig.from_dict({**self.quant, "method": self.method, "bits": self.bits or 8})

    @classmethod
    def from_json(cls, path) -> TrainConfig:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 text (a binary file)
            raise ConfigError(f"cannot read config {path}: not a JSON config or results file ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"cannot read config {path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d.get("config", d))


def check_batching(cfg: TrainConfig, task: str) -> None:
    """``--fanout`` samples node neighbourhoods: refused on graph-classification and recommendation datasets."""
    if cfg.fanout is not None and task != "node":
        kind = {"graph": "a graph-classification", "rec": "a recommendation"}.get(task, f"a {task}")
        raise ConfigError(f"--fanout samples neighbours for node datasets only; {cfg.dataset} is {kind} dataset "
                          "(its batches are set by --batch-size alone)")


def check_names(cfg: TrainConfig) -> None:
    """Fail fast on unknown names (dataset, model, method: one ``UnknownNameError`` line listing the valid ones),
    then on invalid values (:meth:`TrainConfig.validate`), before any data is loaded. The names come from their
    registries: :mod:`qgnn.data`, :mod:`qgnn.models`, :mod:`qgnn.methods` (``method_names``) and, for
    recommendation datasets, :mod:`qgnn.train.rec`."""
    from qgnn.data import dataset_names
    from qgnn.errors import lookup

    tasks = {n: t for t in ("node", "graph", "rec") for n in dataset_names(t)}
    task = lookup("dataset", cfg.dataset, tasks)
    if task == "rec":
        from qgnn.train.rec import REC_METHODS, REC_MODELS

        lookup("recommendation model", cfg.model, REC_MODELS)
        lookup("recommendation method", cfg.method, REC_METHODS)
    else:
        from qgnn.methods import method_names
        from qgnn.models import model_names

        lookup("model", cfg.model, {m: m for m in model_names(task)})
        lookup("method", cfg.method, dict.fromkeys(method_names()))
    cfg.validate()
    check_batching(cfg, task)
