"""Test-wide settings: nothing downloads, processed files go to a temporary cache, one thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    os.environ["QGNN_OFFLINE"] = "1"
    os.environ.setdefault("QGNN_DATA", str(SHARED_DATA))
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    # A session-wide cache keeps processed datasets between tests but never beside the raw data.
    if "QGNN_CACHE" not in os.environ:
        os.environ["QGNN_CACHE"] = str(tmp_path_factory.mktemp("qgnn-cache"))
    yield


def has_real_data() -> bool:
    root = Path(os.environ.get("QGNN_DATA", SHARED_DATA))
    return (root / "planetoid" / "Cora" / "raw").is_dir()


needs_data = pytest.mark.skipif(not has_real_data(), reason="real benchmark data not found (set QGNN_DATA)")
