"""Export of LightGCN recommendation models (GNAQ per-node levels, QAT / LSQ per-tensor grids) and their runtime.

Checkpoints are trained for an epoch on the synthetic interaction set by the real runner (``qgnn train``'s
path), exported by ``export_checkpoint`` and compared with the fake-quant model in eval mode: the decoded
table, the final embeddings, the scores and the top-K lists must be identical, not close. (The int8 ranking
path itself is tested against the float reference in test_export_rec_runtime.py.)
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from qgnn.cli import main
from qgnn.data import load_dataset
from qgnn.errors import CheckpointError, ConfigError
from qgnn.export import export_checkpoint, load_int_model, packed_nbytes, read_file
from qgnn.export.evaluate import evaluate_file
from qgnn.export.format import METADATA_KEY
from qgnn.export.rec import RecIntModel
from qgnn.train import TrainConfig, load_model, run_experiment
from qgnn.train.rec import RecTask
from qgnn.train.rec_metrics import topk_ranking
from qgnn.train.results import format_ratio

# hidden 5: N · d = 650 codes, so 1- and 2-bit tables end in padding bits
FAST = dict(dataset="synthetic-rec", model="lightgcn", batch_size=64, hidden=5, lr=0.02, seeds=1)
# "gnaq" takes its recipe's FP8 levels; "gnaq-fp32" pins float32 levels (the level_dtype option)
CASES = [("gnaq", 1), ("gnaq", 2), ("gnaq", 4), ("gnaq-fp32", 2), ("qat", 1), ("qat", 2), ("qat", 4), ("lsq", 1),
         ("lsq", 2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec-export")
    run_experiment(TrainConfig(**FAST, epochs=3), save=d / "fp32.ckpt", progress=False)
    return d, {}


def checkpoint(runs, method, bits):
    d, done = runs
    if (method, bits) not in done:
        ckpt = d / f"{method}{bits}.ckpt"
        quant = {"pretrained": str(d / "fp32.ckpt")}
        if method == "gnaq-fp32":
            quant["options"] = {"level_dtype": "fp32"}
        cfg = TrainConfig(**FAST, epochs=1, method=method.split("-")[0], bits=bits, quant=quant)
        run_experiment(cfg, save=ckpt, progress=False)
        out = d / f"{method}{bits}.qgnn.safetensors"
        export_checkpoint(ckpt, out)
        done[(method, bits)] = (ckpt, out)
    return done[(method, bits)]


def header(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n])


def rewrite(src, dst, edit_desc=None, edit_tensors=None):
    """Copy an export file with a modified descriptor / tensors, bypassing write_file's validation."""
    tensors, desc = read_file(src)
    if edit_desc:
        edit_desc(desc)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst), metadata={METADATA_KEY: json.dumps(desc)})
    return dst


@pytest.mark.parametrize("method,bits", CASES)
def test_runtime_reproduces_the_fake_quant_model(runs, method, bits):
    ckpt, out = checkpoint(runs, method, bits)
    fq, meta = load_model(ckpt)
    im = load_int_model(out)
    assert isinstance(im, RecIntModel) and im.desc["bits"] == {"table": bits}
    ds = load_dataset("synthetic-rec")
    task = RecTask(ds)
    im.set_graph(task.edge_index)
    with torch.no_grad():
        ego = fq.ego()
        ue, ie = fq()
    assert torch.equal(im.ego, ego)
    # the stored table really is b-bit: at most 2^b distinct values per node (GNAQ) or in the table (QAT / LSQ)
    gnaq = method.startswith("gnaq")
    per = [torch.unique(row).numel() for row in im.ego] if gnaq else [torch.unique(im.ego).numel()]
    assert max(per) <= 2 ** bits
    if gnaq:  # the levels are held as the file stores them: FP8 bytes unless float32 was asked for
        want = torch.float32 if method == "gnaq-fp32" else torch.float8_e4m3fn
        assert im.table.levels.dtype == want and fq.quant.level_dtype == ("fp32" if method == "gnaq-fp32" else "fp8")
        assert im.table_bytes == packed_nbytes(fq.num_nodes * fq.hidden, bits) + fq.storage()["level_bytes"]
    ue2, ie2 = im()
    assert torch.equal(ue2, ue) and torch.equal(ie2, ie)
    users = torch.arange(ds.num_users)
    assert torch.equal(im.scores(users), ue @ ie.T)
    a, _ = topk_ranking(ue, ie, users, [task.train_idx], 20)
    b, _ = topk_ranking(ue2, ie2, users, [task.train_idx], 20)
    assert torch.equal(a, b)
    assert task.evaluate(im, "test") == task.evaluate(fq, "test")
    # the runtime's own pass (packed table, int8 ranking, exact re-ranking) gives every user the same top-20
    # scores; the items may differ only among equal scores (torch.topk breaks ties arbitrarily: a 1-bit
    # table on d = 5 makes many exact ties, so there the metrics can differ as two valid tie orders do)
    _, va = topk_ranking(ue, ie, users, [task.train_idx], 21)
    c, vc = im.rank(users, [task.train_idx], 20, chunk=7)
    assert torch.allclose(vc, va[:, :20], rtol=1e-5, atol=1e-6)
    no_tie = va[:, 19] > va[:, 20]
    assert all(set(x.tolist()) == set(y.tolist()) for x, y, t in zip(a, c, no_tie, strict=True) if t)


@pytest.mark.parametrize("method,bits", [("gnaq", 1), ("gnaq", 2), ("gnaq-fp32", 2), ("qat", 2), ("qat", 4)])
def test_file_size_is_packed_codes_plus_levels_plus_header(runs, method, bits):
    ckpt, out = checkpoint(runs, method, bits)
    n_header, head = header(out)
    desc = json.loads(head["__metadata__"][METADATA_KEY])
    m = desc["model"]
    n, d = m["num_users"] + m["num_items"], m["hidden"]
    codes = packed_nbytes(n * d, bits)
    # levels: 1 byte each in FP8 (GNAQ's default), 4 in float32; QAT's scale / zero-point are inline in the JSON
    level_size = {"gnaq": 1, "gnaq-fp32": 4}.get(method, 0)
    levels = level_size * n * 2 ** bits
    assert out.stat().st_size == 8 + n_header + codes + levels
    assert {k: v["shape"] for k, v in head.items() if k != "__metadata__"} == (
        {"table.codes": [codes], "table.levels": [n, 2 ** bits]} if level_size else {"table.codes": [codes]})
    if level_size:
        assert head["table.levels"]["dtype"] == ("F8_E4M3" if level_size == 1 else "F32")
        assert m["table"]["level_dtype"] == ("float8_e4m3fn" if level_size == 1 else "float32")
    # far below the FP32 table (and the training checkpoint, which holds latent FP32 state too)
    assert codes + levels < 4 * n * d and out.stat().st_size < ckpt.stat().st_size


def test_eval_reports_metrics_and_sizes(runs, capsys):
    ckpt, out = checkpoint(runs, "gnaq", 2)
    r = evaluate_file(out, repeats=1)
    fq, _ = load_model(ckpt)
    ref = RecTask(load_dataset("synthetic-rec")).evaluate(fq, "test")
    assert {k: r[k] for k in ref} == ref and r["task"] == "rec" and r["evaluated"] > 0
    assert r["file_bytes"] == out.stat().st_size and r["table_bytes"] < r["fp32_table_bytes"]
    assert r["latency_ms"] > 0 and r["peak_memory_bytes"] >= 0
    st = r["ranking"]  # every evaluated user's list proved (first candidates, retry) or from the float fallback
    assert st["users"] == r["evaluated"] == st["proved"] + st["retried"] + st["fallback"]
    assert main(["eval", str(out), "--repeats", "1", "--split", "val"]) == 0
    text = capsys.readouterr().out
    for key in ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "latency", "peak memory", "file size"):
        assert key in text
    assert f"{format_ratio(r['fp32_table_bytes'] / r['table_bytes'])} smaller" in text  # the CLI's one ratio format
    with pytest.raises(ConfigError, match="split"):
        evaluate_file(out, split="all", repeats=1)
    with pytest.raises(ConfigError, match="users"):
        evaluate_file(out, dataset="ml-100k", repeats=1)


def test_cli_export_and_refusals(runs, tmp_path, capsys):
    d, _ = runs
    ckpt, _ = checkpoint(runs, "qat", 2)
    out = tmp_path / "m.qgnn.safetensors"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert "uniform table at 2 bits" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="nothing to pack"):
        export_checkpoint(d / "fp32.ckpt", tmp_path / "fp32.qgnn.safetensors")
    assert main(["eval", str(d / "fp32.ckpt")]) == 2  # a training checkpoint is not an export file
    assert "qgnn_export" in capsys.readouterr().err


def test_truncated_and_corrupt_files_are_refused(runs, tmp_path):
    _, out = checkpoint(runs, "gnaq", 2)
    raw = out.read_bytes()
    cut = tmp_path / "cut.qgnn.safetensors"
    cut.write_bytes(raw[:-50])
    with pytest.raises(CheckpointError, match="truncated"):
        load_int_model(cut)
    junk = tmp_path / "junk.qgnn.safetensors"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="not a qgnn export file"):
        load_int_model(junk)

    def bad(name, match, edit_desc=None, edit_tensors=None, src=out):
        path = rewrite(src, tmp_path / f"{name}.qgnn.safetensors", edit_desc, edit_tensors)
        with pytest.raises(CheckpointError, match=match):
            load_int_model(path)

    bad("bits", "model.table.codes", lambda d: (d["model"]["table"].update(bits=4), d.update(bits={"table": 4})))
    bad("bits9", "1..8", lambda d: (d["model"]["table"].update(bits=9), d.update(bits={"table": 9})))
    bad("bitsmap", "bits must be", lambda d: d.update(bits={"table": 3}))
    bad("kind", "unknown kind", lambda d: d["model"]["table"].update(kind="bigear"))
    bad("users", "model.table", lambda d: d["model"].update(num_users=d["model"]["num_users"] + 1))
    bad("version", "version", lambda d: d.update(version=2))
    bad("missing", "missing tensor", edit_tensors=lambda t: t.pop("table.levels"))
    bad("extra", "unexpected tensor", edit_tensors=lambda t: t.update(extra=torch.zeros(2)))
    bad("dtype", "float8_e4m3fn", edit_tensors=lambda t: t.update({"table.levels": t["table.levels"].float()}))
    bad("nan", "NaN", edit_tensors=lambda t: t.update({"table.levels": with_nan(t["table.levels"])}))
    bad("level_dtype", "level_dtype", lambda d: d["model"]["table"].update(level_dtype="float16"))
    bad("padding", "padding", edit_tensors=lambda t: t["table.codes"].__setitem__(-1, 0xFF))  # 1300 bits: 4 pad
    bad("graph", "sha256", lambda d: d["graph"].update(sha256="xyz"))
    _, qat = checkpoint(runs, "qat", 2)
    bad("scale", "positive", lambda d: d["model"]["table"].update(scale=[-1.0]), src=qat)
    bad("grid", "grid", lambda d: d["model"]["table"].update(qmin=-2), src=qat)
    bad("shape", "shape", lambda d: d["model"]["table"].update(shape=[3, 3]), src=qat)
    _, g32 = checkpoint(runs, "gnaq-fp32", 2)
    bad("nan32", "NaN", edit_tensors=lambda t: t.update({"table.levels": with_nan(t["table.levels"])}), src=g32)
    bad("fp8-named-float32", "float32", lambda d: d["model"]["table"].update(level_dtype="float32"))


def with_nan(levels):
    x = levels.to(torch.float32).clone()
    x[0, 0] = float("nan")
    return x.to(levels.dtype)


def test_a_file_written_before_fp8_levels_still_loads(runs, tmp_path):
    """Files without ``level_dtype`` (float32 levels, the layout before FP8 levels) read and decode as before."""
    _, out = checkpoint(runs, "gnaq-fp32", 2)
    old = rewrite(out, tmp_path / "old.qgnn.safetensors", lambda d: d["model"]["table"].pop("level_dtype"))
    a, b = load_int_model(out), load_int_model(old)
    assert "level_dtype" not in b.desc["model"]["table"] and torch.equal(a.ego, b.ego)


def test_another_training_graph_is_refused(runs, tmp_path):
    _, out = checkpoint(runs, "gnaq", 2)
    path = rewrite(out, tmp_path / "g.qgnn.safetensors", lambda d: d["graph"].update(sha256="0" * 64))
    with pytest.raises(ConfigError, match="differ"):
        evaluate_file(path, repeats=1)
