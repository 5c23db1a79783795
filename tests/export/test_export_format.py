"""The export file: round trip, and a loader that never unpickles and refuses malformed or truncated
files (random bytes, cut files, wrong version, missing / extra / mis-typed tensors, bad grids) with a
CheckpointError naming the problem."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from qgnn_export_testutil import NODE_DATA, node_model
from safetensors.torch import save_file

from qgnn.errors import CheckpointError
from qgnn.export import export_model, load_int_model, packed_nbytes, read_file, write_file
from qgnn.export.format import METADATA_KEY


@pytest.fixture(scope="module")
def exported():
    return export_model(node_model("gcn", "qat", 4, steps=2))


def write_raw(path, tensors, desc):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={METADATA_KEY: json.dumps(desc)})
    return path


def test_round_trip(exported, tmp_path):
    tensors, desc = exported
    path = write_file(tmp_path / "m.qgnn.safetensors", tensors, desc)
    t2, d2 = read_file(path)
    assert d2["format"] == "qgnn-packed" and d2["version"] == 1
    assert set(t2) == set(tensors) and all(torch.equal(t2[k], tensors[k]) for k in tensors)
    # weights are stored packed at their bits: 4-bit codes take half a byte each
    w = d2["model"]["convs"][0]["slots"]["weight"]
    assert t2[w["codes"]].numel() == packed_nbytes(w["shape"][0] * w["shape"][1], 4)
    assert d2["bits"]["convs.0.weight"] == 4
    load_int_model(path)(NODE_DATA.data.x, NODE_DATA.data.edge_index)


def test_random_and_truncated_bytes(exported, tmp_path):
    tensors, desc = exported
    good = write_file(tmp_path / "good.qgnn.safetensors", tensors, desc).read_bytes()
    g = torch.Generator().manual_seed(0)
    bad = tmp_path / "bad.qgnn.safetensors"
    for size in (0, 3, 8, 100, 5000):
        bad.write_bytes(bytes(torch.randint(0, 256, (size,), generator=g, dtype=torch.uint8).tolist()))
        with pytest.raises(CheckpointError, match="not a qgnn export file|truncated"):
            load_int_model(bad)
    for cut in (1, 9, 200, len(good) // 2, len(good) - 1):
        bad.write_bytes(good[:cut])
        with pytest.raises(CheckpointError):
            load_int_model(bad)
    # flipped bytes inside the JSON header
    b = bytearray(good)
    b[20:40] = b"\xff" * 20
    bad.write_bytes(bytes(b))
    with pytest.raises(CheckpointError):
        load_int_model(bad)


def test_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.qgnn.safetensors"
    path.write_bytes(pickle.dumps({"x": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="not a qgnn export file"):
        load_int_model(path)
    torch.save({"x": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a qgnn export file"):
        load_int_model(path)


def test_training_checkpoint_is_refused(tmp_path):
    from qgnn.train.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "run.ckpt", {"w": torch.zeros(2)}, {"config": {}})
    with pytest.raises(CheckpointError, match="qgnn export"):
        load_int_model(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_int_model(tmp_path / "missing.qgnn.safetensors")


def _mutated(exported, fn):
    tensors, desc = exported
    tensors = {k: v.clone() for k, v in tensors.items()}
    desc = json.loads(json.dumps({"format": "qgnn-packed", "version": 1, **desc}))
    fn(tensors, desc)
    return tensors, desc


def _w(desc):
    return desc["model"]["convs"][0]["slots"]["weight"]


MUTATIONS = {
    "version": (lambda t, d: d.update(version=2), "version 2"),
    "format": (lambda t, d: d.update(format="other"), "not a qgnn export file"),
    "missing tensor": (lambda t, d: t.pop("convs.0.bias"), "missing tensor"),
    "extra tensor": (lambda t, d: t.update(stray=torch.zeros(1)), "unexpected tensor"),
    "dtype": (lambda t, d: t.update({"convs.0.bias": t["convs.0.bias"].double()}), "must be float32"),
    "shape": (lambda t, d: t.update({"convs.0.bias": t["convs.0.bias"][:-1]}), "must be float32"),
    "truncated codes": (lambda t, d: t.update({_w(d)["codes"]: t[_w(d)["codes"]][:-1]}), "must be uint8"),
    "bits 9": (lambda t, d: _w(d).update(bits=9), "bits"),
    "bits 0": (lambda t, d: _w(d).update(bits=0), "bits"),
    "grid": (lambda t, d: _w(d).update(qmax=9), "grid"),
    "binary": (lambda t, d: _w(d).update(binary=True), "binary"),
    "weight shape": (lambda t, d: _w(d).update(shape=[3, 3]), "shape"),
    "granularity": (lambda t, d: _w(d).update(granularity="node"), "per tensor or per output channel"),
    "layer type": (lambda t, d: d["model"]["convs"][0].update(type="conv9"), "unknown layer type"),
    "unknown slot": (lambda t, d: d["model"]["convs"][0]["slots"].update(message={}), "slots"),
    "layer widths": (lambda t, d: d["model"]["convs"][1].update({"in": 5}), "in"),
    "arch": (lambda t, d: d["model"].update(arch="transformer"), "arch"),
    "nan": (lambda t, d: t["convs.0.bias"].fill_(float("nan")), "NaN"),
    "scale": (lambda t, d: d["model"]["convs"][0]["slots"]["input"].update(scale=[-1.0]), "positive"),
    "zero point": (lambda t, d: d["model"]["convs"][0]["slots"]["input"].update(zero_point=[99]), "grid"),
    "scale list": (lambda t, d: d["model"]["convs"][0]["slots"]["input"].update(scale=[1.0, 2.0]), "scale"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_malformed_descriptors_are_refused(exported, tmp_path, case):
    fn, msg = MUTATIONS[case]
    tensors, desc = _mutated(exported, fn)
    path = write_raw(tmp_path / "bad.qgnn.safetensors", tensors, desc)
    with pytest.raises(CheckpointError, match=msg):
        load_int_model(path)


def test_writer_validates_too(exported, tmp_path):
    tensors, desc = _mutated(exported, lambda t, d: t.pop("convs.0.bias"))
    with pytest.raises(CheckpointError, match="missing"):
        write_file(tmp_path / "x.qgnn.safetensors", tensors, desc)
    assert not (tmp_path / "x.qgnn.safetensors").exists()


def test_a2q_codes_must_match_widths(tmp_path):
    from qgnn_export_testutil import scramble_a2q_widths

    m = node_model("gcn", "a2q", 4, steps=1)
    scramble_a2q_widths(m)
    tensors, desc = export_model(m)
    path = write_file(tmp_path / "ok.qgnn.safetensors", tensors, desc)
    load_int_model(path)
    w = desc["model"]["convs"][0]["slots"]["weight"]
    tensors[w["widths"]] = tensors[w["widths"]].clone()
    tensors[w["widths"]][0] += 1 if tensors[w["widths"]][0] < 4 else -1  # the byte count no longer fits
    path = write_raw(tmp_path / "bad.qgnn.safetensors", tensors, {"format": "qgnn-packed", "version": 1, **desc})
    with pytest.raises(CheckpointError, match="widths need"):
        load_int_model(path)
