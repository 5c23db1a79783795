from __future__ import annotations

from pathlib import Path

import pytest
import qgnn_data_testutil as util

from qgnn.data import cache_dir, resolve_root
from qgnn.data.paths import build_with_retry, find_raw, offline, processed_dir
from qgnn.errors import DataNotFoundError, QgnnError
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)


def test_resolve_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("QGNN_DATA", str(tmp_path / "env"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv("QGNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_root() == tmp_path / "xdg" / "qgnn" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root() == tmp_path / "home" / ".cache" / "qgnn" / "data"


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("QGNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "qgnn"


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_offline_flag(monkeypatch, value, expected):
    monkeypatch.setenv("QGNN_OFFLINE", value)
    assert offline() is expected


def test_processed_dir_is_in_cache_and_keyed_by_raw_dir(monkeypatch, tmp_path):
    fresh_cache = util.fresh_cache(monkeypatch, tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pa, pb = processed_dir("tu", "X", a), processed_dir("tu", "X", b)
    assert pa.parent == fresh_cache / "processed" / "tu" / "X"
    assert pa != pb and pa == processed_dir("tu", "X", a)
    (a / "f.txt").write_text("changed")  # new raw content -> new key
    assert processed_dir("tu", "X", a) != pa


def _touch(folder: Path, files):
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f).write_text("x")


def test_find_raw_prefers_root_then_cache(monkeypatch, tmp_path):
    fresh_cache = util.fresh_cache(monkeypatch, tmp_path)
    root = tmp_path / "root"
    _touch(fresh_cache / "data" / "k" / "n", ["a", "b"])
    assert find_raw("k/n", ["a", "b"], root) == fresh_cache / "data" / "k" / "n"
    _touch(root / "k" / "n", ["a"])  # incomplete root folder: still the cache
    assert find_raw("k/n", ["a", "b"], root) == fresh_cache / "data" / "k" / "n"
    _touch(root / "k" / "n", ["b"])
    assert find_raw("k/n", ["a", "b"], root) == root / "k" / "n"


def test_find_raw_offline_never_downloads(monkeypatch, tmp_path):
    util.fresh_cache(monkeypatch, tmp_path)
    calls = []
    with pytest.raises(DataNotFoundError) as e:
        find_raw("k/n", ["a", "b"], tmp_path / "root", download=calls.append)
    assert calls == []
    msg = str(e.value)
    assert "a, b" in msg and str(tmp_path / "root" / "k" / "n") in msg and "QGNN_OFFLINE" in msg


def test_find_raw_downloads_into_cache_when_online(monkeypatch, tmp_path):
    fresh_cache = util.fresh_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("QGNN_OFFLINE", "0")
    got = find_raw("k/n", ["a"], tmp_path / "root", download=lambda d: _touch(d, ["a"]))
    assert got == fresh_cache / "data" / "k" / "n" and (got / "a").is_file()
    assert not (tmp_path / "root").exists()


def test_find_raw_download_failure_is_clear_and_cleaned_up(monkeypatch, tmp_path):
    fresh_cache = util.fresh_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("QGNN_OFFLINE", "0")

    def broken(folder: Path):
        _touch(folder, ["partial"])
        raise OSError("network is unreachable")

    with pytest.raises(DataNotFoundError, match="network is unreachable") as e:
        find_raw("k/n", ["a"], tmp_path / "root", download=broken)
    assert "download" in str(e.value) and "a" in str(e.value)
    assert not (fresh_cache / "data" / "k" / "n").exists()  # no half-filled folder left behind


def test_build_with_retry():
    calls = []

    def flaky(force):
        calls.append(force)
        if not force:
            raise EOFError("truncated data.pt")
        return "ok"

    assert build_with_retry(flaky, "X") == "ok" and calls == [False, True]

    def broken(force):
        raise ValueError("bad")

    with pytest.raises(QgnnError, match="cannot load X"):
        build_with_retry(broken, "X")

    def user_error(force):
        calls.append(force)
        raise QgnnError("corrupt raw file")

    calls.clear()
    with pytest.raises(QgnnError, match="corrupt raw"):
        build_with_retry(user_error, "X")
    assert calls == [False]  # a clear error is not retried
