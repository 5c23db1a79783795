"""Seeds, and a snapshot of every random stream a training run draws from (for ``--resume``).

A resumed run must draw exactly the numbers the uninterrupted run would have drawn after the same epoch.
Training draws from

* torch's CPU default generator (dropout on CPU, Degree-Quant's protective masks, data-loader shuffling,
  MixQ's Gumbel samples),
* the CUDA generators (the same draws when the model runs on a GPU; ``torch.get_rng_state`` does not
  cover them),
* generators owned by modules: :class:`~qgnn.quant.PercentileObserver` samples its quantiles from a
  private ``torch.Generator``, reseeded whenever the model is rebuilt, and not part of the model's
  ``state_dict`` (its state is bookkeeping, not a weight to ship in a checkpoint),
* generators owned by the task: a mini-batch node task (:mod:`qgnn.train.minibatch`) shuffles its seeds
  and samples neighbours from its own ``torch.Generator``; the runner passes the task's ``generators()``,
* Python's ``random`` and NumPy's legacy global generator (nothing in qgnn draws from them during
  training today; they are captured so a user layer that does is resumed exactly too).

:func:`rng_state` captures all of them as tensors and plain containers (a resume state loads with
``weights_only=True``); :func:`load_rng_state` puts them back, into a freshly built model and task.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from qgnn.errors import CheckpointError

__all__ = ["set_seed", "rng_state", "load_rng_state", "module_generators"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and, if present, CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def module_generators(model: nn.Module | None) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute of a submodule, keyed ``"<module path>:<attribute>"``."""
    if model is None:
        return {}
    return {f"{name}:{attr}": value for name, module in model.named_modules()
            for attr, value in vars(module).items() if isinstance(value, torch.Generator)}


def rng_state(model: nn.Module | None = None, generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """The state of every random stream listed in the module docstring (``model``: its generators;
    ``generators``: other named generators, e.g. a task's)."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "modules": {k: g.get_state() for k, g in module_generators(model).items()},
    }
    if generators:  # absent otherwise: states of runs without them keep their layout
        state["generators"] = {k: g.get_state() for k, g in generators.items()}
    # Only when CUDA is in use: initialising it just to read its state would cost seconds on CPU runs.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict | torch.Tensor, model: nn.Module | None = None,
                   generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured. A bare tensor (resume states written before every stream
    was saved) restores torch's CPU generator only. A module generator the model lacks, or a named generator
    missing from ``generators`` (or one of ``generators`` the state lacks), is a CheckpointError: the state
    belongs to another model or task."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    gens = module_generators(model)
    missing = sorted(set(state["modules"]) - set(gens))
    if missing:
        raise CheckpointError(f"the resume state holds random generator(s) {', '.join(missing)} this model lacks")
    for key, gen_state in state["modules"].items():
        gens[key].set_state(gen_state)
    saved, given = state.get("generators", {}), dict(generators or {})
    if set(saved) != set(given):
        raise CheckpointError(f"the resume state holds random generator(s) {', '.join(sorted(saved)) or 'none'} "
                              f"but this run draws from {', '.join(sorted(given)) or 'none'}")
    for key, gen_state in saved.items():
        given[key].set_state(gen_state)
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
