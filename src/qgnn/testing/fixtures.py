"""pytest fixtures of the test kit (this module imports pytest: import it from test modules only).

A test module that imports a fixture gets it: ``from qgnn.testing.fixtures import data_env  # noqa: F401``
(autouse: every test of that module runs offline on the shared raw files, see
:func:`qgnn.testing.use_test_data`); ``shared_root``: the data root, or the test is skipped.
"""

from __future__ import annotations

import pytest

from qgnn.testing.data import require_data, use_test_data

__all__ = ["data_env", "shared_root"]


@pytest.fixture(autouse=True)
def data_env(monkeypatch, tmp_path_factory):
    return use_test_data(monkeypatch, tmp_path_factory)


@pytest.fixture
def shared_root():
    """The data root holding the real benchmark files (Cora at least); skips the test where it is absent."""
    return require_data()
