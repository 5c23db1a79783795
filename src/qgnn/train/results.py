"""Summaries of several runs: mean ± std per metric, the results JSON, the table on screen."""

from __future__ import annotations

import math
import statistics
import sys
import textwrap


def summarize(values: list[float]) -> dict:
    """{"mean", "std", "runs"}; std is the population standard deviation (numpy's default). A run that
    diverged (a NaN or infinite value) makes mean and std NaN instead of failing the whole summary."""
    vals = [float(v) for v in values]
    mean = statistics.fmean(vals) if vals else math.nan
    if not all(math.isfinite(v) for v in vals):
        mean = std = math.nan
    else:
        std = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "runs": vals}


def summarize_runs(runs: list[dict], keys: list[str]) -> dict[str, dict]:
    return {k: summarize([r[k] for r in runs]) for k in keys if all(k in r for r in runs)}


def format_ratio(v: float | None) -> str:
    """A reduction factor, printed one way everywhere (BitOPs reduction, compression): ``63.7x``, ``1.17x``,
    ``1024x``: three significant figures, never scientific notation."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def format_percent(fraction: float, std: float | None = None) -> str:
    """An accuracy (a fraction in the JSON) in percent, as papers report it: ``81.20 %``, ``81.20 ± 0.45 %``."""
    if std is None:
        return f"{fraction * 100:.2f} %"
    return f"{fraction * 100:.2f} ± {std * 100:.2f} %"


def _fmt(metric: str, s: dict) -> str:
    # Accuracies are shown in percent, as papers report them (the row label says "(%)").
    scale = 100.0 if metric.endswith("acc") else 1.0
    if "@" in metric:  # Recall@K / NDCG@K: fractions, reported with 4 decimals as in the LightGCN papers
        return f"{s['mean']:.4f} ± {s['std']:.4f}"
    return f"{s['mean'] * scale:.2f} ± {s['std'] * scale:.2f}"


def run_line(name: str, index: int, total: int, result: dict, metric: str, seconds: float) -> str:
    """One line for a finished run, for logs where no progress bar is drawn (stderr not a terminal: a
    benchmark's log file, a batch job): ``qgnn: proteins/gin/dq run 3/10 (fold 2): val acc 76.79, test acc
    74.11 (epoch 120 of 350), 12.5 min``. ``metric`` is the task's (acc, mae, recall@20)."""
    where = f"fold {result['fold']}" if result.get("fold") is not None else f"seed {result.get('seed')}"
    scores = [f"{split} {metric} {_one(metric, result[f'{split}_{metric}'])}" for split in ("val", "test")
              if f"{split}_{metric}" in result]
    epoch = (f" (epoch {result['best_epoch'] + 1} of {result['epochs_run']})"
             if "best_epoch" in result and "epochs_run" in result else "")
    done = ", ".join(scores) or "done"
    return f"qgnn: {name} run {index + 1}/{total} ({where}): {done}{epoch}, {seconds / 60:.1f} min"


def log_run(progress: bool | None, bar, name: str, index: int, total: int, result: dict, metric: str,
            seconds: float) -> None:
    """Print :func:`run_line` on stderr where progress is automatic (``progress=None``) but ``bar`` (a tqdm)
    draws nothing, stderr not being a terminal: a log file then shows each run as it ends."""
    if progress is None and getattr(bar, "disable", False):
        print(run_line(name, index, total, result, metric, seconds), file=sys.stderr, flush=True)


def _one(metric: str, v: float) -> str:
    """One value as :func:`_fmt` shows a mean: accuracies in percent, Recall / NDCG @K with 4 decimals."""
    if metric.endswith("acc"):
        return f"{v * 100:.2f}"
    return f"{v:.4f}"


def _widths(ws) -> str:
    return "/".join(str(w) for w in ws)


def _method_rows(results: dict) -> list[tuple[str, str]]:
    """What ran: a MixQ search names the search and its fixed-bit method, and its searched widths."""
    c, search = results["config"], results.get("search")
    if search:
        acts, weights = search.get("candidates") or [], search.get("weight_candidates")
        bits = (f"searched per slot from {_widths(acts)}" if not weights else
                f"searched: activations {_widths(acts)}, weights {_widths(weights)}")
        return [("method", f"mixq search (λ {search.get('lam', 0):g}), then {search.get('final_method', c['method'])}"),
                ("bits", bits)]
    bits = c.get("bits")
    return [("method", c["method"]), ("bits", "32 (float)" if c["method"] == "fp32" or not bits else str(bits))]


def _prompt_row(prompt: dict) -> str:
    parts = [f"{k} {prompt[k]}" for k in ("k", "rank") if prompt.get(k) is not None]
    if prompt.get("params") is not None:
        dtype = "float32" if prompt.get("bytes") == 4 * prompt["params"] else f"{prompt.get('bytes', '?')} B"
        parts.append(f"{prompt['params']:,} {dtype} params")
    return f"{prompt.get('kind', '?')}" + (f" ({', '.join(parts)})" if parts else "")


def _cost_value(key: str, v) -> str:
    if key == "bitops":
        return f"{v:,.0f}"
    if key in ("bitops_reduction", "compression"):
        return format_ratio(v)
    if key == "avg_bits":
        return f"{v:.2f}"
    if key in ("model_bytes", "model_bytes_fp32"):
        return f"{int(v):,}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table_notes(results: dict) -> list[str]:
    """Why a cost figure is not what the bit-width alone suggests (printed under the table)."""
    c, cost, notes = results["config"], results.get("cost", {}), []
    prompt = results.get("prompt") or {}
    pb = prompt.get("bytes") or 0
    if pb and "model_bytes" in cost and cost["model_bytes"] > pb:
        host, host_fp32 = cost["model_bytes"] - pb, cost["model_bytes_fp32"] - pb
        notes.append(f"note: the {prompt.get('kind')} prompts ({prompt.get('params', 0):,} params, {pb:,} bytes) "
                     f"are not quantized: they stay float32 and are counted in model_bytes, compression and "
                     f"avg_bits; the quantized host alone is {host:,} bytes, {format_ratio(host_fp32 / host)} "
                     f"smaller than FP32.")
    if cost.get("level_bytes") and cost.get("bits") and cost.get("avg_bits", 0) - cost["bits"] >= 0.1:
        notes.append(f"note: {c['method']} stores {cost['bits']}-bit codes ({cost.get('code_bytes', 0):,} bytes) "
                     f"plus per-node quantization levels at higher precision ({cost['level_bytes']:,} bytes); "
                     f"avg_bits and compression count both, hence {cost['avg_bits']:.2f} bits and "
                     f"{format_ratio(cost.get('compression'))} rather than {cost['bits']} bits and "
                     f"{format_ratio(32 / cost['bits'])}.")
    if c.get("method") == "a2q" and not results.get("search"):
        notes.append(f"note: A2Q learns a width per node and layer: bits {c.get('bits')} is its starting width, "
                     "avg_bits what it learnt.")
    if results.get("search"):
        notes.append("note: the cost rows are the selected run's; each run's searched widths are in the results "
                     "JSON (\"search\": \"assignments\").")
    from qgnn.recipes import recipe_notes

    notes += [f"note: {n}." for n in recipe_notes(c.get("recipes") or [])]
    return notes


def format_table(results: dict) -> str:
    """A plain-text table of the run (what was trained, each metric, timing, cost), then notes on the cost."""
    c = results["config"]
    head = [("dataset", c["dataset"]), ("model", c["model"]), *_method_rows(results)]
    if results.get("prompt"):
        head.append(("prompt", _prompt_row(results["prompt"])))
    head.append(("runs", str(len(results["runs"]))))
    rows = []
    for k, s in results["metrics"].items():
        rows.append((k + (" (%)" if k.endswith("acc") else ""), _fmt(k, s)))
    t = results["timing"]
    rows.append(("s / epoch", f"{t['seconds_per_epoch']:.4f}"))
    rows.append(("total s", f"{t['total_seconds']:.1f}"))
    cost = results.get("cost", {})
    for k in ("bitops", "bitops_reduction", "avg_bits", "model_bytes", "model_bytes_fp32", "compression"):
        if k in cost:
            rows.append((k, _cost_value(k, cost[k])))
    w = max(len(k) for k, _ in head + rows)
    v = max(len(x) for _, x in head + rows)
    line = "+" + "-" * (w + 2) + "+" + "-" * (v + 2) + "+"
    body = [f"| {k:<{w}} | {x:>{v}} |" for k, x in head + rows]
    notes = [textwrap.fill(n, width=110, subsequent_indent="      ") for n in table_notes(results)]
    return "\n".join([line, *body[:len(head)], line, *body[len(head):], line, *notes])
