"""Which cells the documented benchmark commands would reuse and which they would train, without training.

The documented commands are those the results record (the ``"command"`` of every benchmarks/results JSON written
by a harness script: what the docs' command lists quote), the plain ``defaults.py``, and for mixq.py, whose
sweep files record none, ``--only <group>`` of every group with results. Each runs in this process with
``--dry-run`` (benchmarks/_harness.py: the cells are resolved and their JSON compared; nothing trains, nothing
is written). A cell whose JSON exists but would train again is a broken cache (a committed result its own
command would redo): listed, exit status 1.

    python benchmarks/check_reuse.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shlex
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import _harness  # noqa: E402
from _report import RESULTS_DIR  # noqa: E402

SCRIPTS = ("quant", "a2q", "baselines", "defaults", "prompts", "mixq", "scale")  # the scripts that run harness cells
EXTRA = ("OMP_NUM_THREADS=1 python benchmarks/defaults.py",)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"check_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def documented_commands() -> list[str]:
    """Every documented command of a harness script (module docstring), sorted, each once."""
    cmds = set(EXTRA)
    for path in RESULTS_DIR.rglob("*.json"):
        try:
            cmd = json.loads(path.read_text()).get("command")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(cmd, str) and _script_of(cmd) in SCRIPTS:
            cmds.add(cmd)
    for sweep in RESULTS_DIR.glob("mixq-*/sweep.json"):
        cmds.add(f"OMP_NUM_THREADS=1 python benchmarks/mixq.py --only {sweep.parent.name.removeprefix('mixq-')}")
    return sorted(cmds)


def _script_of(cmd: str) -> str | None:
    words = shlex.split(cmd)
    script = next((w for w in words if w.startswith("benchmarks/") and w.endswith(".py")), None)
    return Path(script).stem if script else None


def dry_run(cmd: str, modules: dict) -> list[tuple[str, str]]:
    """(cell name, what would happen: _harness.status) for every cell ``cmd`` would run: the command's own
    --dry-run, with the harness's listing recorded instead of printed."""
    words = shlex.split(cmd)
    name = _script_of(cmd)
    argv = words[words.index(f"benchmarks/{name}.py") + 1:] + ["--dry-run"]
    if name not in modules:
        modules[name] = _script(name)
    planned, real = [], _harness.preview

    def record(cells, others=()):
        planned.append((list(cells), list(others)))

    _harness.preview = record
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            modules[name].main(argv)
    except SystemExit as e:  # run(dry_run=True) ends the script after its listing
        if e.code not in (0, None):
            raise RuntimeError(f"{cmd} --dry-run exited with {e.code}") from None
    finally:
        _harness.preview = real
    out = []
    for cells, others in planned:
        out += [(cell.name, _harness.status(cell)[0]) for cell in cells]
        out += [(study, "reused (a study kept while its JSON exists)" if exists else "would train (no results JSON)")
                for study, exists in others]
    return out


def check() -> dict:
    """{"commands": n, "reused": n, "legacy": n, "train": n, "broken": [(cell, why, command)]} over the distinct
    cells of every documented command."""
    modules, seen, broken = {}, {}, []
    commands = documented_commands()
    for cmd in commands:
        for cell, what in dry_run(cmd, modules):
            seen.setdefault(cell, what)
            if not what.startswith("reused") and (RESULTS_DIR / f"{cell}.json").exists():
                broken.append((cell, what, cmd))
    reused = [c for c, w in seen.items() if w.startswith("reused")]
    return {"commands": len(commands), "cells": len(seen), "reused": len(reused),
            "legacy": sum("legacy" in seen[c] for c in reused), "train": len(seen) - len(reused), "broken": broken,
            "would_train": sorted(c for c, w in seen.items() if not w.startswith("reused"))}


def main() -> int:
    res = check()
    for cell in res["would_train"]:
        print(f"would train  {cell}")
    for cell, what, cmd in res["broken"]:
        print(f"BROKEN  {cell}: {what} ({cmd})")
    print(f"{res['commands']} documented commands, {res['cells']} cells: {res['reused']} reused "
          f"({res['legacy']} legacy records), {res['train']} would train (no results yet), "
          f"{len(res['broken'])} committed results that would train again")
    return 1 if res["broken"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
