"""Versions, machine and optional backends: what `qgnn info` prints and results JSON records."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the qgnn checkout, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """qgnn / torch / PyG versions, git commit and machine, for the results JSON."""
    import torch
    import torch_geometric

    import qgnn

    return {
        "qgnn": qgnn.__version__,
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def backends() -> dict[str, tuple[bool, str]]:
    """Optional backends: name -> (available, reason). Never imports triton itself."""
    import torch

    out: dict[str, tuple[bool, str]] = {}
    if torch.cuda.is_available():
        out["cuda"] = (True, torch.cuda.get_device_name(0))
    else:
        out["cuda"] = (False, "torch.cuda.is_available() is False (no GPU or a CPU build of torch)")
    if importlib.util.find_spec("triton") is None:
        out["triton"] = (False, "the triton package is not installed (pip install 'qgnn[triton]')")
    elif not torch.cuda.is_available():
        out["triton"] = (False, "triton is installed but there is no CUDA device; kernels fall back to PyTorch")
    else:
        out["triton"] = (True, "triton installed and a CUDA device is present")
    out["int_mm"] = (
        hasattr(torch, "_int_mm"),
        "torch._int_mm (int8 x int8 -> int32 matmul)" if hasattr(torch, "_int_mm") else "torch too old",
    )
    if importlib.util.find_spec("matplotlib") is None:
        out["plots"] = (False, "matplotlib is not installed (pip install 'qgnn[plot]')")
    else:
        out["plots"] = (True, "matplotlib installed")
    return out
