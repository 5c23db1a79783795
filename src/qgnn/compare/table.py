"""Rows, Pareto fronts and the table of `qgnn compare`.

A row is one cell's results JSON reduced to what the comparison needs: the task's scores (mean and population
std over its runs; accuracy in percent, Recall / NDCG @K as fractions), and the cost of the selected run's
model (average bits, BitOPs reduction, bytes) and its training time.

Pareto fronts use the *validation* score, never the test score: a row is on the BitOPs front when no other row
has a validation score >= its own and a BitOPs reduction >= its own with one of the two strictly greater
(equal points are both on the front); the bytes front is the same with model bytes <=. Picking a method from
the front is model selection, and model selection never looks at test data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str        # key of results["metrics"]
    title: str
    scale: float    # 100 for accuracies (shown in percent)
    decimals: int


@dataclass(frozen=True)
class Scores:
    """The metrics of a task: the columns, the headline test score (plots) and the selection score."""

    columns: tuple[Metric, ...]
    test: str
    val: str
    name: str       # the selection score in words, for the footer
    ylabel: str     # the test score in words, for the plot
    lower_is_better: bool = False  # errors (regression) rather than accuracies


def scores_for(task: str, k: int = 20, regression: bool = False) -> Scores:
    """The scores of a task; ``regression``: a graph-regression dataset (qgnn.train.regression), scored by errors
    in the target's units (test RMSE the headline, selection on validation MAE), lower being better."""
    if regression:
        cols = (Metric("test_rmse", "test RMSE", 1.0, 3), Metric("test_mae", "test MAE", 1.0, 3),
                Metric("val_mae", "val MAE", 1.0, 3))
        return Scores(cols, "test_rmse", "val_mae", "validation MAE", "test RMSE (lower is better)",
                      lower_is_better=True)
    if task == "rec":
        cols = (Metric(f"recall@{k}", f"recall@{k}", 1.0, 4), Metric(f"ndcg@{k}", f"NDCG@{k}", 1.0, 4),
                Metric(f"val_recall@{k}", f"val recall@{k}", 1.0, 4), Metric(f"val_ndcg@{k}", f"val NDCG@{k}", 1.0, 4))
        return Scores(cols, f"recall@{k}", f"val_recall@{k}", f"validation Recall@{k}", f"test Recall@{k}")
    cols = (Metric("test_acc", "test acc (%)", 100.0, 2), Metric("val_acc", "val acc (%)", 100.0, 2))
    return Scores(cols, "test_acc", "val_acc", "validation accuracy", "test accuracy (%)")


def row_of(name: str, spec, prompt: str, results: dict, scores: Scores, path=None) -> dict:
    """One table / JSON row from a cell's results (run_experiment's or run_search's layout)."""
    cfg, cost, timing = results["config"], results.get("cost", {}), results.get("timing", {})
    final = results.get("search", {}).get("final_method") if spec.search else None
    if spec.method == "fp32":
        bits_label = "32"
    elif spec.search:
        bits_label = "mixed"
    else:
        bits_label = str(cfg.get("bits"))
    method_label = f"mixq ({final})" if spec.search else spec.label
    row = {"cell": name, "method": spec.method, "final_method": final, "method_label": method_label,
           "label": method_label if prompt == "none" else f"{method_label} + {prompt}",
           "bits": None if spec.method == "fp32" or spec.search else cfg.get("bits"), "bits_label": bits_label,
           "prompt": prompt, "runs": len(results.get("runs", []))}
    for m in scores.columns:
        s = results["metrics"].get(m.key)
        row[m.key] = None if s is None else s["mean"] * m.scale
        row[f"{m.key}_std"] = None if s is None else s["std"] * m.scale
    row.update({"avg_bits": cost.get("avg_bits"), "bitops_reduction": cost.get("bitops_reduction"),
                "model_bytes": cost.get("model_bytes"), "model_bytes_fp32": cost.get("model_bytes_fp32"),
                "compression": cost.get("compression"), "s_per_epoch": timing.get("seconds_per_epoch"),
                "search_s_per_epoch": timing.get("search_seconds_per_epoch"),
                "results": None if path is None else str(path)})
    return row


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pareto_optimal(points: list[tuple]) -> list[bool]:
    """For points (a, b), both to maximise: True where no other point is >= on both and > on one.

    Equal points do not dominate each other (both stay on the front). A point with a missing or non-finite
    coordinate is never on the front and dominates nothing."""
    ok = [len(p) == 2 and _finite(p[0]) and _finite(p[1]) for p in points]
    out = []
    for i, p in enumerate(points):
        if not ok[i]:
            out.append(False)
            continue
        dominated = any(ok[j] and q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1])
                        for j, q in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def mark_pareto(rows: list[dict], scores: Scores) -> None:
    """Set ``pareto_bitops`` (validation score vs BitOPs reduction) and ``pareto_bytes`` (vs model bytes)."""
    val = [r.get(scores.val) for r in rows]
    if scores.lower_is_better:  # the front maximises both coordinates
        val = [-v if _finite(v) else v for v in val]
    bitops = pareto_optimal([(v, r.get("bitops_reduction")) for v, r in zip(val, rows, strict=True)])
    size = pareto_optimal([(v, -r["model_bytes"] if _finite(r.get("model_bytes")) else None)
                           for v, r in zip(val, rows, strict=True)])
    for r, a, b in zip(rows, bitops, size, strict=True):
        r["pareto_bitops"], r["pareto_bytes"] = a, b


def _pm(row: dict, m: Metric) -> str:
    mean, std = row.get(m.key), row.get(f"{m.key}_std")
    if mean is None:
        return "n/a"
    return f"{mean:.{m.decimals}f} ± {std:.{m.decimals}f}"


def _num(v, fmt: str, suffix: str = "") -> str:
    return "n/a" if not _finite(v) else f"{v:{fmt}}{suffix}"


def format_table(rows: list[dict], scores: Scores, task: str) -> str:
    """The comparison as an aligned text table, then its footer (what the columns and marks mean)."""
    from qgnn.train.results import format_ratio  # BitOPs reductions are printed one way everywhere

    has_bitops = task != "rec"
    head = ["method", "bits", "prompt", *[m.title for m in scores.columns], "avg bits"]
    head += ["BitOPs red."] if has_bitops else []
    head += ["bytes", "s / epoch", "Pareto (val)"]
    body = []
    for r in rows:
        front = [n for n, on in (("BitOPs", r.get("pareto_bitops") and has_bitops), ("bytes", r.get("pareto_bytes")))
                 if on]
        line = [r["method_label"], r["bits_label"], r["prompt"], *[_pm(r, m) for m in scores.columns],
                _num(r.get("avg_bits"), ".2f")]
        line += [format_ratio(r.get("bitops_reduction"))] if has_bitops else []
        line += [_num(r.get("model_bytes"), ",d") if isinstance(r.get("model_bytes"), int)
                 else _num(r.get("model_bytes"), ",.0f"), _num(r.get("s_per_epoch"), ".4f"), ", ".join(front)]
        body.append(line)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    left = {0, 1, 2, len(head) - 1}  # text columns; numbers align right

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body]
    return "\n".join(lines + ["", *footer(rows, scores, task)])


def footer(rows: list[dict], scores: Scores, task: str) -> list[str]:
    runs = sorted({r["runs"] for r in rows})
    what = "seeds x folds" if task == "graph" else "seeds"
    axes = ("the BitOPs reduction (mark 'BitOPs') or the model bytes (mark 'bytes')" if task != "rec"
            else "the model bytes (mark 'bytes')")
    lines = [f"mean ± population std over {'/'.join(map(str, runs))} run{'s' if runs != [1] else ''} per row "
             f"({what}).",
             f"Pareto (val): no other row is at least as good on both the {scores.name} and {axes}, and better on "
             "one. Fronts are chosen on validation, never on test.",
             "avg bits, BitOPs reduction (MACs x b_a x b_w, docs/cost.md) and bytes (packed, with scales): the "
             "selected run's model (best validation)." if task != "rec" else
             "avg bits and bytes: the selected run's embedding table (codes bit-packed, with their levels)."]
    methods = {r["method"] for r in rows}
    if "a2q" in methods:
        lines.append("a2q: bits is the starting width; A2Q learns a width per node, avg bits is what it reached.")
    if "gnaq" in methods:
        lines.append("gnaq: bits is the code width; avg bits also counts each node's stored quantization levels.")
    if "mixq" in methods:
        search = [r for r in rows if r["method"] == "mixq"]
        sps = ", ".join(_num(r.get("search_s_per_epoch"), ".4f") for r in search)
        lines.append(f"mixq: MixQ-GNN search (qgnn.recipes.SEARCH), then {search[0]['final_method']} training of the "
                     f"widths found; s / epoch is that training's (search: {sps} s / epoch).")
    if any(r["prompt"] != "none" for r in rows):
        lines.append("prompted rows: bytes include the prompts, kept in float (32 bits), so their compression is "
                     "below the host's.")
    return lines
