"""`qgnn export run.ckpt model.qgnn.safetensors` and `qgnn eval model.qgnn.safetensors --dataset Cora`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


# The backends' names, here so that building the parser imports no torch; tests/cli checks they equal
# qgnn.export.intops.GEMM_BACKENDS / AGG_BACKENDS.
GEMM_CHOICES = ("auto", "reference", "int_mm", "float")
AGG_CHOICES = ("auto", "reference", "scipy", "float_csr")


def add_parsers(sub) -> None:
    from .evaluate import SPLITS

    p = sub.add_parser("export", help="pack a quantized checkpoint into an integer model file")
    p.add_argument("checkpoint", help="checkpoint of `qgnn train --method qat|lsq|dq|a2q --save` (LightGCN: "
                                       "--method gnaq|qat|lsq)")
    p.add_argument("out", help="output file, e.g. model.qgnn.safetensors (docs/format.md) or model.onnx")
    p.add_argument("--format", default="qgnn", choices=("qgnn", "onnx"),
                   help="qgnn: the packed file of qgnn's runtime; onnx: an ONNX model (integer ops) that "
                        "onnxruntime runs (docs/onnx.md; needs pip install 'qgnn[onnx]')")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="run an exported model (the integer runtime; onnxruntime for *.onnx): "
                                   "accuracy, latency, memory")
    p.add_argument("model", help="a file written by `qgnn export`: the packed file, run by qgnn's integer runtime, "
                                 "or an ONNX model (*.onnx), run by onnxruntime")
    p.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="which nodes / graphs are scored (graph tasks: the selected run's fold; all: every one)")
    p.add_argument("--repeats", type=_positive, default=5, help="timed passes; latency is their median")
    p.add_argument("--gemm", default="auto", choices=GEMM_CHOICES, help="int8 matmul backend")
    p.add_argument("--agg", default="auto", choices=AGG_CHOICES, help="integer aggregation backend")
    p.add_argument("--root", default=None, help="data folder (default: $QGNN_DATA, else the user cache)")
    p.add_argument("--fp32-reference", action="store_true",
                   help="also run the same architecture as plain PyG FP32 layers with the dequantized weights "
                        "(CSR adj_t) on the same inputs, and report both: accuracy, latency, peak memory, ratios")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file (as train --out)")
    # the former name of --out, kept working for scripts; hidden from the help
    p.add_argument("--json", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_eval)


def cmd_export(args) -> int:
    from qgnn.train.outputs import check_file_target

    check_file_target(args.out, "export file")  # before the checkpoint is read
    if args.format == "onnx":
        from .onnx_export import OPSET, export_checkpoint_onnx

        path, desc = export_checkpoint_onnx(args.checkpoint, args.out)
        print(f"wrote {path} ({path.stat().st_size:,} bytes): ONNX opset {OPSET}, {desc['task']} model, "
              f"{len(desc['model']['convs'])} conv layers, integer ops at "
              f"{'/'.join(map(str, sorted(set(desc['bits'].values()))))} bits (run it with onnxruntime)")
        return 0

    from .exporter import export_checkpoint

    path, desc = export_checkpoint(args.checkpoint, args.out)
    widths = sorted(set(desc["bits"].values()))
    if desc["task"] == "rec":
        m = desc["model"]
        print(f"wrote {path} ({path.stat().st_size:,} bytes): LightGCN, {m['num_users']} users + {m['num_items']} "
              f"items x {m['hidden']}, {m['table']['kind']} table at {widths[0]} bits")
        return 0
    print(f"wrote {path} ({path.stat().st_size:,} bytes): {desc['task']} model, "
          f"{len(desc['model']['convs'])} conv layers, {len(desc['bits'])} quantized slots at "
          f"{'/'.join(map(str, widths))} bits{_prompt_summary(desc.get('prompts'))}")
    return 0


def _prompt_summary(prompts: dict | None) -> str:
    """``"; prompts gpf-lorap (node gpf-plus, LoRAP on convs 0, 1; 3 tables at 8 bits, 5 float32)"`` or ""."""
    if not prompts:
        return ""
    entries = ([prompts["node"]] if prompts.get("node") else []) + list(prompts["aggregate"].values())
    params = [p for e in entries for p in e["params"].values()]
    eight = sum("codes" in p for p in params)
    where = ([f"node {prompts['node']['kind']}"] if prompts.get("node") else []) + (
        [f"LoRAP on convs {', '.join(prompts['aggregate'])}"] if prompts["aggregate"] else [])
    tables = f"{eight} tables at 8 bits" + (f", {len(params) - eight} float32" if len(params) > eight else "")
    return f"; prompts {prompts.get('kind') or 'custom'} ({', '.join(where)}; {tables})"


def cmd_eval(args) -> int:
    from qgnn.train.checkpoint import write_json
    from qgnn.train.outputs import check_file_target, write_outputs
    from qgnn.train.results import format_percent, format_ratio

    if args.out:
        check_file_target(args.out, "--out")  # before the model and the dataset are loaded

    from .evaluate import evaluate_file

    r = evaluate_file(args.model, dataset=args.dataset, root=args.root, split=args.split, repeats=args.repeats,
                      gemm=args.gemm, agg=args.agg, fp32_reference=args.fp32_reference)
    if r.get("task") == "rec":
        print(f"{r['file']} on {r['dataset']} ({r['split']}, {r['evaluated']} users, full ranking)")
        for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
            print(f"  {k:<12} {r[k]:.4f}")
    else:
        print(f"{r['file']} on {r['dataset']} ({r['split']}, {r['evaluated']} examples)")
        if "accuracy" in r:
            print(f"  accuracy     {format_percent(r['accuracy'])}")
        else:  # a regression model (qgnn.train.regression): errors in the target's units
            print(f"  MAE          {r['mae']:.4f}\n  RMSE         {r['rmse']:.4f}")
    print(f"  latency      {r['latency_ms']:.2f} ms (median of {len(r['latency_runs_ms'])})")
    passes = r.get("peak_passes", 1)
    print(f"  peak memory  {r['peak_memory_bytes'] / 2**20:.2f} MiB (RSS growth during one pass"
          + (f", median of {passes})" if passes > 1 else ")"))
    print(f"  file size    {r['file_bytes']:,} bytes")
    if r.get("task") == "rec":
        print(f"  table        {r['table_bytes']:,} bytes (codes + levels / scale; FP32 table "
              f"{r['fp32_table_bytes']:,} bytes, {format_ratio(r['fp32_table_bytes'] / r['table_bytes'])} smaller)")
    print(f"  paths        {', '.join(r['paths'])}")
    if r.get("kernels"):
        print(f"  kernels      linear: {r['kernels']['linear']}; aggregation: {r['kernels']['aggregate']} "
              "(packed rows)")
    if "fp32" in r:
        for line in fp32_table(r):
            print(line)
    if args.out:
        write_outputs([("--out", Path(args.out), lambda path: write_json(path, r))], r)
    return 0


def fp32_table(r: dict) -> list[str]:
    """The runtime beside its FP32 PyG reference (``qgnn eval --fp32-reference``), one aligned row per figure."""
    from qgnn.train.results import format_percent, format_ratio

    f = r["fp32"]
    rows = [("", "integer", "FP32 PyG", "ratio"),
            ("accuracy", format_percent(r["accuracy"]), format_percent(f["accuracy"]), ""),
            ("latency", f"{r['latency_ms']:.2f} ms", f"{f['latency_ms']:.2f} ms",
             f"{format_ratio(r['speedup'])} speedup (FP32 / integer)"),
            ("peak memory", f"{r['peak_memory_bytes'] / 2**20:.2f} MiB", f"{f['peak_memory_bytes'] / 2**20:.2f} MiB",
             f"{format_ratio(r['memory_ratio'])} memory (integer / FP32)")]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    out = ["  vs FP32 PyG (same weights dequantized, CSR adj_t, same inputs, same process):"]
    out += [f"    {a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d}".rstrip() for a, b, c, d in rows]
    out.append(f"    predictions agree on {format_percent(f['agreement'])} of the {r['evaluated']} examples")
    return out
