"""The `qgnn` command line: `qgnn train`, `search`, `sweep`, `export`, `eval`, `compare`, `info`.

User errors (unknown names, missing files, corrupt checkpoints, bad values, outputs that cannot be
written, a device this torch lacks) print one line `qgnn: error: ...` and exit with status 2; Ctrl-C saves
a resume state and exits with status 130.

Building the parser imports neither torch, PyG nor numpy (`qgnn --help` answers in well under a second):
each subcommand module registers its options with names from :mod:`qgnn.catalog` and imports its work
when it runs. A new subcommand is one more entry of :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from qgnn.errors import QgnnError

# (module, function(subparsers)) registering each subcommand, in the order `qgnn --help` lists them.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("qgnn.cli", "add_train_parser"),
    ("qgnn.search.cli", "add_parsers"),   # search, sweep
    ("qgnn.export.cli", "add_parsers"),   # export, eval
    ("qgnn.compare", "add_parsers"),      # compare
    ("qgnn.cli", "add_info_parser"),
)


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default shown once: appended as "(default: X)" unless the help text already states it
    (says "default"), and never for None, False or [] (unset, a flag, an empty repeatable option: the help
    says what unset means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if ("default" in text or not action.option_strings or unset or action.default == []
                or action.nargs == 0):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose subparsers all use :class:`HelpFormatter` unless they ask for another."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def add_output_arguments(parser, default_out: str, what: str = "run", checkpoint: str = "the selected model") -> None:
    """The output options every training command shares (train, search): --out, --save, --resume, --overwrite."""
    parser.add_argument("--out", default=None, help=f"results JSON (default: {default_out})")
    parser.add_argument("--save", default=None, help=f"checkpoint of {checkpoint} (safetensors)")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue an interrupted {what} of the same command (its state: <out>.state.pt)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"start over, deleting an interrupted {what}'s state (<out>.state.pt) instead of refusing")


def add_train_parser(sub) -> None:
    from qgnn.catalog import MODELS, PROMPTS

    p = sub.add_parser("train", help="train a model (several seeds or CV folds) and report mean ± std")
    recipe = "(default: the model's recipe)"
    p.add_argument("--dataset", default="cora", help="dataset name, case-insensitive (see `qgnn info`)")
    p.add_argument("--model", default="gcn", help=f"{' | '.join(MODELS['node'])} (node); "
                                                  f"{' | '.join(MODELS['graph'])} (graph); "
                                                  f"{' | '.join(MODELS['rec'])} (recommendation)")
    p.add_argument("--method", default="fp32",
                   help="fp32 (no quantization) | qat (uniform, STE) | lsq (learned step) | dq (Degree-Quant) | "
                        "a2q (learned per-node bits) | mixq (relaxed widths; see `qgnn search`); recommendation: "
                        "fp32 | qat | lsq | gnaq | bigear")
    p.add_argument("--bits", type=int, default=None,
                   help="bit-width of weights and activations, 1..8; 32 = float (default: the method's validated "
                        "recipe, else 8; none for fp32)")
    p.add_argument("--seeds", type=int, default=None, help="runs per fold (default: 10 node, 1 graph and rec)")
    p.add_argument("--seed", type=int, default=0, help="first seed; run r uses seed + r")
    p.add_argument("--folds", type=int, default=None,
                   help="graph tasks: how many of the 10 CV folds to run (default: 10)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the stratified fold assignment")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs per run {recipe}")
    p.add_argument("--lr", type=float, default=None, help=f"Adam learning rate {recipe}")
    p.add_argument("--weight-decay", type=float, default=None, help=f"Adam weight decay {recipe}")
    p.add_argument("--patience", type=int, default=None,
                   help=f"early stopping: validations without improvement {recipe}")
    p.add_argument("--eval-every", type=int, default=1,
                   help="validate every N epochs and after the last (patience counts validations)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="graphs (graph tasks), BPR triples (recommendation) or seed nodes of a sampled mini-batch "
                        "(node tasks, which otherwise train full-batch) per batch (default: the model's recipe, else "
                        "32; node tasks: full batch, or 1024 with --fanout)")
    p.add_argument("--fanout", type=int, nargs="+", default=None, metavar="N",
                   help="node tasks: train on sampled mini-batches, N in-neighbours sampled per node at each layer "
                        "(one per layer, -1 = all; --batch-size alone samples all); unset: full-batch training")
    p.add_argument("--hidden", type=int, default=None, help=f"hidden width of the model {recipe}")
    p.add_argument("--layers", dest="num_layers", type=int, default=None, help=f"number of GNN layers {recipe}")
    p.add_argument("--dropout", type=float, default=None, help=f"dropout probability {recipe}")
    p.add_argument("--node-features", default="auto", choices=["auto", "degree", "constant"],
                   help="features for TU graphs that have none")
    p.add_argument("--normalize-features", action=argparse.BooleanOptionalAction, default=None,
                   help="row-normalise node features (default: on for node tasks, off for sbm-*'s dense features)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps")
    p.add_argument("--prompt", default=None, choices=list(PROMPTS),
                   help="prompts injected after quantization (docs/prompts.md; default: none)")
    p.add_argument("--prompt-k", type=int, default=None, help="basis prompts of GPF-plus / LoRAP (default: 40)")
    p.add_argument("--prompt-rank", type=int, default=None, help="rank r of LoRAP's basis prompts (default: 2)")
    p.add_argument("--prompt-lr", type=float, default=None,
                   help="learning rate of the prompts (default: the prompt recipe, else --lr)")
    p.add_argument("--prompt-weight-decay", type=float, default=None,
                   help="weight decay of the prompts (default: the run's)")
    p.add_argument("--prompt-align", type=float, default=None,
                   help="weight of the aggregation-alignment loss of LoRAP (docs/prompts.md; default: 0, off)")
    p.add_argument("--prompt-after-quant", action=argparse.BooleanOptionalAction, default=None,
                   help="GPF / GPF-plus on the first layer's quantized input (--prompt-after-quant) or in front of "
                        "its quantizer (--no-prompt-after-quant) (default: the prompt recipe, qgnn.recipes)")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the prompts")
    p.add_argument("--backbone", default=None, help="host checkpoint (--save) to start the backbone from")
    p.add_argument("--root", default=None, help="data folder (default: $QGNN_DATA, else the user cache)")
    p.add_argument("--config", default=None, help="a JSON config (or results file) to start from")
    add_output_arguments(p, "runs/<dataset>-<model>-<method>[-w<bits>][-<prompt>][-mb].json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    r = p.add_argument_group("recommendation (--model lightgcn; methods fp32 | qat | lsq | gnaq | bigear)")
    r.add_argument("--pretrained", default=None, help="FP32 LightGCN checkpoint to start from (gnaq, bigear)")
    r.add_argument("--sampling", default=None, choices=["user", "interaction"],
                   help="BPR pairs per epoch: a uniform user, then one of its items (user, the default, as "
                        "LightGCN), or every training interaction once")
    r.add_argument("--val-frac", type=float, default=None,
                   help="share of each user's training items carved for validation (default: 0.1; 0: a refit "
                        "on all of them for exactly --epochs, the last epoch reported)")
    r.add_argument("--test-curve", action="store_true",
                   help="with --val-frac 0: also record the test metrics every --eval-every epochs in the history "
                        "(a record for reading off a validated run's epoch; nothing is selected from it)")
    p.add_argument("--method-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, any task: e.g. p_max=0.3 (dq), target_avg_bits=3 (a2q), lambda_rank=0.5 "
                        "(gnaq); repeatable; the method's config names the valid ones (docs/methods.md)")
    r.add_argument("--static-intervals", action="store_true", help="GNAQ ablation: per-node levels frozen")
    r.add_argument("--ste", action="store_true", help="GNAQ ablation: straight-through codes instead of RAU")
    r.add_argument("--no-lambdaloss", action="store_true", help="GNAQ ablation: BPR only (lambda_rank = 0)")
    p.set_defaults(func=cmd_train)


def _config_from_args(args):
    from qgnn.train import TrainConfig

    base = TrainConfig.from_json(args.config).to_dict() if args.config else {}
    explicit = {k: getattr(args, k) for k in (
        "dataset", "model", "method", "bits", "seeds", "seed", "folds", "fold_seed", "epochs", "lr",
        "weight_decay", "patience", "eval_every", "batch_size", "fanout", "sampling", "hidden", "num_layers", "dropout",
        "node_features", "normalize_features", "device")}
    if args.config:  # values given on the command line win over the file; defaults do not
        defaults = vars(build_parser().parse_args(["train"]))
        explicit = {k: v for k, v in explicit.items() if v != defaults.get(k)}
    base.update(explicit)
    base.pop("task", None)
    base["prompt"] = _prompt_from_args(args, dict(base.get("prompt") or {}))
    _rec_options(args, base)
    return TrainConfig.from_dict(base)


def _rec_options(args, base: dict) -> None:
    """--pretrained and the method options / GNAQ ablation flags (recommendation only) go to config["quant"]."""
    import json

    from qgnn.errors import ConfigError

    opts = {}  # --method-opt: any method's options (checked by its typed config: a misspelt one is an error)
    for item in getattr(args, "method_opt", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--method-opt wants KEY=VALUE, got {item!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    given = {}
    for flag, key, value in (("static_intervals", "dynamic", False), ("ste", "estimator", "ste"),
                             ("no_lambdaloss", "lambda_rank", 0.0)):
        if getattr(args, flag, False):
            given[key] = value
    pretrained = getattr(args, "pretrained", None)
    val_frac = getattr(args, "val_frac", None)
    test_curve = getattr(args, "test_curve", False)
    if opts:
        base["quant"] = {**(base.get("quant") or {})}
        base["quant"]["options"] = {**(base["quant"].get("options") or {}), **opts}
    if not (given or pretrained or val_frac is not None or test_curve):
        return
    from qgnn.data.registry import dataset_task

    if dataset_task(base.get("dataset", "cora")) != "rec":
        raise ConfigError("--pretrained, --val-frac, --test-curve, --static-intervals, --ste and --no-lambdaloss "
                          "apply to recommendation datasets (--model lightgcn) only")
    quant = dict(base.get("quant") or {})
    if given:
        quant["options"] = {**(quant.get("options") or {}), **given}
    if pretrained:
        quant["pretrained"] = pretrained
    if val_frac is not None:
        quant["val_frac"] = val_frac
    if test_curve:
        quant["test_curve"] = True
    base["quant"] = quant


def _prompt_from_args(args, prompt: dict) -> dict:
    from qgnn.errors import ConfigError

    for key, value in (("kind", args.prompt), ("k", args.prompt_k), ("rank", args.prompt_rank),
                       ("backbone", args.backbone), ("lr", args.prompt_lr),
                       ("weight_decay", args.prompt_weight_decay), ("align", args.prompt_align)):
        if value is not None:
            prompt[key] = value
    if args.freeze_backbone:
        prompt["freeze_backbone"] = True
    if args.prompt_after_quant is not None:
        prompt["node_after_quant"] = args.prompt_after_quant
    if prompt and "kind" not in prompt:
        raise ConfigError("--prompt-k, --prompt-rank, --prompt-lr, --prompt-weight-decay, --prompt-align, "
                          "--prompt-after-quant, --freeze-backbone and --backbone need --prompt")
    return {} if prompt.get("kind") == "none" else prompt


def _is_node(cfg) -> bool:
    from qgnn.train.runner import _dataset_task

    try:
        return _dataset_task(cfg.dataset) == "node"
    except Exception:  # an unknown name is reported by check_names, before this is asked
        return False


def _launched() -> bool:
    """Whether this process is one rank of several under torchrun (its WORLD_SIZE says so)."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


def cmd_train(args) -> int:
    from qgnn.grid import stop_on_sigint
    from qgnn.train import Control, run_experiment
    from qgnn.train.config import check_names
    from qgnn.train.outputs import OutputWriteError
    from qgnn.train.results import format_table

    cfg = _config_from_args(args)
    check_names(cfg)
    bits = f"-w{cfg.bits}" if cfg.bits else ""
    bits += f"-{cfg.prompt['kind']}" if cfg.prompt else ""
    bits += "-mb" if cfg.fanout or (cfg.batch_size and _is_node(cfg)) else ""  # sampled mini-batches
    out = Path(args.out or f"runs/{cfg.dataset.lower()}-{cfg.model.lower()}-{cfg.method.lower()}{bits}.json")
    control = Control()
    launched = _launched()
    try:
        with stop_on_sigint(control, launched=launched):
            results = run_experiment(cfg, root=args.root, out=out, save=args.save, resume=args.resume,
                                     overwrite=args.overwrite, progress=False if args.quiet else None,
                                     control=control)
    except OutputWriteError as e:  # the run finished: show it before the line saying where it went
        if e.results:
            print(format_table(e.results))
        raise
    if launched and os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports and writes
    print(format_table(results))
    print(f"results: {out}" + (f"\ncheckpoint: {args.save}" if args.save else ""))
    return 0


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="versions, optional backends and the names qgnn knows")
    p.add_argument("--torch", action="store_true",
                   help="import torch for exact figures (thread count, GPU names); slower by the torch import")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    """Without --torch nothing heavy is imported (versions from package metadata, names from qgnn.catalog)."""
    from qgnn.catalog import DATASETS, METHODS, MODELS, REC_METHODS
    from qgnn.data.paths import cache_dir, resolve_root
    from qgnn.env import backends, environment, light_environment

    env = environment() if args.torch else light_environment()
    print(f"qgnn {env['qgnn']}  torch {env['torch']}  torch_geometric {env['torch_geometric']}  "
          f"python {env['python']}")
    print(f"commit {env['git_commit']}  machine {env['machine']}  cpus {env['cpu_count']}  "
          f"torch threads {env['torch_threads']}")
    print("backends:")
    found = backends(probe_torch=args.torch)
    width = max(map(len, found))
    for name, (ok, why) in found.items():
        print(f"  {name:<{width}} {'yes' if ok else 'no ':<4} {why}")
    for task in ("node", "graph", "rec"):
        print(f"{task} datasets: {', '.join(DATASETS[task])}")
    print(f"node models: {', '.join(MODELS['node'])}; graph models: {', '.join(MODELS['graph'])}")
    print(f"methods: {', '.join(METHODS)}")
    print(f"recommendation models: {', '.join(MODELS['rec'])}; methods: {', '.join(REC_METHODS)}")
    print(f"data root: {resolve_root(None)}  cache: {cache_dir()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (:data:`SUBCOMMANDS`); imports no torch."""
    parser = _Parser(prog="qgnn", description="Low-bit graph neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module, function in SUBCOMMANDS:
        getattr(importlib.import_module(module), function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qgnn.data.paths import ROOT_OPTION

    args = build_parser().parse_args(argv)
    token = ROOT_OPTION.set("--root DIR")  # the missing-data advice names the flag, not the Python argument
    launched = _launched()
    try:
        if launched and args.command != "train":
            from qgnn.errors import ConfigError

            raise ConfigError(f"`qgnn {args.command}` runs in one process; only `qgnn train` runs under torchrun "
                              "(docs/distributed.md)")
        return args.func(args)
    except QgnnError as e:
        runner = sys.modules.get("qgnn.train.runner")  # an Interrupted can only come from a loaded runner
        interrupted = runner is not None and isinstance(e, runner.Interrupted)
        rank = os.environ.get("RANK", "0") if launched else "0"
        if not (interrupted and rank != "0"):  # under torchrun: rank 0 reports the stop; errors name their rank
            who = "qgnn" if rank == "0" else f"qgnn[rank {rank}]"
            print(f"{who}: {'interrupted' if interrupted else 'error'}: {e}", file=sys.stderr)
        return 130 if interrupted else 2
    except BrokenPipeError:  # stdout's reader went away (`qgnn eval m | head -3`): stop quietly, as cat does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush would raise again
        except (OSError, ValueError):  # a stdout without a file descriptor (captured in tests)
            pass
        return 141  # 128 + SIGPIPE, the shell's status of a command killed by a closed pipe
    except KeyboardInterrupt:  # a second Ctrl-C (abort without saving), or one outside a training loop
        print("qgnn: interrupted: aborted by Ctrl-C (a resume state saved before it, if any, is kept)",
              file=sys.stderr)
        return 130
    finally:
        ROOT_OPTION.reset(token)


if __name__ == "__main__":
    raise SystemExit(main())
