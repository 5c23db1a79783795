"""Shared by the benchmark scripts: write JSON results and replace one section of docs/results.md."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "docs" / "results.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


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


def update_section(name: str, markdown: str) -> None:
    """Replace the text between <!-- begin:name --> and <!-- end:name --> (append the section if new)."""
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)


def pct(summary: dict) -> str:
    return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}"
