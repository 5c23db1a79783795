"""compare.png: accuracy (or Recall@K) against BitOPs reduction and against model bytes.

Each row is a point with its std as an error bar and its label; FP32 is a star; the rows on the validation
Pareto front (qgnn.compare.table) are joined by a line. The line joins *test* points of rows chosen on
validation, so it need not rise monotonically: where it dips, validation and test disagree.
"""

from __future__ import annotations

from pathlib import Path

from qgnn.plotting import pyplot


def _panel(ax, rows, x_key, front_key, scores, xlabel, log_base):
    from qgnn.compare.table import _finite

    pts = [r for r in rows if _finite(r.get(x_key)) and _finite(r.get(scores.test))]
    for r in pts:
        star = r["method"] == "fp32"
        ax.errorbar([r[x_key]], [r[scores.test]], yerr=[r.get(f"{scores.test}_std") or 0.0], capsize=3,
                    fmt="*" if star else "o", markersize=12 if star else 5, color="k" if star else None,
                    label="FP32" if star else None)
        ax.annotate(r["label"], (r[x_key], r[scores.test]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = sorted((r for r in pts if r.get(front_key)), key=lambda r: r[x_key])
    if front:  # ringed points joined by a line (a front of one point is still visible)
        ax.plot([r[x_key] for r in front], [r[scores.test] for r in front], "-", marker="o", markersize=11,
                markerfacecolor="none", color="C3", alpha=0.7, label="Pareto front (chosen on validation)")
    ax.set_xscale("log", base=log_base)
    if log_base == 10:
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short log axis
    ax.set_xlabel(xlabel)
    ax.set_ylabel(scores.ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_compare(rows: list[dict], scores, path: str | Path, title: str = "") -> Path | None:
    """Write the figure to ``path``; None (nothing written) without matplotlib. One panel (bytes) when no row
    has a BitOPs figure (recommendation)."""
    plt = pyplot()
    if plt is None:
        return None
    panels = [("model_bytes", "pareto_bytes", "model bytes (packed, with scales)", 10)]
    if any(r.get("bitops_reduction") is not None for r in rows):
        panels.insert(0, ("bitops_reduction", "pareto_bitops", "BitOPs reduction (MACs x b_a x b_w)", 2))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (x_key, front_key, xlabel, base) in zip(axes[0], panels, strict=True):
        _panel(ax, rows, x_key, front_key, scores, xlabel, base)
    fig.suptitle(title)
    fig.tight_layout()
    from qgnn.train.checkpoint import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
