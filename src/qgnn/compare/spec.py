"""The grid of `qgnn compare`: method specs ``name[:bits]``, prompt kinds, and the cells they make.

Every spec is checked before anything trains: an unknown method or prompt, a bit-width outside 1..8, bits on a
method that has none of its own (fp32; mixq, whose widths are searched), a spec listed twice. A method without
bits takes its validated default (:mod:`qgnn.recipes` through ``TrainConfig.resolve``): compare never
chooses a width itself.

``mixq`` is MixQ-GNN end to end (the search recipe of :class:`~qgnn.search.mixq.SearchConfig`, then the
fixed-bit training of the widths it found), not ``qgnn train --method mixq`` (the relaxed model alone).
The grid is methods x prompts; FP32 is the reference and runs once, without a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qgnn.catalog import PROMPTS as PROMPT_KINDS
from qgnn.errors import ConfigError, lookup

DEFAULT_METHODS = {"node": ["fp32", "qat:8", "lsq:4", "dq:4", "a2q", "mixq"],
                   "graph": ["fp32", "qat:8", "lsq:4", "dq:4", "a2q", "mixq"],
                   # the recommendation grid of docs/results.md: 2-bit embeddings, BiGeaR at its 1 bit
                   "rec": ["fp32", "qat:2", "lsq:2", "gnaq:2", "bigear"]}
# Start from the FP32 LightGCN: gnaq and bigear need it (qgnn.train.rec); qat and lsq fine-tune it as the
# documented recommendation rows do (and take the fine-tuning recipe, qgnn.recipes, from it).
PRETRAINED_METHODS = ("gnaq", "bigear", "qat", "lsq")


@dataclass(frozen=True)
class MethodSpec:
    method: str            # canonical name
    bits: int | None       # None: the method's recipe

    @property
    def search(self) -> bool:
        return self.method == "mixq"

    @property
    def label(self) -> str:
        return self.method + (f":{self.bits}" if self.bits is not None else "")

    @property
    def slug(self) -> str:
        return self.method + (str(self.bits) if self.bits is not None else "")


def _methods(task: str) -> dict:
    if task == "rec":
        from qgnn.train.rec import REC_METHODS

        return dict(REC_METHODS)
    from qgnn.methods import method_names

    return {m: m for m in method_names()}


def parse_method(text: str, task: str) -> MethodSpec:
    """``name[:bits]`` -> MethodSpec; raises a one-line QgnnError naming the valid choices."""
    name, sep, bits_text = str(text).partition(":")
    method = lookup("recommendation method" if task == "rec" else "method", name, _methods(task))
    if not sep:
        return MethodSpec(method, None)
    if method == "fp32":
        raise ConfigError(f"method spec {text!r}: fp32 has no bit-width (write 'fp32')")
    if method == "mixq":
        raise ConfigError(f"method spec {text!r}: mixq searches its widths (write 'mixq'; the candidates are "
                          "the search recipe's)")
    try:
        bits = int(bits_text)
    except ValueError:
        raise ConfigError(f"method spec {text!r}: bits must be an integer in 1..8, got {bits_text!r}") from None
    if not 1 <= bits <= 8:
        raise ConfigError(f"method spec {text!r}: bits must be in 1..8, got {bits}")
    return MethodSpec(method, bits)


def parse_prompt(text: str) -> str:
    return lookup("prompt", text, {k: k for k in PROMPT_KINDS})


@dataclass
class Grid:
    """The validated request: what to train and where its cells live."""

    dataset: str
    model: str
    task: str
    methods: list[MethodSpec]
    prompts: list[str]
    out_dir: Path
    seeds: int | None = None
    seed: int = 0
    folds: int | None = None
    epochs: int | None = None
    search_epochs: int | None = None
    device: str = "cpu"
    pretrained: str | None = None
    k: int = 20

    @property
    def cells_dir(self) -> Path:
        return self.out_dir / "cells"


def grid_from_args(args) -> Grid:
    """Validate the command line (names, specs, options per task) into a Grid; nothing is loaded."""
    from qgnn.train.rec_metrics import KS
    from qgnn.train.runner import _dataset_task

    task = _dataset_task(args.dataset)
    model = args.model or ("lightgcn" if task == "rec" else "gcn")
    specs = [parse_method(m, task) for m in (args.methods or DEFAULT_METHODS[task])]
    seen = set()
    for s in specs:
        if s.slug in seen:
            raise ConfigError(f"--methods lists {s.label} twice")
        seen.add(s.slug)
    prompts = list(dict.fromkeys(parse_prompt(p) for p in (args.prompts or ["none"])))
    if task == "rec" and prompts != ["none"]:
        raise ConfigError("--prompts apply to node and graph models; a recommendation model takes none")
    if args.folds is not None and task != "graph":
        raise ConfigError(f"--folds applies to graph datasets; {args.dataset} is a {task} dataset")
    if args.k is not None and task != "rec":
        raise ConfigError(f"--k applies to recommendation datasets; {args.dataset} is a {task} dataset")
    if args.k is not None and args.k not in KS:
        raise ConfigError(f"--k must be one of {', '.join(map(str, KS))} (the K the runner evaluates), got {args.k}")
    if args.pretrained is not None and task != "rec":
        raise ConfigError("--pretrained applies to recommendation datasets (gnaq, bigear)")
    if args.pretrained is not None and not Path(args.pretrained).is_file():
        raise ConfigError(f"--pretrained {args.pretrained}: no such file")
    if args.search_epochs is not None and args.search_epochs < 1:
        raise ConfigError(f"--search-epochs must be >= 1, got {args.search_epochs}")
    # FP32 is the reference of every row: it runs first (and, for gnaq / bigear, provides their checkpoint).
    specs.sort(key=lambda s: s.method != "fp32")
    out_dir = Path(args.out_dir or f"runs/compare-{args.dataset.lower()}-{model.lower()}")
    return Grid(dataset=args.dataset, model=model, task=task, methods=specs, prompts=prompts, out_dir=out_dir,
                seeds=args.seeds, seed=args.seed, folds=args.folds, epochs=args.epochs,
                search_epochs=args.search_epochs, device=args.device, pretrained=args.pretrained, k=args.k or 20)


def cell_name(spec: MethodSpec, prompt: str) -> str:
    return spec.slug + ("" if prompt == "none" else f"-{prompt}")


def build_cells(grid: Grid) -> list[tuple]:
    """[(Cell, MethodSpec, prompt)] in table order; every cell's config checked (names, ranges, recipes)."""
    import dataclasses

    from qgnn.grid import Cell, fingerprint
    from qgnn.recipes import search_recipe
    from qgnn.search.mixq import SearchConfig
    from qgnn.train import TrainConfig
    from qgnn.train.config import check_names

    base = TrainConfig(dataset=grid.dataset, model=grid.model, seeds=grid.seeds, seed=grid.seed, folds=grid.folds,
                       epochs=grid.epochs, device=grid.device)
    fp32_ckpt = grid.cells_dir / "fp32.safetensors"
    rec = grid.task == "rec"
    needs_ckpt = rec and any(s.method in PRETRAINED_METHODS for s in grid.methods) and grid.pretrained is None
    if needs_ckpt and not any(s.method == "fp32" for s in grid.methods):
        raise ConfigError("gnaq, bigear, qat and lsq start from an FP32 LightGCN: put fp32 in --methods (its "
                          "checkpoint is used) or pass --pretrained CKPT")
    out = []
    for spec in grid.methods:
        for prompt in (["none"] if spec.method == "fp32" else grid.prompts):
            cfg = dataclasses.replace(base, method="fp32" if spec.search else spec.method, bits=spec.bits,
                                      prompt={} if prompt == "none" else {"kind": prompt})
            save = None
            if rec and spec.method in PRETRAINED_METHODS:
                cfg.quant = {"pretrained": grid.pretrained or str(fp32_ckpt)}
            elif spec.method == "fp32" and needs_ckpt:
                save = fp32_ckpt
            check_names(cfg)
            search = (SearchConfig(search_epochs=grid.search_epochs,
                                   **search_recipe(grid.dataset, grid.model).settings) if spec.search else None)
            cell = Cell(cell_name(spec, prompt), cfg, search=search, save=save)
            fingerprint(cell)  # resolves with today's recipes: a bad combination fails here, before training
            out.append((cell, spec, prompt))
    return out
