"""Training under torchrun (qgnn.train.distributed): two gloo ranks on small graphs.

The multi-process tests launch ``torchrun --nproc_per_node 2`` on :mod:`qgnn.testing.ddp_worker` (each rank
writes the model state it holds, so the ranks are compared here, not by the runner's own check) and on
``qgnn train`` itself (only rank 0 writes). Several configurations share one launch to keep the suite short.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qgnn.train.distributed import DistError, Shard, ShardSampler, from_environ

pytest.importorskip("torch.distributed")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


# -- in one process ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (1, 2), (0, 2), (5, 8)])
def test_shard_sampler_partitions_each_epoch(n, world):
    g = [torch.Generator().manual_seed(3) for _ in range(world)]
    parts = [list(ShardSampler(n, r, world, g[r])) for r in range(world)]
    assert all(len(p) == len(ShardSampler(n, r, world, None)) for r, p in enumerate(parts))
    assert len({len(p) for p in parts}) <= 1  # every rank as many items: DDP's collectives need it
    flat = [i for p in parts for i in p]
    assert set(flat) == set(range(n))  # every item on some rank
    assert len(flat) - n == (-n) % world if n else flat == []  # only the padding repeats
    again = [list(ShardSampler(n, r, world, g[r])) for r in range(world)]  # the next epoch: another order
    if n > 3:
        assert again != parts


def test_shard_sampler_same_generator_state_same_order():
    a = list(ShardSampler(20, 1, 2, torch.Generator().manual_seed(5)))
    b = list(ShardSampler(20, 1, 2, torch.Generator().manual_seed(5)))
    assert a == b
    assert list(ShardSampler(6, 0, 2, None, shuffle=False)) == [0, 2, 4]


def test_shard_batch_size_keeps_the_step_batch():
    assert Shard(0, 2).batch_size(64) == 32
    assert Shard(1, 3).batch_size(64) == 22
    assert Shard(0, 8).batch_size(3) == 1
    assert Shard(1, 2).split(torch.arange(5)).tolist() == [1, 3]


def test_from_environ():
    assert from_environ({}) is None
    assert from_environ({"WORLD_SIZE": "1", "RANK": "0"}) is None  # a world of one: the plain single process
    launch = from_environ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (3, 4, 1, 2)
    with pytest.raises(DistError, match="not a rank"):
        from_environ({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(DistError, match="not integers"):
        from_environ({"WORLD_SIZE": "two"})


def test_sync_is_off_in_one_process():
    from qgnn.quant import sync

    mn, mx = torch.tensor([1.0]), torch.tensor([2.0])
    with sync.syncing():
        assert not sync.active()  # no process group
        assert sync.min_max(mn, mx) == (mn, mx)
        assert sync.any_true(False) is False


def test_file_backed_tells_mapped_tensors_from_private_ones(tmp_path):
    from qgnn.train.distributed import _file_backed

    path = tmp_path / "t.bin"
    torch.arange(1 << 16, dtype=torch.float32).numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=True, size=1 << 16, dtype=torch.float32)
    assert _file_backed(mapped) and _file_backed(mapped[100:])
    assert not _file_backed(mapped.clone()) and not _file_backed(torch.zeros(1 << 16))


# -- two processes -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    if env.get("QGNN_DATA"):  # the ranks run in a temporary folder: a relative data root (the README's) must not move
        env["QGNN_DATA"] = str(Path(env["QGNN_DATA"]).resolve())
    return {**env, "OMP_NUM_THREADS": "1", "QGNN_OFFLINE": "1", "QGNN_DIST_TIMEOUT": "60", **extra}


def _torchrun(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _same(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k].nan_to_num(), b[k].nan_to_num())]


_NODE = {"dataset": "synthetic-node", "model": "gcn", "epochs": 3, "seeds": 1, "batch_size": 32,
         "fanout": [4, 4], "hidden": 16}
_GRAPH = {"dataset": "synthetic-graph", "model": "gin", "epochs": 2, "seeds": 1, "folds": 1, "batch_size": 16,
          "hidden": 16}
# full batch on Cora: its 15 MB of features go through the machine's shared mapping (Dist.load_shared_graph)
_FULL = {"dataset": "cora", "model": "gcn", "epochs": 3, "seeds": 1, "hidden": 16}
_REC = {"dataset": "synthetic-rec", "model": "lightgcn", "epochs": 2, "seeds": 1}
_CASES = [("qat", 8, _NODE), ("lsq", 4, _NODE), ("dq", 4, _NODE), ("a2q", 4, _NODE), ("dq", 4, _GRAPH),
          ("a2q", 4, _GRAPH), ("lsq", 4, _FULL), ("lsq", 4, _REC)]


_RESUMED = {**_NODE, "method": "dq", "bits": 4, "epochs": 4}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Two launches of two ranks: the first trains every case of _CASES one after the other, then _RESUMED
    whole (``whole``) and stopped by rank 1 after epoch 1 (``cut``); the second resumes ``cut``."""
    out = tmp_path_factory.mktemp("ddp")
    configs = [{**base, "method": method, "bits": bits} for method, bits, base in _CASES]
    configs += [{**_RESUMED, "_out": "whole"}, {**_RESUMED, "_out": "cut", "_stop_at": 1}]
    (out / "cfg.json").write_text(json.dumps(configs))
    proc = _torchrun(["-m", "qgnn.testing.ddp_worker", "cfg.json", "runs"], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cut = out / "runs" / "cut"
    stopped = (cut / "interrupted0").exists(), (cut / "interrupted1").exists(), (cut / "rank0.safetensors").exists()
    (out / "resume.json").write_text(json.dumps([{**_RESUMED, "_out": "cut"}]))
    proc = _torchrun(["-m", "qgnn.testing.ddp_worker", "resume.json", "runs", "--resume"], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "runs", stopped


@pytest.mark.parametrize("i", range(len(_CASES)), ids=[f"{m}{b}-{c['model']}" for m, b, c in _CASES])
def test_ranks_hold_identical_parameters_and_quantizer_state(ddp_runs, i):
    run = ddp_runs[0] / str(i)
    a, b = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
    assert any("observer" in k or "step" in k or "b_delta" in k for k in a)  # quantizer state is compared too
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in a.values())
    assert _same(a, b) == []
    results = json.loads((run / "results.json").read_text())
    assert results["env"]["world_size"] == 2


def test_interrupted_two_rank_run_resumes_to_the_uninterrupted_result(ddp_runs):
    runs, (stop0, stop1, finished) = ddp_runs
    assert stop0 and stop1 and not finished  # a stop asked on rank 1 stopped both ranks at the same epoch
    for r in (0, 1):
        whole = load_file(str(runs / "whole" / f"rank{r}.safetensors"))
        assert _same(whole, load_file(str(runs / "cut" / f"rank{r}.safetensors"))) == []


def test_cli_under_torchrun_writes_once_from_rank_0(tmp_path):
    proc = _torchrun(["-m", "qgnn", "train", "--dataset", "synthetic-node", "--model", "gcn", "--method", "qat",
                      "--bits", "8", "--epochs", "2", "--seeds", "1", "--quiet", "--out", "r.json", "--save",
                      "m.safetensors"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results: r.json") == 1  # one table, rank 0's
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["env"]["world_size"] == 2
    assert (tmp_path / "m.safetensors").exists()
    assert not (tmp_path / "r.json.state.pt").exists()  # finished: the resume state is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "r.json"]


def test_missing_peer_is_one_clear_error_not_a_hang(tmp_path):
    env = _env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               QGNN_DIST_TIMEOUT="3")
    proc = subprocess.run([sys.executable, "-m", "qgnn", "train", "--dataset", "synthetic-node", "--epochs", "1",
                           "--out", "r.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("qgnn")]
    assert len(lines) == 1 and "could not join its peers" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_world_size_without_launcher_is_one_clear_error(tmp_path):
    env = _env(WORLD_SIZE="2", RANK="0")
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    proc = subprocess.run([sys.executable, "-m", "qgnn", "train", "--dataset", "synthetic-node", "--epochs", "1",
                           "--out", "r.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "launch with torchrun" in proc.stderr and "Traceback" not in proc.stderr


def test_only_train_runs_under_torchrun(tmp_path):
    env = _env(WORLD_SIZE="2", RANK="1")
    proc = subprocess.run([sys.executable, "-m", "qgnn", "search", "--dataset", "Cora", "--model", "gcn"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "only `qgnn train` runs under torchrun" in proc.stderr
    assert proc.stderr.startswith("qgnn[rank 1]: error:") and list(tmp_path.iterdir()) == []


def test_node_ids_reach_the_model_a_ddp_wrapper_holds():
    """Degree-Quant's mask hook reads the batch's global ids on the model itself: under DDP that is the wrapped
    model, not the wrapper (a one-rank gloo group is enough to build the wrapper)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from qgnn.nn.context import current_node_ids, node_ids

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 2))
        wrapped = DistributedDataParallel(model)
        ids = torch.tensor([5, 2, 9])
        with node_ids(wrapped, ids):
            assert current_node_ids(model) is ids and current_node_ids(wrapped) is ids
        assert current_node_ids(model) is None
    finally:
        dist.destroy_process_group()
