import os

import pytest
import torch

from qgnn.errors import CheckpointError
from qgnn.train.checkpoint import load_checkpoint, load_state, save_checkpoint, save_state, write_json


def test_checkpoint_round_trip(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    path = save_checkpoint(tmp_path / "m.ckpt", sd, {"config": {"model": "gcn"}})
    tensors, meta = load_checkpoint(path)
    assert meta["config"] == {"model": "gcn"} and meta["format"] == "qgnn-checkpoint/1"
    for k in sd:
        torch.testing.assert_close(tensors[k], sd[k])


@pytest.mark.parametrize("damage", ["random", "truncate", "empty"])
def test_corrupt_checkpoint_names_the_file(tmp_path, damage):
    path = save_checkpoint(tmp_path / "m.ckpt", {"w": torch.randn(64, 64)}, {})
    data = path.read_bytes()
    path.write_bytes({"random": os.urandom(2000), "truncate": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="m.ckpt"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_failed_write_keeps_previous_file(tmp_path):
    path = write_json(tmp_path / "r.json", {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})  # json cannot serialise it: the write fails midway
    assert path.read_text().strip().startswith("{") and '"ok": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_resume_state_refuses_pickled_code(tmp_path):
    path = tmp_path / "s.pt"
    torch.save({"format": "qgnn-state/1", "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="s.pt"):
        load_state(path)


def test_resume_state_round_trip(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))])
    state = {"format": "qgnn-state/1", "opt": opt.state_dict(), "rng": torch.get_rng_state(), "runs": [{"a": 1.0}]}
    back = load_state(save_state(tmp_path / "s.pt", state))
    assert back["runs"] == [{"a": 1.0}] and torch.equal(back["rng"], state["rng"])
