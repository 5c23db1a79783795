"""Output targets of a run: checked before any work starts, written after it without losing finished runs.

* :func:`check_file_target` / :func:`check_dir_target`: a results JSON, checkpoint, export file or output
  folder that cannot be written is refused before data is loaded or training starts (one line naming the flag
  and the reason), not after an hour of training. The check creates nothing: it writes and removes one
  probe file in the nearest folder that exists (the folders below it are created at the real write).
* :func:`check_stale_state`: a resume state beside the outputs (``<out>.state.pt``) holds an interrupted
  run; starting over without ``resume`` would silently delete it, so it is refused unless ``overwrite``.
* :func:`write_outputs`: the writes of a finished run. A write that fails anyway (disk full, a folder made
  read-only or removed mid-run) does not lose the run: the other outputs are still written, the failed one
  goes to a rescue folder, and the resume state (which holds every finished run) is kept, so
  ``--resume`` writes the outputs again without training. One :class:`OutputWriteError` line says where
  everything is; it carries the results for Python callers.

No import of torch here: the checks run before anything heavy is loaded.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from qgnn.errors import ConfigError, QgnnError

__all__ = ["OutputWriteError", "check_dir_target", "check_file_target", "check_stale_state", "state_path_for",
           "save_state_or_warn", "write_outputs"]


class OutputWriteError(QgnnError):
    """A finished run's output could not be written; ``results`` holds what was computed."""

    def __init__(self, message: str, results: dict | None = None):
        super().__init__(message)
        self.results = results


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists (a file there means the folder cannot be created)."""
    f = folder
    while not f.exists() and f.parent != f:
        f = f.parent
    return f


def _probe(folder: Path) -> str | None:
    """None when a file can be created (and renamed onto) in ``folder``, else the reason it cannot."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qgnn-probe.", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(tmp)
    return None


def _check_folder(folder: Path, flag: str, target: Path) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise ConfigError(f"{flag} {target}: cannot create the folder {folder} ({base} is a file); "
                          f"choose another {flag}")
    why = _probe(base)
    if why is not None:
        raise ConfigError(f"{flag} {target}: cannot write in {base} ({why}); choose another {flag}")


def check_file_target(path: str | os.PathLike, flag: str) -> Path:
    """Refuse an output file that cannot be written (its folder unwritable or not creatable, or it is a folder)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    _check_folder(path.parent, flag, path)
    return path


def check_dir_target(path: str | os.PathLike, flag: str) -> Path:
    """Refuse an output folder that cannot be created or written in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; give a folder")
    _check_folder(path, flag, path)
    return path


def state_path_for(out: str | os.PathLike | None, save: str | os.PathLike | None) -> Path | None:
    """The resume state of a run: beside the results (``<out>.state.pt``), else beside the checkpoint."""
    anchor = out or save
    return Path(f"{anchor}.state.pt") if anchor else None


def check_stale_state(state_path: Path | None, resume: bool, overwrite: bool) -> None:
    """An interrupted run's state is continued (``resume``), replaced (``overwrite``: deleted now), or the
    run is refused: starting over would otherwise delete it without a word."""
    if resume and overwrite:
        raise ConfigError("--resume continues an interrupted run and --overwrite deletes it: pass one of them")
    if state_path is None or resume or not state_path.exists():
        return
    if overwrite:
        state_path.unlink()
        return
    raise ConfigError(f"{state_path} holds an interrupted run of this command: --resume to continue it, or delete "
                      "it / pass --overwrite to start over")


def save_state_or_warn(runner, state: dict) -> None:
    """Save ``runner.state_path``; a state that cannot be written mid-run (disk full, folder gone) costs
    resumability, not the run: warn once, go on, and set ``runner.state_save_failed`` so that
    :func:`write_outputs` knows the file on disk (if any) is not current."""
    from qgnn.train.checkpoint import save_state

    try:
        save_state(runner.state_path, state)
    except OSError as e:
        if not getattr(runner, "state_save_failed", False):
            print(f"qgnn: warning: cannot save the resume state {runner.state_path} ({e.strerror or e}); training "
                  "goes on without it", file=sys.stderr)
        runner.state_save_failed = True
    else:
        runner.state_save_failed = False


def _rescue_folder(near: Sequence[Path]) -> Path | None:
    """A new folder for outputs that could not go where asked: beside the state, else here, else in /tmp."""
    for base in (*near, Path.cwd(), Path(tempfile.gettempdir())):
        try:
            return Path(tempfile.mkdtemp(prefix=f"qgnn-rescue-{time.strftime('%Y%m%d-%H%M%S')}-", dir=base))
        except OSError:
            continue
    return None


def write_outputs(writes: Sequence[tuple[str, Path, Callable[[Path], object]]], results: dict,
                  state_path: Path | None = None, state_current: bool = True) -> None:
    """Run each ``(flag, path, write)`` in order; when all succeed, delete the resume state (the run is on disk).

    A write raising OSError is redone at once into a rescue folder (so a later write, e.g. the results JSON
    after the checkpoint, records where it went) and the others still run; the state is kept, and
    :class:`OutputWriteError` names the failed target, where its content went and, when the state holds every
    finished run (``state_current``: no save of it failed), how to write the outputs again without training.
    """
    state_kept = state_path is not None and state_path.exists() and state_current
    rescue: Path | None = None
    parts, failed = [], []
    for flag, path, write in writes:
        try:
            write(path)
            continue
        except OSError as e:
            why = e.strerror or str(e)
        rescue = rescue or _rescue_folder([state_path.parent] if state_kept else [])
        where = "it was not written anywhere"
        if rescue is not None:
            try:
                write(rescue / path.name)
                where = f"wrote it to {rescue / path.name} instead"
            except OSError:
                pass
        parts.append(f"could not write {flag} {path} ({why}); {where}")
        failed.append((flag, path))
    if not parts:
        if state_path is not None and state_path.exists():
            state_path.unlink()
        return
    if rescue is not None and not any(rescue.iterdir()):
        rescue.rmdir()
    tail = ""
    if state_kept:
        # the state sits beside one output (state_path_for): that one's path must stay, the others may change
        anchor = next((path for _, path in failed if Path(f"{path}.state.pt") == state_path), None)
        how = (f"once {anchor.parent} is writable" if anchor is not None else
               f"(with a writable {', '.join(dict.fromkeys(f for f, _ in failed))} if need be)")
        tail = (f"; the finished runs are kept in {state_path}: rerun the same command with --resume {how} to write "
                "them without training again")
    raise OutputWriteError("; ".join(parts) + tail, results)
