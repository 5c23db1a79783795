"""The configuration of one experiment, and how unset fields take the model's published recipe.

`TrainConfig.resolve()` returns a copy with every field filled in; that copy is
what the results JSON records under ``config``, so a run can be repeated from it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from qgnn.errors import ConfigError

SAMPLINGS = ("user", "interaction")  # recommendation: how an epoch draws its (user, positive) pairs
METHODS = ("fp32",)  # extended by qgnn.methods as quantization methods register


@dataclass
class TrainConfig:
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
    batch_size: int | None = None
    sampling: str | None = None        # recommendation: BPR triples per epoch, "user" (default) or "interaction"
    lr_step: int | None = None         # StepLR period in epochs (graph recipe), 0 = constant lr
    lr_gamma: float | None = None
    hidden: int | None = None
    num_layers: int | None = None
    dropout: float | None = None
    normalize_features: bool | None = None   # row-normalise node features (Kipf & Welling's recipe)
    node_features: str = "auto"        # TU graphs without features: auto | degree | constant
    device: str = "cpu"
    model_kwargs: dict = field(default_factory=dict)
    quant: dict = field(default_factory=dict)   # extra QuantConfig fields: slots, overrides, options, ...
    prompt: dict = field(default_factory=dict)  # prompts (qgnn.prompts.train): kind, k, rank, freeze_backbone, ...

    def resolve(self, task: str) -> TrainConfig:
        """Fill unset fields from the model's recipe for `task`; validate ranges."""
        from qgnn.models import default_hparams

        model_kw, train_kw = default_hparams(self.model, task)
        c = dataclasses.replace(self, task=task, model_kwargs=dict(self.model_kwargs), quant=dict(self.quant))
        for k, v in train_kw.items():
            if getattr(c, k, None) is None:
                setattr(c, k, v)
        for k in ("hidden", "num_layers", "dropout"):
            if getattr(c, k) is None:
                setattr(c, k, model_kw.get(k))
        if c.method != "fp32" and c.bits is None:
            c.bits = 8
        c.seeds = c.seeds if c.seeds is not None else (10 if task == "node" else 1)
        c.folds = c.folds if c.folds is not None else 10
        c.lr_step = c.lr_step if c.lr_step is not None else 0
        c.lr_gamma = c.lr_gamma if c.lr_gamma is not None else 1.0
        c.batch_size = c.batch_size if c.batch_size is not None else 32
        if task == "rec" and c.sampling is None:
            c.sampling = "user"  # LightGCN's and NGCF's samplers (qgnn.train.rec)
        if c.method == "a2q" and task == "graph":
            # Per-node tables belong to one fixed graph; graph-level tasks see new graphs every batch, so
            # A2Q uses its nearest-neighbour groups there unless the config says otherwise. Set here, so
            # the results JSON records it.
            c.quant["options"] = {"node_strategy": "nn", **c.quant.get("options", {})}
        if c.normalize_features is None:
            c.normalize_features = task == "node"
        from qgnn.prompts.train import resolve_prompt

        c.prompt = resolve_prompt(self.prompt)
        c.validate()
        return c

    def validate(self) -> None:
        checks = [
            (self.seeds is None or self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.folds is None or 1 <= self.folds <= 10, f"--folds must be in 1..10, got {self.folds}"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.bits is None or 1 <= self.bits <= 8, f"--bits must be in 1..8, got {self.bits}"),
            (self.sampling in (None, *SAMPLINGS),
             f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}"),
            (self.sampling is None or self.task in (None, "rec"),
             f"--sampling applies to recommendation datasets only, not to a {self.task} task"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_json(cls, path) -> TrainConfig:
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        return cls.from_dict(d.get("config", d))
