"""Seeds. Training loops draw randomness from torch only (dropout, shuffling),
so one torch RNG state captures everything a resumed run needs."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and, if present, CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
