"""Versions, machine and optional backends: what `qgnn info` prints and results JSON records; the device check.

Two levels, because importing torch alone takes 1-2 s:

* :func:`environment` / :func:`backends` (``probe_torch=True``): torch imported, exact figures (the
  results JSON, ``qgnn info --torch``).
* :func:`light_environment` / :func:`backends` (``probe_torch=False``): what ``qgnn info`` prints by
  default, without importing torch, PyG or numpy: versions from the installed packages' metadata, torch's
  CUDA build from its ``torch/version.py`` (read, not imported), GPUs from the NVIDIA driver's ``/proc``
  entries, optional packages with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from pathlib import Path

from qgnn.errors import ConfigError


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


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution (no import), or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_build() -> dict:
    """``{"version", "cuda", "hip"}`` of the installed torch, read from ``torch/version.py`` without importing
    torch (its module-level constants; values None when torch is absent or the file unreadable)."""
    out = {"version": installed_version("torch"), "cuda": None, "hip": None}
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return out
    try:
        tree = ast.parse((Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return out
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            if target.id == "__version__":
                out["version"] = value.value
            elif target.id in ("cuda", "hip"):
                out[target.id] = value.value
    return out


def nvidia_gpus() -> int | None:
    """GPUs the NVIDIA driver lists under ``/proc/driver/nvidia/gpus`` (Linux), or None where that is not
    known (no such folder: no driver, or another OS)."""
    folder = Path("/proc/driver/nvidia/gpus")
    try:
        return sum(1 for _ in folder.iterdir())
    except OSError:
        return None


def light_environment() -> dict:
    """What ``qgnn info`` prints, without importing torch: versions, commit, machine, the thread setting."""
    import qgnn

    threads = os.environ.get("OMP_NUM_THREADS")
    return {
        "qgnn": qgnn.__version__,
        "torch": torch_build()["version"],
        "torch_geometric": installed_version("torch_geometric"),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": f"OMP_NUM_THREADS={threads}" if threads else "torch's default (`qgnn info --torch`)",
    }


def _cuda_without_torch() -> tuple[bool, str]:
    build = torch_build()
    if build["version"] is None:
        return False, "torch is not installed"
    if build["cuda"] is None and build["hip"] is None:
        return False, f"this torch ({build['version']}) is built without CUDA"
    runtime = f"CUDA {build['cuda']}" if build["cuda"] else f"ROCm/HIP {build['hip']}"
    gpus = nvidia_gpus()
    if gpus is None:
        return False, (f"torch {build['version']} is built for {runtime}; no GPU driver entry found "
                       "(`qgnn info --torch` asks torch)")
    return gpus > 0, (f"torch {build['version']} is built for {runtime}; the driver lists {gpus} GPU(s) "
                      "(`qgnn info --torch` asks torch)")


def _version_at_least(version: str | None, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(x) for x in (version or "").split("+")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def neighbor_sampler(probe_torch: bool = True) -> str:
    """Who samples neighbours for ``qgnn.data.sampler.make_neighbor_loader``: ``"pyg-lib"`` or
    ``"torch-sparse"`` (PyG's ``NeighborSampler`` calls them, preferring pyg-lib), else ``"qgnn"`` (qgnn's torch
    sampler). With ``probe_torch``, whether they import (PyG's own ``torch_geometric.typing`` flags, what its
    sampler checks); otherwise only whether they are installed (``importlib.util.find_spec``, nothing imported)."""
    if probe_torch:
        import torch_geometric.typing as pyg_typing

        pyg_lib, torch_sparse = pyg_typing.WITH_PYG_LIB, pyg_typing.WITH_TORCH_SPARSE
    else:
        pyg_lib = importlib.util.find_spec("pyg_lib") is not None
        torch_sparse = importlib.util.find_spec("torch_sparse") is not None
    return "pyg-lib" if pyg_lib else "torch-sparse" if torch_sparse else "qgnn"


def _sampler_line(probe_torch: bool) -> tuple[bool, str]:
    name, seen = neighbor_sampler(probe_torch), "imports" if probe_torch else "is installed"
    if name != "qgnn":
        return True, f"{name} {seen}: PyG's NeighborLoader samples with it"
    return True, (f"qgnn torch sampler in PyG's NodeLoader (neither pyg-lib nor torch-sparse {seen}; "
                  "both are optional, installed from PyG's wheel index)")


def backends(probe_torch: bool = True) -> dict[str, tuple[bool, str]]:
    """Optional backends: name -> (available, reason). Never imports triton itself; imports torch only with
    ``probe_torch`` (otherwise CUDA and ``torch._int_mm`` are judged from torch's build and version)."""
    out: dict[str, tuple[bool, str]] = {}
    if probe_torch:
        import torch

        cuda = torch.cuda.is_available()
        out["cuda"] = ((True, torch.cuda.get_device_name(0)) if cuda else
                       (False, "torch.cuda.is_available() is False (no GPU or a CPU build of torch)"))
        int_mm = hasattr(torch, "_int_mm")
    else:
        out["cuda"] = _cuda_without_torch()
        cuda = out["cuda"][0]
        int_mm = _version_at_least(torch_build()["version"], (2, 1))  # torch._int_mm since torch 2.1
    if importlib.util.find_spec("triton") is None:
        out["triton"] = (False, "the triton package is not installed (pip install 'qgnn[triton]')")
    elif not cuda:
        out["triton"] = (False, "triton is installed but there is no CUDA device; kernels fall back to PyTorch")
    else:
        out["triton"] = (True, "triton installed and a CUDA device is present")
    out["int_mm"] = (int_mm, "torch._int_mm (int8 x int8 -> int32 matmul)" if int_mm else "torch too old")
    if probe_torch:  # the integer runtime's kernels (qgnn.kernels.intops): which backend runs, and why
        from qgnn.kernels.intops import runtime_backends

        out.update(runtime_backends())
    if importlib.util.find_spec("matplotlib") is None:
        out["plots"] = (False, "matplotlib is not installed (pip install 'qgnn[plot]')")
    else:
        out["plots"] = (True, "matplotlib installed")
    out["sampler"] = _sampler_line(probe_torch)
    return out


def check_device(device: str, flag: str = "--device") -> None:
    """Refuse, before any data is loaded, a device this torch / machine cannot run on (torch would otherwise
    fail mid-run with "Torch not compiled with CUDA enabled" and a traceback)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{flag} {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ConfigError(f"{flag} {device}: this torch has no CUDA (torch {torch.__version__}); "
                              f"use {flag} cpu")
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: no CUDA device is visible (torch {torch.__version__}); "
                              f"use {flag} cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"{flag} {device}: there are {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{flag} {device}: this torch / machine has no MPS backend (torch "
                              f"{torch.__version__}); use {flag} cpu")
        return
    raise ConfigError(f"{flag} {device}: qgnn runs on cpu, cuda, cuda:N or mps")
