"""Summaries of several runs: mean ± std per metric, the results JSON, the table on screen."""

from __future__ import annotations

import math
import statistics


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


def _fmt(metric: str, s: dict) -> str:
    # Accuracies are shown in percent, as papers report them.
    scale = 100.0 if metric.endswith("acc") else 1.0
    if "@" in metric:  # Recall@K / NDCG@K: fractions, reported with 4 decimals as in the LightGCN papers
        return f"{s['mean']:.4f} ± {s['std']:.4f}"
    return f"{s['mean'] * scale:.2f} ± {s['std'] * scale:.2f}"


def format_table(results: dict) -> str:
    """A plain-text table of the run: what was trained, each metric, timing, cost."""
    c = results["config"]
    rows = [("dataset", c["dataset"]), ("model", c["model"]), ("method", c["method"]),
            ("bits", str(c.get("bits") or 32)), ("runs", str(len(results["runs"])))]
    for k, s in results["metrics"].items():
        rows.append((k + (" (%)" if k.endswith("acc") else ""), _fmt(k, s)))
    t = results["timing"]
    rows.append(("s / epoch", f"{t['seconds_per_epoch']:.4f}"))
    rows.append(("total s", f"{t['total_seconds']:.1f}"))
    cost = results.get("cost", {})
    for k in ("bitops", "bitops_reduction", "avg_bits", "model_bytes", "model_bytes_fp32", "compression"):
        if k in cost:
            v = cost[k]
            rows.append((k, f"{v:.4g}" if isinstance(v, float) else str(v)))
    w = max(len(k) for k, _ in rows)
    v = max(len(x) for _, x in rows)
    line = "+" + "-" * (w + 2) + "+" + "-" * (v + 2) + "+"
    body = [f"| {k:<{w}} | {x:>{v}} |" for k, x in rows]
    return "\n".join([line, *body[:5], line, *body[5:], line])
