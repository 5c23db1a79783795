"""Test-wide settings: nothing downloads, processed files go to a temporary cache, one thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qgnn.testing import needs_data as _needs_data

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


# Skip marker of the tests that read Cora. The root is explicit: this runs at import, before pytest_configure
# sets the QGNN_DATA default (qgnn.testing.data_root would otherwise cache the unset value).
needs_data = _needs_data("cora", root=os.environ.get("QGNN_DATA", SHARED_DATA))
