"""Recommendation experiments: LightGCN (FP32) and its quantized variants trained with BPR.

Protocol (He et al., LightGCN, SIGIR 2020, with model selection on validation only):

* an epoch draws as many (u, i) pairs as there are training interactions, in batches of ``batch_size``.
  ``sampling="user"`` (the default; LightGCN-PyTorch's ``UniformSample_original`` and NGCF's sampler): u
  uniform over the users with a training item, then i uniform over u's training items, so every user weighs
  the same in the loss, as in the user-averaged Recall / NDCG. ``sampling="interaction"``: every training
  interaction once, in a fresh random order (heavy users weigh more). Each pair gets ``num_negatives`` items
  drawn uniformly among the items u has *not* interacted with in training (vectorised rejection sampling);
* loss per batch: BPR = mean softplus(ŷ_uj − ŷ_ui) on the first negative, plus
  ``weight_decay`` · ½ (‖e⁰_u‖² + ‖e⁰_i‖² + ‖e⁰_j‖²) / B on the ego embeddings of the batch (LightGCN's L2),
  plus the method's own terms (GNAQ's LambdaLoss, BiGeaR's inference distillation); Adam, no Adam decay;
* the graph is the training interactions only; one full propagation per batch (``NormAdj``);
* after every epoch, full-ranking Recall@K / NDCG@K (K = 10, 20) on the validation split, training items
  excluded; the epoch with the best validation Recall@20 is selected (ties: higher NDCG@20), early stopping
  after ``patience`` epochs without improvement. Test metrics (training and validation items excluded) are
  computed only for epochs that improve validation, so the test split never influences anything.
* a refit: with ``val_frac`` = 0 (``--val-frac 0``; gowalla, lastfm, ml-100k) there is no validation split,
  the model trains on every training interaction for exactly ``epochs`` epochs (take them from a validated
  run) and the last epoch is reported; nothing is selected, and the results carry no ``val_`` metrics.
  ``test_curve`` (``--test-curve``, a refit only) also records every test metric every ``eval_every`` epochs in
  the history (``test_recall@20`` ...): a refit run alongside its validated run (same seed, constant lr) can
  then report the test figures at the epoch the validated run selects, before that run has finished. The
  curve is a record, never a selection: the model saved is still the last epoch's.

Results JSON: the layout of the node / graph runner (config, metrics as {"mean", "std", "runs"}, timing,
cost, runs, selected_run, env). The selected run's best state is the checkpoint (safetensors, atomic).
Ctrl-C (``Control.stop_requested``) saves a resume state at the end of the epoch, as the main runner does.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qgnn.errors import CheckpointError, ConfigError, lookup
from qgnn.train.checkpoint import load_checkpoint, load_state
from qgnn.train.config import SAMPLINGS, TrainConfig
from qgnn.train.rec_metrics import KS, UserItemIndex, rank_metrics
from qgnn.train.results import summarize_runs
from qgnn.train.seeding import load_rng_state, rng_state, set_seed
from qgnn.train.selection import BestTracker, validation_due

REC_METHODS = {"fp32": "fp32", "qat": "qat", "lsq": "lsq", "gnaq": "gnaq", "bigear": "bigear"}
REC_MODELS = {"lightgcn": "lightgcn"}
METRIC_KEYS = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]
CURVE_KEYS = ("recall@20", "ndcg@20")  # the validation scores kept per validated epoch (results' "history")
STATE_FORMAT = "qgnn-state/1"


# ---------------------------------------------------------------------------------------------- data / task
class RecTask:
    """Sampling, one training epoch and the evaluation of one RecDataset."""

    def __init__(self, ds, device="cpu", batch_size: int = 2048, eval_batch_users: int = 2048,
                 sampling: str = "user"):
        self.ds, self.device = ds, torch.device(device)
        self.batch_size, self.eval_batch_users = batch_size, eval_batch_users
        self.sampling = lookup("sampling", sampling, {s: s for s in SAMPLINGS})
        nu, ni = ds.num_users, ds.num_items
        self.train_pairs = ds.train.long()
        self.train_idx = UserItemIndex(ds.train, nu, ni)
        self.val_idx = UserItemIndex(ds.val, nu, ni)
        self.test_idx = UserItemIndex(ds.test, nu, ni)
        self.edge_index = ds.bipartite_edge_index("train")

    def sample(self, gen: torch.Generator, num_negatives: int = 1) -> tuple[torch.Tensor, ...]:
        """One epoch of (users, positives, negatives [E, n]), E = the training interactions (see the module
        doc for ``sampling``); negatives avoid train items."""
        e = self.train_pairs.size(1)
        if self.sampling == "user":
            users, pos = self._user_uniform_pairs(e, gen)
        else:
            perm = torch.randperm(e, generator=gen)
            users, pos = self.train_pairs[0, perm], self.train_pairs[1, perm]
        ni = self.ds.num_items
        neg = torch.randint(0, ni, (e, num_negatives), generator=gen)
        bad = self.train_idx.contains(users[:, None].expand_as(neg), neg)
        for _ in range(100):  # each round leaves a fraction (user degree / items) of the previous rejects
            if not bad.any():
                break
            neg[bad] = torch.randint(0, ni, (int(bad.sum()),), generator=gen)
            bad = self.train_idx.contains(users[:, None].expand_as(neg), neg)
        return users, pos, neg

    def _user_uniform_pairs(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs: u uniform over users with a training item, i uniform over u's training items."""
        idx = self.train_idx
        active = torch.nonzero(idx.counts > 0).flatten()
        if active.numel() == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        users = active[torch.randint(0, active.numel(), (n,), generator=gen)]
        cnt = idx.counts[users]
        # floor(U · n_u) is uniform on 0..n_u-1; the clamp guards against U·n_u rounding up to n_u
        offs = torch.minimum((torch.rand(n, generator=gen, dtype=torch.float64) * cnt).long(), cnt - 1)
        return users, idx.items[idx.ptr[users] + offs]

    def train_epoch(self, model, opt, gen: torch.Generator, weight_decay: float) -> float:
        model.train()
        users, pos, neg = self.sample(gen, getattr(model, "num_negatives", 1))
        nu = self.ds.num_users
        total, n = 0.0, 0
        dev = self.device
        for s in range(0, users.numel(), self.batch_size):
            u, p, j = users[s: s + self.batch_size].to(dev), pos[s: s + self.batch_size].to(dev), \
                neg[s: s + self.batch_size].to(dev)
            opt.zero_grad(set_to_none=True)
            b, extra = u.numel(), model.extra_nodes(u)
            nodes = [u, nu + p, nu + j.flatten()] + ([extra.flatten()] if extra is not None else [])
            uniq, inv = torch.unique(torch.cat(nodes), return_inverse=True)
            ego_rows, rows = model.train_forward(uniq)
            # one gather per part: slicing a single gathered tensor would give every slice a backward that
            # zero-fills the whole gathered tensor
            nj = 2 * b + j.numel()
            eu, ep, en = rows[inv[:b]], rows[inv[b: 2 * b]], rows[inv[2 * b: nj]].view(b, j.size(1), -1)
            ex = rows[inv[nj:]].view(extra.size(0), extra.size(1), -1) if extra is not None else None
            bpr = F.softplus((eu * en[:, 0]).sum(-1) - (eu * ep).sum(-1)).mean()
            e0 = ego_rows[inv[: 3 * b] if j.size(1) == 1 else torch.cat([inv[: 2 * b], inv[2 * b:: j.size(1)][:b]])]
            reg = 0.5 * e0.pow(2).sum() / b  # ‖e⁰_u‖² + ‖e⁰_i‖² + ‖e⁰_j‖² (first negative), one row gather
            loss = bpr + weight_decay * reg + model.extra_loss(eu, ep, en, ex)
            loss.backward()
            opt.step()
            if hasattr(model, "after_step"):
                model.after_step()
            total += float(loss.detach()) * u.numel()
            n += u.numel()
        return total / max(n, 1)

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        """Recall / NDCG @10, @20 on ``split`` (val: train items excluded; test: train and val excluded)."""
        model.eval()
        ue, ie = model()
        target = self.val_idx if split == "val" else self.test_idx
        exclude = [self.train_idx] if split == "val" else [self.train_idx, self.val_idx]
        score = model.score_fn(ue, ie) if hasattr(model, "score_fn") else None
        return rank_metrics(ue, ie, target, exclude, batch_users=self.eval_batch_users, score=score)


# ---------------------------------------------------------------------------------------------- models
def build_rec_model(cfg: TrainConfig, ds):
    """The model of ``cfg`` for ``ds``: FP32 LightGCN or a quantized variant (``cfg.method``)."""
    lookup("recommendation model", cfg.model, REC_MODELS)
    method = lookup("recommendation method", cfg.method, REC_METHODS)
    kw = dict(hidden=cfg.hidden, num_layers=cfg.num_layers)
    opts = dict(cfg.quant.get("options", {}))
    if method == "fp32":
        if opts:
            raise ConfigError(f"fp32 LightGCN takes no method options, got {', '.join(opts)}")
        from qgnn.models.lightgcn import LightGCN

        return LightGCN(ds.num_users, ds.num_items, **kw)
    if method in ("qat", "lsq"):
        from qgnn.methods.rec_baselines import QuantTableLightGCN

        return QuantTableLightGCN(ds.num_users, ds.num_items, bits=cfg.bits, kind=method, **kw, **opts)
    if method == "gnaq":
        from qgnn.methods.gnaq import GNAQLightGCN

        return GNAQLightGCN(ds.num_users, ds.num_items, bits=cfg.bits, **kw, **opts)
    from qgnn.methods.bigear import BiGeaRLightGCN

    if cfg.bits not in (None, 1):
        raise ConfigError(f"bigear is a 1-bit method, got --bits {cfg.bits}")
    return BiGeaRLightGCN(ds.num_users, ds.num_items, **kw, **opts)


def load_pretrained(path: str | Path, model, ds) -> dict:
    """Copy the ego table of an FP32 LightGCN checkpoint (``qgnn train --method fp32 --save``) into ``model``."""
    state, meta = load_checkpoint(path)
    cfg = meta.get("config", {})
    if cfg.get("method") != "fp32" or "embedding.weight" not in state:
        raise CheckpointError(f"{path} is not an FP32 LightGCN checkpoint (method {cfg.get('method')!r})")
    w = state["embedding.weight"]
    if tuple(w.shape) != (model.num_nodes, model.hidden):
        raise CheckpointError(f"{path} holds a {tuple(w.shape)} embedding table; this dataset and --hidden "
                              f"need {(model.num_nodes, model.hidden)} (was it trained on {ds.name}?)")
    if hasattr(model, "init_from_pretrained"):
        model.init_from_pretrained(w)
    else:
        with torch.no_grad():
            model.embedding.weight.copy_(w)
    return meta


def rec_cost(model) -> dict:
    """The ``cost`` entry: bytes of the stored embedding table (what LightGCN's inference needs)."""
    if hasattr(model, "storage"):
        st = model.storage()
    else:
        n = model.embedding.weight.numel()
        st = {"code_bytes": 4 * n, "level_bytes": 0, "bits": 32}
    fp32 = 4 * model.num_nodes * model.hidden
    total = st["code_bytes"] + st["level_bytes"]
    return {"model_bytes": total, "model_bytes_fp32": fp32, "compression": fp32 / total,
            "avg_bits": 8 * total / (model.num_nodes * model.hidden), **st,
            "per": f"embedding table ({model.num_nodes} nodes x {model.hidden}); codes bit-packed "
                   f"(qgnn.export.packing) plus per-node / per-tensor quantization parameters"}


# ---------------------------------------------------------------------------------------------- runner
def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused when torch supports it for these tensors: the same update as the loop implementation
    (tests compare them), one kernel instead of about ten passes over the whole embedding table per step."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


# Recommendation methods of one fixed width: an unset --bits means this width (TrainConfig.resolve would fill 8).
FIXED_BITS = {"bigear": 1}


def with_method_bits(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the width a fixed-width method implies (:data:`FIXED_BITS`: BiGeaR is 1-bit) when ``bits``
    is unset; ``cfg`` itself otherwise. The runner and :mod:`qgnn.grid` (which resolves a cell's config as the
    runner will) both call it."""
    bits = FIXED_BITS.get(cfg.method.lower())
    return dataclass_copy(cfg, bits=bits) if bits is not None and cfg.bits is None else cfg


class RecRunner:
    """Trains the runs (seeds) of one recommendation TrainConfig; see the module docstring."""

    def __init__(self, cfg: TrainConfig, root=None, state_path=None, progress=None, save_every: float = 60.0,
                 control=None):
        from qgnn.data import load_dataset
        from qgnn.train.runner import Control

        self.cfg = with_method_bits(cfg).resolve("rec")
        lookup("recommendation model", self.cfg.model, REC_MODELS)
        lookup("recommendation method", self.cfg.method, REC_METHODS)
        self.pretrained = self.cfg.quant.get("pretrained")
        if self.cfg.method in ("gnaq", "bigear") and not self.pretrained:
            raise ConfigError(f"--method {self.cfg.method} starts from an FP32 LightGCN: pass --pretrained CKPT "
                              f"(from `qgnn train --dataset {self.cfg.dataset} --model lightgcn --save CKPT`)")
        self.ds = load_dataset(self.cfg.dataset, root=root, **self._loader_opts())
        self.test_curve = bool(self.cfg.quant.get("test_curve", False))
        if self.test_curve and self.ds.val.size(1) > 0:
            raise ConfigError("test_curve (--test-curve) is for a refit without validation (--val-frac 0): with a "
                              "validation split the test split is evaluated only at the epochs validation selects")
        self.device = torch.device(self.cfg.device)
        self.task = RecTask(self.ds, self.device, self.cfg.batch_size, sampling=self.cfg.sampling)
        self.state_path = Path(state_path) if state_path else None
        self.progress, self.save_every = progress, save_every
        self.control = control or Control()

    def _loader_opts(self) -> dict:
        return {k: self.cfg.quant[k] for k in ("val_frac",) if k in self.cfg.quant}

    def build(self):
        model = build_rec_model(self.cfg, self.ds).to(self.device)
        model.set_graph(self.task.edge_index)
        if self.pretrained:
            load_pretrained(self.pretrained, model, self.ds)
        if hasattr(model, "prepare"):
            model.prepare(self.task)
        return model

    def _optim(self, model):
        return make_adam([p for p in model.parameters() if p.requires_grad], self.cfg.lr)

    def _load_state(self):
        if not (self.state_path and self.state_path.exists()):
            return None
        from qgnn.train.runner import _normalised

        state = load_state(self.state_path)
        # as Runner._load_state: the saved config compared in today's dict form (a state written before configs
        # carried a version is the same configuration), and only a training run's state continues one
        if state.get("kind", "train") != "train" or _normalised(state["config"]) != self.cfg.to_dict():
            raise CheckpointError(f"{self.state_path} was saved for a different configuration; "
                                  "rerun with the same options, or delete it / pass --overwrite to start over")
        return state

    def _save_state(self, runs, best, current):
        # a failed save warns once and training goes on (qgnn.train.outputs.save_state_or_warn)
        if self.state_path:
            from qgnn.train.outputs import save_state_or_warn

            save_state_or_warn(self, {"format": STATE_FORMAT, "config": self.cfg.to_dict(), "runs": runs,
                                      "best": best, "current": current})

    def run(self, resume: bool = False) -> dict:
        c = self.cfg
        state = self._load_state() if resume else None
        runs = list(state["runs"]) if state else []
        best = state["best"] if state else None
        current = state["current"] if state else None
        t0 = time.perf_counter()
        bar = tqdm(total=c.seeds * c.epochs, disable=None if self.progress is None else not self.progress,
                   desc=f"{c.dataset}/{c.model}/{c.method}", unit="ep", dynamic_ncols=True)
        bar.update(len(runs) * c.epochs)
        try:
            for r in range(len(runs), c.seeds):
                res, best_state = self._one_run(r, c.seed + r, current if current and current["index"] == r
                                                else None, runs, best, bar)
                current = None
                runs.append(res)
                key = (res.get("val_recall@20", 0.0), res.get("val_ndcg@20", 0.0))  # no val split: the first
                if best is None or key > (best["val"], best["val2"]):
                    best = {"index": r, "val": key[0], "val2": key[1], "state": best_state}
                self._save_state(runs, best, None)
        finally:
            bar.close()
        return self._results(runs, best, time.perf_counter() - t0)

    def _one_run(self, r, seed, current, runs, best, bar):
        c = self.cfg
        set_seed(seed)
        model = self.build()
        opt = self._optim(model)
        gen = torch.Generator().manual_seed(seed)
        tracker = BestTracker(c.patience)
        start, train_s, eval_s, test_s, train_cpu = 0, 0.0, 0.0, 0.0, 0.0
        history: list[dict] = []  # one entry per validation: the training curve
        has_val = self.task.val_idx.codes.numel() > 0  # val_frac = 0: train on all, no selection
        if current is not None:
            model.load_state_dict(current["model"])
            opt.load_state_dict(current["optimizer"])
            tracker.load_state_dict(current["tracker"])
            gen.set_state(current["gen"])
            load_rng_state(current["rng"], model)  # every stream, the model's generators included
            start, train_s, eval_s, test_s = current["epoch"], current["train_s"], current["eval_s"], current["test_s"]
            train_cpu, history = current["train_cpu"], list(current.get("history", []))
            bar.update(start)
        last_save, epochs_run = time.monotonic(), start
        for epoch in range(start, c.epochs):
            t, cpu = time.perf_counter(), time.process_time()
            loss = self.task.train_epoch(model, opt, gen, c.weight_decay)
            t1 = time.perf_counter()
            train_cpu += time.process_time() - cpu
            train_s += t1 - t
            epochs_run = epoch + 1
            if not has_val:
                last = epoch == c.epochs - 1
                test = self.task.evaluate(model, "test") if last or (
                    self.test_curve and validation_due(epoch, c)) else None
                test_s += time.perf_counter() - t1
                if test is not None and self.test_curve:  # a record only: nothing is selected from it
                    history.append({"epoch": epoch, "train_loss": loss, **{f"test_{k}": test[k] for k in test}})
                elif last:
                    history.append({"epoch": epoch, "train_loss": loss})
                if last:  # a refit (no validation split): the last epoch is the model
                    tracker.update(epoch, 0.0, 0.0, {**test, "train_loss": loss}, model)
            elif validation_due(epoch, c):
                val = self.task.evaluate(model, "val")
                t2 = time.perf_counter()
                eval_s += t2 - t1
                scores = {f"val_{k}": v for k, v in val.items()}
                if (val["recall@20"], val["ndcg@20"]) > (tracker.best_val, -tracker.best_val_loss):
                    test = self.task.evaluate(model, "test")  # only for the epoch that may be selected
                    test_s += time.perf_counter() - t2
                    scores.update(test)
                tracker.update(epoch, val["recall@20"], -val["ndcg@20"], {**scores, "train_loss": loss}, model)
                history.append({"epoch": epoch, "train_loss": loss, **{f"val_{k}": val[k] for k in CURVE_KEYS}})
            bar.update(1)
            bar.set_postfix(run=r + 1, loss=f"{loss:.4f}", best=f"{tracker.best_val:.4f}", refresh=False)
            for cb in self.control.on_epoch_end:
                cb(r, epoch)
            stop = self.control.stop_requested
            if self.state_path and (stop or time.monotonic() - last_save > self.save_every):
                self._save_state(runs, best, {
                    "index": r, "epoch": epochs_run, "train_s": train_s, "eval_s": eval_s, "test_s": test_s,
                    "train_cpu": train_cpu, "history": history, "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "tracker": tracker.state_dict(), "gen": gen.get_state(), "rng": rng_state(model)})
                last_save = time.monotonic()
            if stop:
                from qgnn.train.runner import Interrupted

                where = f"; resume with --resume (state in {self.state_path})" if self.state_path else ""
                raise Interrupted(f"stopped at run {r + 1}, epoch {epochs_run}{where}")
            if tracker.should_stop:
                bar.update(c.epochs - epochs_run)
                break
        res = {"seed": seed, "best_epoch": tracker.best_epoch, "epochs_run": epochs_run,
               "train_seconds_per_epoch": train_s / max(epochs_run, 1),
               "train_cpu_seconds_per_epoch": train_cpu / max(epochs_run, 1),
               "eval_seconds_per_epoch": eval_s / max(epochs_run, 1),
               "seconds_per_epoch": (train_s + eval_s) / max(epochs_run, 1),
               "train_seconds": train_s + eval_s + test_s, "test_seconds": test_s, **tracker.best_scores,
               "history": history}
        return res, tracker.best_state

    def _results(self, runs, best, total) -> dict:
        from qgnn.env import environment

        keys = METRIC_KEYS + [f"val_{k}" for k in METRIC_KEYS if f"val_{k}" in runs[0]] + ["best_epoch", "epochs_run"]
        model = self.build()
        model.load_state_dict(best["state"])
        mean = lambda k: sum(r[k] for r in runs) / len(runs)  # noqa: E731
        return {
            "config": self.cfg.to_dict(),
            "metrics": summarize_runs(runs, keys),
            "cost": rec_cost(model),
            "timing": {"seconds_per_epoch": mean("seconds_per_epoch"),
                       "train_seconds_per_epoch": mean("train_seconds_per_epoch"),
                       "train_cpu_seconds_per_epoch": mean("train_cpu_seconds_per_epoch"),
                       "eval_seconds_per_epoch": mean("eval_seconds_per_epoch"),
                       "batches_per_epoch": -(-self.task.train_pairs.size(1) // self.cfg.batch_size),
                       "total_seconds": total},
            "runs": runs,
            "selected_run": best["index"],
            "env": environment(),
            "_best_state": best["state"],
        }

    def checkpoint_meta(self, results: dict) -> dict:
        return {"config": results["config"], "num_users": self.ds.num_users, "num_items": self.ds.num_items,
                "selected_run": results["runs"][results["selected_run"]]}


def load_rec_model(path: str | Path, root=None):
    """Rebuild a recommendation checkpoint (``qgnn train --dataset gowalla --model lightgcn --save``), eval mode.

    The training graph is rebuilt from the dataset named in the config (needed for propagation)."""
    from qgnn.data import load_dataset

    state, meta = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: metadata does not describe a qgnn model ({e})") from None
    ds = load_dataset(cfg.dataset, root=root, **{k: cfg.quant[k] for k in ("val_frac",) if k in cfg.quant})
    c = dataclass_copy(cfg)
    c.quant = {k: v for k, v in c.quant.items() if k != "pretrained"}
    model = build_rec_model(c, ds)
    model.set_graph(ds.bipartite_edge_index("train"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit the model its metadata describes: {e}") from None
    return model.eval(), meta


def dataclass_copy(cfg: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``cfg`` (its ``quant`` and ``model_kwargs`` dicts copied too) with ``changes`` applied."""
    import dataclasses

    return dataclasses.replace(cfg, **{"quant": dict(cfg.quant), "model_kwargs": dict(cfg.model_kwargs), **changes})
