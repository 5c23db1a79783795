"""Helpers for the data tests (plain functions: a conftest.py here would shadow tests/conftest.py,
which other test folders import as ``conftest``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED = Path(os.environ.get("QGNN_DATA") or _DEFAULT_SHARED)  # read before any test changes it


def set_env(monkeypatch, tmp_path_factory) -> None:
    """Offline, raw files from the shared folder, processed files in a session-wide temp cache."""
    monkeypatch.setenv("QGNN_OFFLINE", "1")
    monkeypatch.setenv("QGNN_DATA", str(SHARED))
    # One cache for the whole session, so each dataset is processed once.
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path_factory.getbasetemp() / "qgnn-data-cache"))


def require_shared() -> Path:
    if not (SHARED / "planetoid" / "Cora" / "raw").is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED} (set QGNN_DATA)")
    return SHARED


def fresh_cache(monkeypatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QGNN_CACHE", str(cache))
    return cache


def copy_raw(tmp_path: Path, *rels: str) -> Path:
    """Copy shared folders (e.g. "planetoid/Cora/raw") into a writable tmp root; return the root."""
    src, root = require_shared(), tmp_path / "root"
    for rel in rels:
        dst = root / rel
        shutil.copytree(src / rel, dst)
        for p in [dst, *dst.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under folder with its size and mtime."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}
