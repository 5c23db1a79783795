"""Which benchmark datasets a test can read, and the environment data tests run in.

Tests never download (DESIGN.md): raw files come from ``QGNN_DATA`` (the root laid out as
``planetoid/<Name>/raw``, ``tu/<NAME>/raw``, ``recsys/<name>``), processed files go to a temporary cache.
pytest is imported only inside the functions that build a marker or skip.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["data_root", "raw_files", "has_data", "needs_data", "require_data", "use_test_data"]


@functools.cache
def data_root() -> Path:
    """The data root this process started with: ``QGNN_DATA`` as first read (before any test changes
    it, hence cached), else the default root of :func:`qgnn.data.resolve_root`."""
    env = os.environ.get("QGNN_DATA")
    if env:
        return Path(env)
    from qgnn.data import resolve_root

    return resolve_root()


def raw_files(name: str) -> tuple[Path, list[str]]:
    """(folder relative to the data root, raw file names) that the loader of dataset ``name`` reads;
    synthetic datasets read none: ``(Path("."), [])``."""
    from qgnn.data import canonical_name, planetoid, recsys, tu

    key = canonical_name(name)
    if key in planetoid.NAMES:
        return Path("planetoid") / planetoid.NAMES[key] / "raw", [f"ind.{key}.{s}" for s in planetoid._SUFFIXES]
    if key in tu.NAMES:
        t = tu.NAMES[key]
        return Path("tu") / t / "raw", [f"{t}_{s}.txt" for s in ("A", "graph_indicator", "graph_labels")]
    if key in recsys.NAMES:
        sub, files = recsys._SOURCES[key][:2]
        return Path("recsys") / sub, list(files)
    return Path("."), []


def has_data(*names: str, root: str | os.PathLike | None = None) -> bool:
    """Whether every raw file of every dataset in ``names`` is under ``root`` (default :func:`data_root`)."""
    base = Path(root) if root is not None else data_root()
    for name in names:
        rel, files = raw_files(name)
        if not all((base / rel / f).is_file() for f in files):
            return False
    return True


def needs_data(*names: str, root: str | os.PathLike | None = None):
    """A pytest skip marker for tests that read ``names`` (default Cora): ``@needs_data()``,
    ``@needs_data("MUTAG", "cora")``."""
    import pytest

    names = names or ("cora",)
    base = Path(root) if root is not None else data_root()
    return pytest.mark.skipif(not has_data(*names, root=base),
                              reason=f"real benchmark data ({', '.join(names)}) not found in {base} (set QGNN_DATA)")


def require_data(*names: str, root: str | os.PathLike | None = None) -> Path:
    """Skip the running test unless ``names`` (default Cora) are present; returns the data root."""
    import pytest

    names = names or ("cora",)
    base = Path(root) if root is not None else data_root()
    if not has_data(*names, root=base):
        pytest.skip(f"shared benchmark data ({', '.join(names)}) not found at {base} (set QGNN_DATA)")
    return base


def use_test_data(monkeypatch, tmp_path_factory, root: str | os.PathLike | None = None) -> Path:
    """Offline, raw files from ``root`` (default :func:`data_root`), processed files in one cache for the
    whole session (``<pytest base temp>/qgnn-data-cache``, so each dataset is processed once); undone by
    ``monkeypatch`` after the test. Returns the root."""
    base = Path(root) if root is not None else data_root()
    monkeypatch.setenv("QGNN_OFFLINE", "1")
    monkeypatch.setenv("QGNN_DATA", str(base))
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path_factory.getbasetemp() / "qgnn-data-cache"))
    return base
