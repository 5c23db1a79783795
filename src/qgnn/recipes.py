"""Validated recipes: what a flag left unset means, for methods, the MixQ search and prompts.

The model recipes (lr, weight decay, epochs, hidden width: :mod:`qgnn.models.registry`) are the published
FP32 ones. This table adds, on top of them, the settings docs/results.md selected *on validation data* for
each quantization method, the MixQ-GNN search and the prompts, so that the plain command reaches the
documented figure (``qgnn train --dataset Cora --model gcn --method a2q`` is A2Q at its validated setting,
not A2Q starting from 8 bits). Every value a recipe fills in is written into the run's ``config`` (results
JSON, checkpoint metadata, resume state), together with the names of the recipes that applied
(``config["recipes"]``), so a results file says what ran and ``qgnn train --config`` repeats it.

A value the user gives always wins: a recipe only fills fields that are unset (``None``) or option keys
that are absent.

Entries are keyed by (method, task, model); ``"*"`` matches any task or model and the most specific match
wins (model beats task beats ``"*"``). Each entry names the section of docs/results.md (or docs/notes/)
that validated it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

__all__ = ["SEARCH", "DatasetRecipe", "MethodRecipe", "PromptRecipe", "SearchRecipe", "dataset_recipe", "method_recipe",
           "prompt_recipe", "search_recipe", "apply_dataset_recipe", "apply_method_recipe", "apply_prompt_recipe",
           "apply_train_recipe", "recipe_notes", "RECIPES"]


@dataclass(frozen=True)
class MethodRecipe:
    """Defaults of one quantization method: ``bits`` when --bits is not given, and method options."""

    name: str
    bits: int | None = None
    options: dict = field(default_factory=dict)
    why: str = ""
    train: dict = field(default_factory=dict)   # TrainConfig fields (lr, epochs, patience) where unset
    when_pretrained: bool = False               # applies only to a run that starts from --pretrained


@dataclass(frozen=True)
class DatasetRecipe:
    """Training defaults of one dataset family where the model's published recipe (its TU / Planetoid setting)
    does not fit: TrainConfig fields filled where unset, after the method's ``train`` and before the model's; and
    ``quant`` keys (e.g. ``overrides``) a quantized method's config gets where it has none of its own."""

    name: str
    train: dict = field(default_factory=dict)
    why: str = ""
    quant: dict = field(default_factory=dict)   # TrainConfig.quant keys filled where absent, quantized methods only
    search: dict = field(default_factory=dict)  # SearchConfig fields of the search on this dataset (search_recipe)
    model: dict = field(default_factory=dict)   # TrainConfig.model_kwargs keys filled where absent
    methods: dict = field(default_factory=dict)  # {method: its options}, filled where the config has none of its own


@dataclass(frozen=True)
class SearchRecipe:
    """Defaults of ``qgnn search`` / ``qgnn sweep`` (fields of :class:`qgnn.search.mixq.SearchConfig`)."""

    name: str
    settings: dict = field(default_factory=dict)
    why: str = ""


@dataclass(frozen=True)
class PromptRecipe:
    """Defaults of a prompt on a host method (keys of ``TrainConfig.prompt``: ``lr``, ``node_after_quant``...)."""

    name: str
    settings: dict = field(default_factory=dict)
    why: str = ""
    note: str = ""   # printed under the results table where the recipe is known to cost accuracy


# -- the MixQ-GNN search ------------------------------------------------------------------------------
# docs/notes/mixq.md: on Cora GCN (5 seeds) weights {2, 4, 8} with activations {4, 8}, α at
# lr 0.05 on the validation loss, λ = 50, then Degree-Quant training of the found widths has the best mean
# validation accuracy of every searched setting (80.12) at twice INT4's BitOPs reduction (125.6x; test
# 81.58 ± 0.98); the library's former default ({2, 4, 8} everywhere, λ = 0.1, plain QAT) had 68.36 on
# validation. 2-bit activations (one scale per tensor over every node) cost 13-16 points where a 2-bit
# weight matrix (one scale per output channel) costs about one, hence the two candidate sets.
SEARCH = SearchRecipe(
    "mixq-w248-a48-dq",
    {"lam": 50.0, "candidates": (4, 8), "weight_candidates": (2, 4, 8), "alpha_lr": 0.05, "final_method": "dq"},
    why="best mean validation accuracy of the searched settings on Cora GCN (docs/notes/mixq.md)",
)

# -- methods ------------------------------------------------------------------------------------------
_METHODS: dict[tuple[str, str, str], MethodRecipe] = {
    # A2Q's bits are its *starting* width; the memory penalty pulls the average toward 2 bits. From 8 bits
    # the widths do not come down in 200 epochs; from 4 they do (Cora GCN, 3 seeds, docs/notes/defaults.md:
    # `--bits 8` and the plain command; 5 seeds from 4: 81.80 ± 0.45 at 2.08 bits, docs/notes/a2q.md).
    ("a2q", "*", "*"): MethodRecipe(
        "a2q-start4", bits=4,
        why="A2Q starts from 4 bits and learns its widths down to ~2 (docs/notes/a2q.md)"),
    # `qgnn train --method mixq` trains the relaxed model of the search; it uses the search's candidate sets
    # and λ so that it is the same model `qgnn search` trains in its first phase.
    # Recommendation: a quantized LightGCN fine-tunes an FP32 checkpoint (--pretrained). The rows of
    # docs/results.md ("Recommendation") fine-tune at lr 5e-3 for up to 15 epochs with patience 5, selected on
    # validation Recall@20 (GNAQ selects epoch 1-4 on ml-100k): the FP32 recipe's lr 1e-3 / 1000 epochs /
    # patience 50 is the training from scratch that the checkpoint already did.
    **{(m, "rec", "*"): MethodRecipe(
        f"{m}-finetune-lr5e-3-15ep", train={"lr": 5e-3, "epochs": 15, "patience": 5}, when_pretrained=True,
        why="the fine-tuning budget of the recommendation rows (docs/notes/recsys.md)")
       for m in ("qat", "lsq", "bigear")},
    # GNAQ keeps that budget and stores its per-node levels in FP8 (e4m3, 1 byte each), as the paper does: 2-bit
    # GNAQ at d = 64 is then 12.8x instead of 8x. FP8 levels kept validation Recall@20 within 0.5 % of float32
    # levels (3 seeds, 2 bits: ml-100k 0.3397 vs 0.3392, Last.fm 0.2644 vs 0.2654; docs/results.md, "GNAQ with
    # FP8 levels"; benchmarks/gnaq_fp8.py).
    ("gnaq", "rec", "*"): MethodRecipe(
        "gnaq-finetune-lr5e-3-15ep-fp8", options={"level_dtype": "fp8"},
        train={"lr": 5e-3, "epochs": 15, "patience": 5}, when_pretrained=True,
        why="the fine-tuning budget of the recommendation rows (docs/notes/recsys.md); FP8 levels as the paper "
            "stores them, within 0.5 % of float32 levels on validation (docs/results.md, GNAQ with FP8 levels)"),
    ("mixq", "*", "*"): MethodRecipe(
        "mixq-w248-a48",
        options={"candidates": [4, 8], "weight_candidates": [2, 4, 8], "lambda": 50.0},
        why="the search recipe's candidate sets and λ (docs/notes/mixq.md)"),
}

# -- datasets: graph regression on molecules ------------------------------------------------------------
# GIN's TU recipe (dropout 0.5 on each layer's readout, lr 0.01 halved every 50 epochs, 350 epochs, 10 folds) is
# for classification; a regression output is one number, and dropout on it is noise on the prediction.
# Dropout 0, Adam at a constant lr. lr and batch size come from a small ad-hoc probe on ESOL GIN (FP32, 100 epochs,
# 2 splits, validation RMSE; not a benchmark cell, so no figure of it is quoted): lr 1e-3 beat 3e-3, and batch 32
# was marginally better than 64 at 1.8x the seconds per epoch, so 64 was kept for the cost of the 5-split grid.
# The recipe's own figures are the benchmark's (docs/results.md "Graph regression on molecules").
# The selected epoch was 82-86 of 100. 5 seeded random 80 / 10 / 10 splits (qgnn.data.molecules).
_MOLECULE_TRAIN = {"folds": 5, "epochs": 100, "lr": 1e-3, "lr_step": 0, "batch_size": 64, "dropout": 0.0,
                   "patience": 100, "weight_decay": 0.0}
# Quantized methods keep the readout heads' *input* (the pooled node features of each layer) in float; their
# weights are quantized as everywhere else. Chosen when the readout summed the nodes (before _MOLECULE_MODEL's mean
# pooling; not measured again since, and it costs almost no BitOPs): a sum over a molecule's atoms grows with its
# size (ESOL: 1 to 55 atoms), so one per-tensor activation range cannot serve every molecule: the EMA of batch
# maxima (QAT) or the
# 0.999 percentile (Degree-Quant) sits near the typical batch's largest molecule and clips the larger ones, in
# training and at test, and a range covering them is coarse for the small ones.
# ESOL GIN QAT 8, 5 splits (docs/results.md "Graph regression on molecules", benchmarks/molecules.py): with the
# readout input quantized, train MAE 0.702 (FP32 0.578) and validation RMSE 0.989 (FP32 0.922, +7.3 %); float,
# 0.585 and 0.947 (+2.7 %). The readout is ~500 MACs per molecule against ~640k in the convolutions, so BitOPs
# hardly change (15.96x -> 15.92x; the cost report counts those inputs at 32 bits).
_MOLECULE_QUANT = {"overrides": {r"heads\.\d+": {"slots": ["weight"]}}}
# The search on molecules: weights {4, 8} (no 2-bit weights) and λ 5. The general recipe (λ 50, weights {2, 4, 8},
# chosen on Cora's cross-entropy) puts most GIN MLP weights at 2 bits on ESOL and the Degree-Quant training of
# those widths underfits. ESOL GIN, 5 splits, 30 search epochs, validation MAE / RMSE (docs/results.md, graph
# regression on molecules): general recipe 0.940 / 1.273, λ 5 alone 0.955 / 1.280, weights {4, 8} with λ 5
# 0.713 / 0.959 (6.9x linear reduction, between INT8 and INT4); dq 4 0.737 / 1.010, FP32 0.648 / 0.922.
_MOLECULE_SEARCH = {"lam": 5.0, "weight_candidates": (4, 8)}
# Mean pooling of each layer's node features for the readout, where GIN's TU recipe sums them. A sum grows with the
# molecule, and a test molecule larger than every training one is an extrapolation: Lipophilicity's split 3 holds
# two test molecules of up to 115 heavy atoms where its largest training molecule has 72, and its FP32 test RMSE
# with sum pooling is 1.171 against 0.60-0.79 on the other splits. GIN FP32, 5 splits, sum / mean: ESOL validation
# MAE 0.648 / 0.482, RMSE 0.922 / 0.671 (test RMSE 0.958 / 0.722); Lipophilicity validation MAE (the selection
# metric) 0.525 / 0.495 (test RMSE 0.789 / 0.626), validation RMSE 0.769 / 0.872 (three splits' validation sets
# hold molecules the mean-pooled model misses by more). OGB's and chemprop's molecule baselines average too.
_MOLECULE_MODEL = {"pooling": "mean"}
# FreeSolv trains 200 epochs: with 513 training molecules an epoch is about 8 steps, and at 100 epochs GIN dq 4
# had its best validation epoch at 94-98 on three of five splits. GIN, the 5 splits, 100 against 200 epochs
# (patience = epochs), validation MAE: FP32 0.787 / 0.739, dq 4 0.826 / 0.771 (docs/results.md section 8; the
# 200-epoch files in benchmarks/results/molecules/probes/). ESOL (about 15 steps an epoch) and Lipophilicity (53)
# keep 100.
_MOLECULE_EPOCHS = {"freesolv": 200}
_DATASETS: dict[tuple[str, str], DatasetRecipe] = {
    (name, "*"): DatasetRecipe(
        f"molecules-l1-{_MOLECULE_EPOCHS.get(name, 100)}ep-mean",
        dict(_MOLECULE_TRAIN, epochs=_MOLECULE_EPOCHS.get(name, 100), patience=_MOLECULE_EPOCHS.get(name, 100)),
        why="validation RMSE of GIN on ESOL, FP32 and QAT 8 (docs/results.md, graph regression on molecules); "
            "the search: validation MAE of GIN on ESOL" + (
                "; 200 epochs: validation MAE of GIN FP32 and dq 4 on FreeSolv" if name in _MOLECULE_EPOCHS else ""),
        quant=_MOLECULE_QUANT, search=_MOLECULE_SEARCH, model=_MOLECULE_MODEL)
    for name in ("esol", "freesolv", "lipo", "zinc")
}

# -- datasets: dense node features --------------------------------------------------------------------------
# Degree-Quant takes its activation ranges at the 0.999 quantiles because bag-of-words inputs are mostly zeros
# (qgnn.methods.degree_quant: q = 0.99 clips Cora's features to 27 % accuracy). Graphs whose features are dense
# (qgnn.data.registry.DENSE_FEATURES: sbm, OGB, Reddit) have no such floor, and the tighter 0.99 range gives a
# 4-bit grid finer steps. Measured on sbm-100k, GCN-256, trimmed mini-batches, one seed each, validation
# accuracy 0.999 / 0.99 (docs/distributed.md, docs/results.md section 6): dq 4, fanout [10, 5], 10 epochs,
# 75.21 / 81.25 (0.995: 80.78); dq 4, fanout [15, 10], 20 epochs, 80.68 / 81.69; dq 8, fanout [10, 5], 10 epochs,
# 83.02 / 82.92 (no difference at 8 bits). OGB and Reddit share the reason but were not measured here.
_DENSE = DatasetRecipe(
    "dense-features-dq-p0.99", methods={"dq": {"percentile": 0.99}},
    why="validation accuracy of dq 4 on sbm-100k, 0.999 against 0.99 quantile ranges (docs/distributed.md); "
        "dense features have no mostly-zero inputs for a tighter range to clip")

# -- prompts ------------------------------------------------------------------------------------------
# docs/notes/prompts-grid.md "Prompts on INT4 hosts": the 24-cell grid at one setting (prompt lr 1e-3 in an Adam group
# of its own, the GPF-plus node prompt on the first layer's quantized input) against the library's former
# defaults (the host's lr, the node prompt in front of the input quantizer): GPF-LoRAP beat its host in 8
# of 24 cells at that setting and in 0 of 9 at the former one.
_PROMPT_DEFAULT = PromptRecipe("prompt-lr1e-3-after-quant", {"lr": 1e-3, "node_after_quant": True},
                               why="the prompt grid's setting (docs/notes/prompts-grid.md, Prompts on INT4 hosts)")
# Plain-QAT hosts (EMA min / max ranges) are where the grid's setting hurts: on validation GPF-LoRAP lost
# 0.6-11 points to the host in every QAT cell (GIN Cora 39.68 against 50.84). Measured on Cora, 3 seeds, mean
# validation accuracy, host / GPF-LoRAP at prompt lr 1e-3 with the node prompt after / in front of the input
# quantizer (docs/notes/prompts-grid.md, "Prompts on plain-QAT hosts"; benchmarks/defaults.py --probe-only):
#   GIN 49.47 / 40.47 / 51.20; GAT 57.80 / 49.73 / 58.07; GCN 78.33 / 75.60 / 72.07.
# So QAT hosts put the node prompt in front of the quantizer (its range then covers the prompted input),
# except GCN, where every setting measured lost on validation (LoRAP alone too, at prompt lr 1e-4: 77.72
# against 78.52, 5 seeds, the prompt-lr table of docs/notes/prompts-grid.md) and the least harmful one is
# kept, with a note under the results table. SAGE was not measured: it takes the GIN / GAT entry (an
# extrapolation, said in docs/prompts.md).
# Checked on CiteSeer, which did not choose it (3 seeds, validation): GAT 72.07 / 69.53 / 70.40, GCN 70.80 /
# 68.07 / 68.27: no setting is harmless there, the GAT entry is still the less harmful one and GCN's two are
# within noise of each other. Hence the note every QAT-host prompt prints.
_PROMPT_QAT = PromptRecipe(
    "prompt-qat-lr1e-3-before-quant", {"lr": 1e-3, "node_after_quant": False},
    why="on plain-QAT GIN / GAT hosts the node prompt in front of the input quantizer did no harm on Cora's "
        "validation split and the least harm on CiteSeer's (docs/notes/prompts-grid.md)",
    note="on plain-QAT hosts prompts beat the host on validation only for GIN and GAT on Cora (with this "
         "setting); on CiteSeer they cost 1.7 to 2.7 points. Prompts help on dq, a2q and mixq hosts "
         "(docs/prompts.md)")
_PROMPT_QAT_GCN = PromptRecipe(
    "prompt-qat-gcn-lr1e-3-after-quant", {"lr": 1e-3, "node_after_quant": True},
    why="the least harmful setting measured on a plain-QAT GCN host (docs/notes/prompts-grid.md)",
    note="on a plain-QAT GCN host no prompt setting measured beat the host on validation (3 seeds: 2.7 points "
         "below it at this setting on Cora and on CiteSeer); prompts help on dq, a2q and mixq hosts "
         "(docs/prompts.md)")
_PROMPTS: dict[tuple[str, str, str], PromptRecipe] = {
    ("*", "*", "*"): _PROMPT_DEFAULT,
    ("qat", "*", "*"): _PROMPT_QAT,
    ("qat", "*", "gcn"): _PROMPT_QAT_GCN,
}


def recipe_notes(names) -> list[str]:
    """The notes of the recipes named in a config's ``recipes`` (printed under the results table)."""
    table = {r.name: r for r in _PROMPTS.values()}
    return [table[n].note for n in names if n in table and table[n].note]


# Public, read-only reference data (exported in __all__; qgnn's own lookups read the tables, not this):
# every recipe in one place, for a user or a tool listing what the defaults are. "search": the SearchRecipe;
# "methods": {(method, task, model): MethodRecipe}; "prompts": {(host method, task, model): PromptRecipe};
# "*" in a key matches any task or model.
# "dense_features": the recipe of every qgnn.data.registry.DENSE_FEATURES dataset without one of its own.
RECIPES = {"search": SEARCH, "methods": _METHODS, "prompts": _PROMPTS, "datasets": _DATASETS,
           "dense_features": _DENSE}


def _lookup(table: dict, method: str, task: str | None, model: str | None):
    method, task, model = method.lower(), (task or "*").lower(), (model or "*").lower()
    for key in ((method, task, model), (method, "*", model), (method, task, "*"), (method, "*", "*"),
                ("*", task, model), ("*", "*", model), ("*", task, "*"), ("*", "*", "*")):
        if key in table:
            return table[key]
    return None


def method_recipe(method: str, task: str | None = None, model: str | None = None) -> MethodRecipe | None:
    """The recipe of ``method`` for (task, model), or None when the method has no validated defaults."""
    return _lookup(_METHODS, method, task, model)


def prompt_recipe(host_method: str, task: str | None = None, model: str | None = None) -> PromptRecipe | None:
    """The prompt defaults on a host quantized by ``host_method`` for (task, model)."""
    return _lookup(_PROMPTS, host_method, task, model)


def dataset_recipe(dataset: str, model: str | None = None) -> DatasetRecipe | None:
    """The training defaults of ``dataset`` (canonical name; aliases resolved) for ``model``, or None."""
    from qgnn.data.registry import ALIASES

    name = str(dataset).lower().replace("_", "-")
    name, model = ALIASES.get(name, name), (model or "*").lower()
    found = _DATASETS.get((name, model)) or _DATASETS.get((name, "*"))
    if found is None:
        from qgnn.data.registry import DENSE_FEATURES

        found = _DENSE if name in DENSE_FEATURES else None
    return found


def apply_dataset_recipe(cfg) -> str | None:
    """Fill the unset TrainConfig fields the dataset's recipe names, in place, its ``model`` keys the config's
    ``model_kwargs`` lack, and, for a quantized method, the ``quant`` keys it names that the config's ``quant``
    lacks (a user's ``overrides`` replace the recipe's whole) and the method's options (``methods``) that the
    config's ``quant["options"]`` lacks; returns its name if it filled any."""
    recipe = dataset_recipe(cfg.dataset, cfg.model)
    if recipe is None:
        return None
    filled = [k for k, v in recipe.train.items() if getattr(cfg, k) is None]
    for k in filled:
        setattr(cfg, k, recipe.train[k])
    model = [k for k in recipe.model if k not in cfg.model_kwargs]
    cfg.model_kwargs = {**cfg.model_kwargs, **{k: copy.deepcopy(recipe.model[k]) for k in model}}
    filled += model
    if cfg.method != "fp32":
        quant = [k for k in recipe.quant if k not in (cfg.quant or {})]
        if quant:
            cfg.quant = {**(cfg.quant or {}), **{k: copy.deepcopy(recipe.quant[k]) for k in quant}}
        filled += quant
    opts = recipe.methods.get(str(cfg.method).lower(), {})
    given = (cfg.quant or {}).get("options") or {}
    missing = [k for k in opts if k not in given]
    if missing:
        cfg.quant = {**(cfg.quant or {}), "options": {**{k: copy.deepcopy(opts[k]) for k in missing}, **given}}
        filled += missing
    return recipe.name if filled else None


def search_recipe(dataset: str | None = None, model: str | None = None) -> SearchRecipe:
    """The search's defaults (SearchConfig fields): the general recipe, with a dataset recipe's ``search`` fields
    over it where ``dataset`` has one (the molecules). ``qgnn search``, ``qgnn sweep`` and ``qgnn compare``'s mixq
    cells fill the options a command leaves unset from it; a SearchConfig built directly has the general recipe."""
    ds = dataset_recipe(dataset, model) if dataset is not None else None
    if ds is None or not ds.search:
        return SEARCH
    return SearchRecipe(f"{SEARCH.name}+{ds.name}", {**SEARCH.settings, **ds.search}, why=ds.why)


def apply_method_recipe(method: str, task: str | None, model: str | None, bits: int | None,
                        quant: dict) -> tuple[int | None, dict, str | None]:
    """(bits, quant, recipe name): ``bits`` and ``quant["options"]`` with the recipe's values where unset.
    (Its ``train`` fields are filled by :func:`apply_train_recipe`.)"""
    recipe = method_recipe(method, task, model)
    if recipe is None or (recipe.when_pretrained and not quant.get("pretrained")):
        return bits, quant, None
    quant = copy.deepcopy(quant)
    given = quant.get("options") or {}
    filled = [k for k in recipe.options if k not in given]
    if filled:
        quant["options"] = {**{k: copy.deepcopy(recipe.options[k]) for k in filled}, **given}
    used = filled or (bits is None and recipe.bits is not None)
    # the name is recorded only where the recipe filled something: a fully pinned config ran no recipe
    return (recipe.bits if bits is None else bits), quant, recipe.name if used else None


def apply_train_recipe(cfg) -> str | None:
    """Fill the unset TrainConfig fields the method's recipe names (``train``) in place, before the model's
    recipe fills the rest; returns the recipe's name if it filled any."""
    recipe = method_recipe(cfg.method, cfg.task, cfg.model)
    if recipe is None or not recipe.train or (recipe.when_pretrained and not cfg.quant.get("pretrained")):
        return None
    filled = [k for k, v in recipe.train.items() if getattr(cfg, k) is None]
    for k in filled:
        setattr(cfg, k, recipe.train[k])
    return recipe.name if filled else None


def apply_prompt_recipe(prompt: dict, host_method: str, task: str | None,
                        model: str | None) -> tuple[dict, str | None]:
    """(prompt, recipe name): the prompt dict with the recipe's settings where its keys are absent."""
    if not prompt or prompt.get("kind", "lorap") == "none":
        return prompt, None
    recipe = prompt_recipe(host_method, task, model)
    if recipe is None or all(k in prompt for k in recipe.settings):
        return prompt, None
    return {**recipe.settings, **prompt}, recipe.name
