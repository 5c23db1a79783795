"""Shared by the benchmark scripts: write JSON results and replace one section of the results docs.

A section is the text between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->``. docs/results.md is the
one-page summary; the full tables and experiment logs live in per-topic pages under docs/notes/.
:func:`update_section` rewrites a section in whichever of those pages holds it, so a benchmark script never
needs to know where its section was filed; a section found nowhere is appended to the page that
:data:`SECTION_PAGES` names for its prefix (docs/results.md if none matches).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "docs" / "results.md"
NOTES_DIR = ROOT / "docs" / "notes"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Section-name prefix -> (notes page, its title when the page is created); the longest matching prefix wins.
SECTION_PAGES = {
    "defaults": ("defaults.md", "The plain commands and the figures they reach"),
    "compare": ("compare.md", "qgnn compare: methods side by side"),
    "scale": ("scale.md", "Scale: million-node graphs"),
    "baselines": ("baselines.md", "FP32 baselines"),
    "quant": ("quantization.md", "Quantization-aware training vs. FP32"),
    "a2q": ("a2q.md", "A2Q: learned per-node bit-widths"),
    "mixq": ("mixq.md", "Mixed precision: MixQ-GNN search"),
    "prompt": ("prompts-grid.md", "Prompts on INT4 hosts: the grid and the investigations"),
    "lorap": ("prompts-grid.md", "Prompts on INT4 hosts: the grid and the investigations"),
    "recsys": ("recsys.md", "Recommendation: LightGCN, GNAQ and its baselines"),
    "export": ("export.md", "Packed export and the integer runtime"),
    "runtime": ("export.md", "Packed export and the integer runtime"),
    "overhead": ("training-cost.md", "Training cost and overhead"),
    "train-cost": ("training-cost.md", "Training cost and overhead"),
    "input-dropout": ("input-dropout.md", "Input dropout"),
}

_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_ABSOLUTE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|#|/)")


def command_line() -> str:
    """The command that produced a figure, as a user would type it from the project root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in [str(script), *sys.argv[1:]])


def write_json(name: str, obj) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def pages() -> list[Path]:
    """Every page a section may live in: docs/results.md first, then docs/notes/*.md in name order."""
    notes = sorted(NOTES_DIR.glob("*.md")) if NOTES_DIR.is_dir() else []
    return [p for p in [RESULTS_MD, *notes] if p.exists()]


def section_page(name: str) -> Path | None:
    """The page holding section ``name`` (its begin marker), or None when no page has it."""
    begin = f"<!-- begin:{name} -->"
    return next((p for p in pages() if begin in p.read_text()), None)


def page_for_new(name: str) -> Path:
    """Where a section that exists nowhere yet is appended: by the longest prefix in SECTION_PAGES."""
    hits = [prefix for prefix in SECTION_PAGES if name.startswith(prefix)]
    return NOTES_DIR / SECTION_PAGES[max(hits, key=len)][0] if hits else RESULTS_MD


def relink(markdown: str, page: Path) -> str:
    """Relative link targets as a page in ``page``'s folder needs them.

    Scripts write their sections with links relative to docs/ (``[cost.md](cost.md)``, ``(mixq-pareto-cora.png)``),
    where docs/results.md is; a section filed under docs/notes/ needs ``../cost.md``. URLs, anchors and absolute
    paths are left alone, and so is every link of a page in docs/ itself, so docs/results.md stays byte-identical.
    """
    base, here = RESULTS_MD.parent, page.parent
    if here.resolve() == base.resolve():
        return markdown

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if _ABSOLUTE.match(target):
            return m.group(0)
        path, sep, frag = target.partition("#")
        new = Path(os.path.relpath(base / path, here)).as_posix()
        return m.group(1) + new + sep + frag + m.group(3)

    return _LINK.sub(fix, markdown)


def update_section(name: str, markdown: str) -> Path:
    """Replace the text between <!-- begin:name --> and <!-- end:name --> wherever it lives (docs/results.md or
    docs/notes/*.md); a new section is appended to :func:`page_for_new`'s page. Returns the page written."""
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    page = section_page(name)
    if page is None:
        page = page_for_new(name)
        if page.exists():
            text = page.read_text()
        else:
            title = next((t for f, t in SECTION_PAGES.values() if f == page.name), "Results")
            text = f"# {title}\n\nSummary: [results.md](../results.md).\n" if page != RESULTS_MD else "# Results\n"
    else:
        text = page.read_text()
    block = f"{begin}\n{relink(markdown.strip(), page)}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    elif begin in text:  # a begin marker without its end: appending would leave two copies
        raise ValueError(f"{page}: <!-- begin:{name} --> has no matching <!-- end:{name} -->")
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return page


def pct(summary: dict) -> str:
    return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}"
