"""Where raw and processed dataset files live.

Raw files are looked up under a data root with the layout of the shared data
folder (``planetoid/<Name>/raw/``, ``tu/<NAME>/raw/``, ``recsys/<name>/``), then
under ``cache_dir()/data`` (where downloads go). Processed files always go under
``cache_dir()/processed``, never beside the raw files: the data root may be
read-only or shared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from qgnn.errors import DataNotFoundError, QgnnError

T = TypeVar("T")

# How the missing-data message names the data-root option: ``root=...`` for Python callers; the command line
# sets ``--root DIR`` (qgnn.cli.main), so the advice names the flag the user can actually pass.
ROOT_OPTION: ContextVar[str] = ContextVar("qgnn_root_option", default="root=...")


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "qgnn"


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$QGNN_DATA``, else ``<user cache>/qgnn/data``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get("QGNN_DATA")
    if env:
        return Path(env).expanduser()
    return _user_cache() / "data"


def cache_dir() -> Path:
    """The cache for processed files and downloads: ``$QGNN_CACHE``, else ``<user cache>/qgnn``."""
    env = os.environ.get("QGNN_CACHE")
    return Path(env).expanduser() if env else _user_cache()


def offline() -> bool:
    """True when ``QGNN_OFFLINE`` is set to a true value: nothing is downloaded."""
    return os.environ.get("QGNN_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _complete(folder: Path, files: Sequence[str]) -> bool:
    return all((folder / f).is_file() for f in files)


def processed_dir(kind: str, name: str, raw_dir: Path) -> Path:
    """``cache_dir()/processed/<kind>/<name>/<hash>``, keyed by the raw folder and its files.

    The hash covers the resolved raw path and each file's name, size and mtime, so two
    roots never share processed files and an edited raw file is processed again.
    """
    raw_dir = Path(raw_dir).resolve()
    h = hashlib.sha1(str(raw_dir).encode())
    for f in sorted(raw_dir.iterdir()) if raw_dir.is_dir() else []:
        if f.is_file():
            st = f.stat()
            h.update(f"|{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_dir() / "processed" / kind / name / h.hexdigest()[:12]


class LocalRaw:
    """Mixin put in front of a PyG dataset class: its raw files are read from ``self._raw_folder`` (set before
    PyG's ``__init__`` runs), its processed files go to the qgnn cache (:func:`processed_dir` under
    ``cache_kind`` / :meth:`cache_name`), and a failure to process them is one :class:`QgnnError` line
    (:meth:`diagnose`) instead of PyG's traceback. Planetoid, TU and the large PyG datasets share it."""

    cache_kind = "pyg"
    _raw_folder: str

    @property
    def raw_dir(self) -> str:
        return self._raw_folder

    def cache_name(self) -> str:
        return self.name

    @cached_property
    def processed_dir(self) -> str:
        # First read after any download, so the key sees the final raw files.
        return str(processed_dir(self.cache_kind, self.cache_name(), Path(self._raw_folder)))

    def process(self) -> None:
        try:
            super().process()
        except QgnnError:
            raise
        except Exception as e:
            raise QgnnError(self.diagnose(e)) from e

    def diagnose(self, err: Exception) -> str:
        """The one line saying which raw file is bad (subclasses name the file where they can)."""
        files = ", ".join(self.raw_file_names if isinstance(self.raw_file_names, list | tuple)
                          else [self.raw_file_names])
        return (f"cannot build {self.cache_name()} from {self._raw_folder}/ ({type(err).__name__}: {err}); the raw "
                f"files there ({files}) are corrupt or not PyG's format: replace them with the originals")


def find_raw(
    rel: str | Path,
    files: Sequence[str],
    root: str | os.PathLike | None = None,
    download: Callable[[Path], None] | None = None,
    hint: str = "",
) -> Path:
    """The folder holding all of ``files``: ``<root>/<rel>``, else ``cache_dir()/data/<rel>``.

    When neither is complete, ``download(folder)`` fills the cache folder (unless
    ``QGNN_OFFLINE`` is set or there is no download). Otherwise, or if the download
    fails, raises :class:`DataNotFoundError` naming the missing files and the folder.
    ``hint`` is appended to that message (e.g. why a dataset cannot be found).
    """
    primary = resolve_root(root) / rel
    cached = cache_dir() / "data" / rel
    for folder in (primary, cached):
        if _complete(folder, files):
            return folder
    missing = [f for f in files if not (primary / f).is_file()]
    msg = (
        f"missing raw file(s) {', '.join(missing)}: put them in {primary}/ "
        f"(or pass {ROOT_OPTION.get()} or set QGNN_DATA to a folder laid out as <root>/{Path(rel).as_posix()}/)"
    )
    if download is None:
        reason = "no download source is known for this dataset"
    elif offline():
        reason = "QGNN_OFFLINE is set, so nothing was downloaded"
    else:
        existed = cached.exists()
        try:
            cached.mkdir(parents=True, exist_ok=True)
            download(cached)
        except Exception as e:  # network, HTTP, disk: all mean "not available"
            if not existed:  # drop partial downloads so the next try starts clean
                shutil.rmtree(cached, ignore_errors=True)
            reason = f"the download into {cached}/ failed ({type(e).__name__}: {e})"
        else:
            if _complete(cached, files):
                return cached
            reason = f"the download into {cached}/ did not produce all files"
    raise DataNotFoundError(f"{msg}; {reason}.{(' ' + hint) if hint else ''}")


def build_with_retry(make: Callable[[bool], T], what: str) -> T:
    """``make(force_reload)``, rebuilt once from raw when the cached processed file is unreadable
    (e.g. an interrupted write); errors that are still not a QgnnError become one."""
    try:
        return make(False)
    except QgnnError:
        raise
    except Exception:
        pass
    try:
        return make(True)
    except QgnnError:
        raise
    except Exception as e:
        raise QgnnError(f"cannot load {what} ({type(e).__name__}: {e}); delete its folder under "
                        f"{cache_dir() / 'processed'} and try again") from e
