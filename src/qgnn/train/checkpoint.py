"""Checkpoints that load without pickle, written atomically.

* Model checkpoints are safetensors files: the tensors of a state dict plus a
  JSON metadata entry ``qgnn`` (format version, config, metrics), enough to
  rebuild the model without the training script.
* Training state for ``--resume`` (optimizer, RNG, finished runs) is a
  ``torch.save`` file of tensors and plain containers, read back with
  ``weights_only=True`` so a malicious file cannot run code.

Both are written to a temporary file in the same folder and moved into place
with ``os.replace``, so an interrupted write never leaves half a file behind.
The file gets the mode an ordinary ``open(path, "w")`` would give it (0644
under umask 022; an existing file keeps its own), not the temporary file's 0600.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qgnn.errors import CheckpointError

CHECKPOINT_FORMAT = "qgnn-checkpoint/1"


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` can only set it, and
    setting it briefly would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The mode ``path`` should end with: an existing file's own, else what ``open(path, "w")`` gives
    (0o666 less the umask). mkstemp creates 0600 files, which would hide results from a group / others."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the result onto ``path`` (with the mode of :func:`_final_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _final_mode(path))  # after write(): a writer may replace the file it was given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write JSON atomically (results files are read by other tools while runs go on)."""
    def _write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    return atomic_write(path, _write)


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict) -> Path:
    """Save a model state dict and its metadata as one safetensors file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    header = {"qgnn": json.dumps({"format": CHECKPOINT_FORMAT, **meta})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load (state_dict, metadata); a missing or corrupt file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("qgnn")
        tensors = load_file(str(path))
        meta = json.loads(raw_meta) if raw_meta else None
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {e}") from None
    if not meta or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a qgnn checkpoint (missing or unknown 'format' metadata)")
    return tensors, meta


def save_state(path: str | os.PathLike, state: dict) -> Path:
    """Save resumable training state (tensors and plain containers only)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict:
    """Load training state with ``weights_only=True``; corrupt files raise CheckpointError."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"resume state not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"resume state {path} is a folder; delete it (or pass --overwrite) to start over"
                              ) from None
    except Exception:  # torch raises many types for truncated / foreign files
        # torch's own message advises weights_only=False, i.e. running the file's code: never repeat it.
        raise CheckpointError(f"resume state {path} is corrupt (truncated, not a torch file, or holding objects "
                              "other than tensors and plain containers, which qgnn does not unpickle); delete it, or "
                              "rerun with --overwrite instead of --resume, to start over") from None
    if not isinstance(state, dict) or state.get("format") != "qgnn-state/1":
        raise CheckpointError(f"{path} is not a qgnn resume state; delete it (or pass --overwrite) to start over")
    return state
