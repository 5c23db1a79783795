"""Helpers for the data tests (plain functions: a conftest.py here would shadow tests/conftest.py,
which other test folders import as ``conftest``). The environment and the data root come from
:mod:`qgnn.testing` (``use_test_data``, ``require_data``, the autouse fixture ``data_env``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from qgnn.testing import require_data


def fresh_cache(monkeypatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QGNN_CACHE", str(cache))
    return cache


def copy_raw(tmp_path: Path, *rels: str) -> Path:
    """Copy shared folders (e.g. "planetoid/Cora/raw") into a writable tmp root; return the root."""
    src, root = require_data(), tmp_path / "root"
    for rel in rels:
        dst = root / rel
        shutil.copytree(src / rel, dst)
        for p in [dst, *dst.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under folder with its size and mtime."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}
