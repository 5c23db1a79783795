"""`--resume` reproduces the uninterrupted run bit for bit, for every method, prompts and every task of the one
runner (node, graph, recommendation).

Each test trains a tiny model twice: once straight through, once stopped at an epoch boundary (as Ctrl-C
stops it) and resumed from the saved state. The model after every training epoch after the stop (its
parameters and every quantizer / observer buffer), the selected epoch and its scores must be identical.
Degree-Quant runs with a small ``sample_size`` so its percentile observers really sample (a 100-node graph
is otherwise used whole): that sampling draws from the observer's own generator, which the resume state
did not hold (issue 23: resumed Cora runs selected epochs 183 and 187 instead of 159).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from qgnn.train import Control, Interrupted, TrainConfig
from qgnn.train.runner import Runner
from qgnn.train.seeding import load_rng_state, rng_state


def _record(task, trace: list):
    """Wrap ``task.train_epoch`` so that the model's full state after every training epoch goes to ``trace``."""
    train_epoch = task.train_epoch

    def recorded(model, *args, **kwargs):
        loss = train_epoch(model, *args, **kwargs)
        trace.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return loss

    task.train_epoch = recorded
    return task


class RecordingRunner(Runner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trace: list[dict] = []

    def task_for(self, fold):
        return _record(super().task_for(fold), self.trace)


def _assert_same_states(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    diff = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not diff, f"{where}: differ in {diff[:6]}"


def _stopped_then_resumed(runner_cls, cfg, tmp_path, run: int, epoch: int):
    """Train ``cfg`` until the end of epoch ``epoch`` of run ``run``, stop there, then resume to the end."""
    control = Control()
    control.on_epoch_end.append(lambda r, e: setattr(control, "stop_requested", (r, e) == (run, epoch)))
    state = tmp_path / "r.state.pt"
    first = runner_cls(cfg, progress=False, state_path=state, control=control)
    with pytest.raises(Interrupted):
        first.run()
    second = runner_cls(cfg, progress=False, state_path=state)
    return first, second, second.run(resume=True)


def _check(full_runner, full, second, resumed, skipped: int) -> None:
    """``skipped``: training epochs of the trace the resumed runner did not run again."""
    assert len(full_runner.trace) == skipped + len(second.trace)
    for i, (a, b) in enumerate(zip(full_runner.trace[skipped:], second.trace, strict=True)):
        _assert_same_states(a, b, f"model after training epoch {skipped + i}")
    for a, b in zip(full["runs"], resumed["runs"], strict=True):
        for k in ("best_epoch", "epochs_run", "val_acc", "test_acc", "val_loss"):
            assert a[k] == b[k], k
    assert full["selected_run"] == resumed["selected_run"]
    _assert_same_states(full["_best_state"], resumed["_best_state"], "selected model")


NODE_CASES = {
    "qat4": dict(method="qat", bits=4),
    "lsq4": dict(method="lsq", bits=4),
    "dq4": dict(method="dq", bits=4),
    "dq4-sampled": dict(method="dq", bits=4, quant={"options": {"sample_size": 64}}),
    "dq4-per-layer-mask": dict(method="dq", bits=4, quant={"options": {"sample_size": 64, "per_layer_mask": True}}),
    "a2q4": dict(method="a2q", bits=4),
    "mixq": dict(method="mixq", bits=8),
    "dq4-gpf-lorap": dict(method="dq", bits=4, quant={"options": {"sample_size": 64}},
                          prompt={"kind": "gpf-lorap"}),
    "fp32-dropout": dict(method="fp32", dropout=0.5),
}


@pytest.mark.parametrize("case", list(NODE_CASES))
def test_node_resume_is_bit_exact(tmp_path, case):
    cfg = TrainConfig(dataset="synthetic-node", model="gcn", seeds=2, epochs=5, patience=100, **NODE_CASES[case])
    full_runner = RecordingRunner(cfg, progress=False)
    full = full_runner.run()
    # stop after epoch 2 of the second run: the first run is finished, the second resumes mid-way
    _, second, resumed = _stopped_then_resumed(RecordingRunner, cfg, tmp_path, run=1, epoch=2)
    _check(full_runner, full, second, resumed, skipped=5 + 3)


@pytest.mark.parametrize("method", ["dq", "qat"])
def test_graph_resume_is_bit_exact(tmp_path, method):
    options = {"quant": {"options": {"sample_size": 64}}} if method == "dq" else {}
    cfg = TrainConfig(dataset="synthetic-graph", model="gin", method=method, bits=4, folds=1, epochs=4,
                      batch_size=16, patience=100, **options)
    full_runner = RecordingRunner(cfg, progress=False)
    full = full_runner.run()
    _, second, resumed = _stopped_then_resumed(RecordingRunner, cfg, tmp_path, run=0, epoch=1)
    _check(full_runner, full, second, resumed, skipped=len(full_runner.trace) // 4 * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rng_state_covers_the_cuda_generator():
    """Dropout on the GPU draws from the CUDA generator, which torch.get_rng_state does not cover. (A whole
    CUDA run is not compared bit for bit: scatter-add with float atomics is not deterministic on the GPU.)"""
    torch.cuda.manual_seed_all(0)
    torch.rand(3, device="cuda")
    snap = rng_state()
    expected = torch.rand(5, device="cuda")
    torch.cuda.manual_seed_all(1)
    load_rng_state(snap)
    assert torch.equal(torch.rand(5, device="cuda"), expected)


REC_CASES = {
    "qat4": dict(method="qat", bits=4, seeds=2),
    "fp32-eval-every": dict(seeds=2, eval_every=2),
    "refit-test-curve": dict(seeds=1, eval_every=2, quant={"val_frac": 0.0, "test_curve": True}),
}


@pytest.mark.parametrize("case", list(REC_CASES))
def test_rec_resume_is_bit_exact(tmp_path, case):
    """The recommendation task through the one Runner (the same RecordingRunner as node and graph tasks):
    stopped mid-way through the second run (the first for a refit) and resumed, every later epoch's model, the
    selected epochs, scores and history equal the uninterrupted run's."""
    cfg = TrainConfig(dataset="synthetic-rec", model="lightgcn", epochs=4, batch_size=64, hidden=8, lr=0.01,
                      **REC_CASES[case])
    full_runner = RecordingRunner(cfg, progress=False)
    full = full_runner.run()
    run = 1 if cfg.seeds == 2 else 0
    _, second, resumed = _stopped_then_resumed(RecordingRunner, cfg, tmp_path, run=run, epoch=1)
    skipped = 4 * run + 2
    assert len(full_runner.trace) == skipped + len(second.trace)
    for a, b in zip(full_runner.trace[skipped:], second.trace, strict=True):
        _assert_same_states(a, b, "rec model after an epoch")
    for a, b in zip(full["runs"], resumed["runs"], strict=True):
        assert {k: v for k, v in a.items() if "seconds" not in k} == {k: v for k, v in b.items() if "seconds" not in k}
    assert full["selected_run"] == resumed["selected_run"]
    _assert_same_states(full["_best_state"], resumed["_best_state"], "selected rec model")


def _as_written_before_the_one_runner(state: dict) -> dict:
    """A recommendation resume state in the layout RecRunner wrote: ``best`` ranks by ``val`` / ``val2``
    (NDCG@20 itself), the current run has no ``scheduler``."""
    best = state["best"]
    if best is not None:
        best = {"index": best["index"], "val": best["val"], "val2": -best["val_loss"], "state": best["state"]}
    current = {k: v for k, v in state["current"].items() if k != "scheduler"}
    return {**state, "best": best, "current": current}


def test_a_rec_state_of_the_old_layout_resumes_to_the_same_result(tmp_path):
    from qgnn.train.checkpoint import load_state, save_state

    cfg = TrainConfig(dataset="synthetic-rec", model="lightgcn", method="qat", bits=4, epochs=4, batch_size=64,
                      hidden=8, lr=0.01, seeds=2)
    full = Runner(cfg, progress=False).run()
    control = Control()
    control.on_epoch_end.append(lambda r, e: setattr(control, "stop_requested", (r, e) == (1, 1)))
    state = tmp_path / "r.state.pt"
    with pytest.raises(Interrupted):
        Runner(cfg, progress=False, state_path=state, control=control).run()
    saved = load_state(state)
    assert {"gen", "history", "train_s", "eval_s", "test_s", "train_cpu"} <= set(saved["current"])
    assert "seconds" not in saved["current"] and "generators" not in saved["current"]["rng"]
    save_state(state, _as_written_before_the_one_runner(saved))
    resumed = Runner(cfg, progress=False, state_path=state).run(resume=True)
    assert [r["recall@20"] for r in resumed["runs"]] == [r["recall@20"] for r in full["runs"]]
    assert [r["history"] for r in resumed["runs"]] == [r["history"] for r in full["runs"]]
    assert resumed["selected_run"] == full["selected_run"]
    _assert_same_states(full["_best_state"], resumed["_best_state"], "selected rec model")


# -- the RNG snapshot itself ------------------------------------------------------------------------------
def _draws(model):
    gen = model.obs._generator
    return (random.random(), float(np.random.random()), float(torch.rand(())),
            float(torch.rand((), generator=gen)))


def test_rng_state_round_trip_covers_python_numpy_torch_and_module_generators():
    from qgnn.quant import PercentileObserver

    model = torch.nn.Module()
    model.obs = PercentileObserver(seed=3)
    for _ in range(3):  # move every stream away from its seed
        _draws(model)
    snap = rng_state(model)
    expected = [_draws(model) for _ in range(2)]
    fresh = torch.nn.Module()
    fresh.obs = PercentileObserver(seed=3)  # rebuilt from scratch, as a resumed run rebuilds its model
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    load_rng_state(snap, fresh)
    assert [_draws(fresh) for _ in range(2)] == expected


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    from qgnn.quant import PercentileObserver
    from qgnn.train.checkpoint import load_state, save_state

    model = torch.nn.Module()
    model.obs = PercentileObserver()
    save_state(tmp_path / "s.pt", {"format": "qgnn-state/1", "rng": rng_state(model)})
    expected = _draws(model)
    snap = load_state(tmp_path / "s.pt")["rng"]  # weights_only=True: plain containers and tensors only
    load_rng_state(snap, model)
    assert _draws(model) == expected


def test_legacy_state_with_only_the_torch_rng_still_loads():
    torch.manual_seed(5)
    legacy = torch.get_rng_state()
    a = torch.rand(3)
    torch.manual_seed(6)
    load_rng_state(legacy)
    assert torch.equal(torch.rand(3), a)
