"""Recommendation experiments: LightGCN (FP32) and its quantized variants trained with BPR.

They train through the one runner (:class:`qgnn.train.runner.Runner`, as every task does: runs, resume,
checkpoints and results live there), with :class:`RecTrainTask` as its task (:mod:`qgnn.train.task`). This
module keeps what is particular to recommendation: the sampling and evaluation of a dataset
(:class:`RecTask`), the models (:func:`build_rec_model`, ``--pretrained`` through :func:`load_pretrained`), the
runner's hooks for them (:func:`resolve_config`, :func:`make_rec_task`, :func:`build_run_model`, :func:`make_adam`,
:func:`rec_cost`) and :func:`load_rec_model`. It does not import the runner: the dependency runs one way.

Protocol (He et al., LightGCN, SIGIR 2020, with model selection on validation only):

* an epoch draws as many (u, i) pairs as there are training interactions, in batches of ``batch_size``.
  ``sampling="user"`` (the default; LightGCN-PyTorch's ``UniformSample_original`` and NGCF's sampler): u
  uniform over the users with a training item, then i uniform over u's training items, so every user weighs
  the same in the loss, as in the user-averaged Recall / NDCG. ``sampling="interaction"``: every training
  interaction once, in a fresh random order (heavy users weigh more). Each pair gets ``num_negatives`` items
  drawn uniformly among the items u has *not* interacted with in training (vectorised rejection sampling).
  The draws come from the run's own generator, seeded with the run's seed and saved in the resume state;
* loss per batch: BPR = mean softplus(ŷ_uj − ŷ_ui) on the first negative, plus
  ``weight_decay`` · ½ (‖e⁰_u‖² + ‖e⁰_i‖² + ‖e⁰_j‖²) / B on the ego embeddings of the batch (LightGCN's L2),
  plus the method's own terms (GNAQ's LambdaLoss, BiGeaR's inference distillation); Adam (:func:`make_adam`),
  no Adam decay, no learning-rate schedule;
* the graph is the training interactions only; one full propagation per batch (``NormAdj``);
* every ``eval_every`` epochs and after the last, full-ranking Recall@K / NDCG@K (K = 10, 20) on the validation
  split, training items excluded; the epoch with the best validation Recall@20 is selected (ties: higher
  NDCG@20), early stopping after ``patience`` validations without improvement. Test metrics (training and
  validation items excluded) are computed only for epochs that improve validation, so the test split never
  influences anything.
* a refit: with ``val_frac`` = 0 (``--val-frac 0``; gowalla, lastfm, ml-100k) there is no validation split,
  the model trains on every training interaction for exactly ``epochs`` epochs (take them from a validated
  run) and the last epoch is reported; nothing is selected, and the results carry no ``val_`` metrics.
  ``test_curve`` (``--test-curve``, a refit only) also records every test metric every ``eval_every`` epochs in
  the history (``test_recall@20`` ...): a refit run alongside its validated run (same seed, constant lr) can
  then report the test figures at the epoch the validated run selects, before that run has finished. The
  curve is a record, never a selection: the model saved is still the last epoch's.

Results JSON: the runner's layout (config, metrics as {"mean", "std", "runs"}, timing, cost, runs,
selected_run, env), with the metrics Recall / NDCG @10, @20 (and their ``val_`` twins), timing split into
training (wall and CPU), validation and test passes plus ``batches_per_epoch``, ``cost`` from :func:`rec_cost`
(the stored embedding table), and per run a ``history`` (one entry per evaluation). The checkpoint's metadata
names ``num_users`` / ``num_items``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qgnn.errors import CheckpointError, ConfigError, lookup
from qgnn.train.checkpoint import load_checkpoint
from qgnn.train.config import SAMPLINGS, TrainConfig
from qgnn.train.rec_metrics import KS, UserItemIndex, rank_metrics
from qgnn.train.tasks import penalty

REC_METHODS = {"fp32": "fp32", "qat": "qat", "lsq": "lsq", "gnaq": "gnaq", "bigear": "bigear"}
REC_MODELS = {"lightgcn": "lightgcn"}
METRIC_KEYS = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]
CURVE_KEYS = ("recall@20", "ndcg@20")  # the validation scores kept per validated epoch (results' "history")


# ---------------------------------------------------------------------------------------------- data / task
class RecTask:
    """Sampling, one training epoch and the evaluation of one RecDataset (shared by the runs of an experiment;
    each run trains through a :class:`RecTrainTask` that brings its own generator)."""

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

    def train_epoch(self, model, opt, gen: torch.Generator, weight_decay: float, penalties=(), shard=None) -> float:
        """One epoch of BPR batches drawn from ``gen`` (module docstring); ``penalties``: modules whose
        ``penalty()`` joins every batch's loss (:func:`~qgnn.train.tasks.penalty_modules`). The mean loss.
        ``shard`` (under torchrun, :class:`qgnn.train.distributed.Shard`): every rank draws the same epoch from
        ``gen`` and trains on its share of the triples, in batches of its share of ``batch_size``."""
        model.train()
        users, pos, neg = self.sample(gen, getattr(model, "num_negatives", 1))
        bs = self.batch_size
        if shard is not None:
            users, pos, neg = shard.rows(users, pos, neg)
            bs = shard.batch_size(bs)
        nu = self.ds.num_users
        total, n = 0.0, 0
        dev = self.device
        for s in range(0, users.numel(), bs):
            u, p, j = users[s: s + bs].to(dev), pos[s: s + bs].to(dev), neg[s: s + bs].to(dev)
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
            if penalties:
                loss = loss + penalty(penalties)
            loss.backward()
            opt.step()
            if hasattr(model, "after_step"):
                model.after_step()
            total += float(loss.detach()) * u.numel()
            n += u.numel()
        return total / max(n, 1)

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.train_pairs.size(1) // self.batch_size)

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
    """The ``cost`` entry: bytes of the stored embedding table (what LightGCN's inference needs).

    ``model_bytes`` = ``code_bytes`` + ``level_bytes`` from the model's ``storage()``: for an [N, d] table at b
    bits, ceil(N d b / 8) bytes of packed codes plus GNAQ's N · 2^b levels at 1 byte each (FP8) or 4
    (float32), or 8 bytes (QAT / LSQ: one scale and zero-point); FP32 LightGCN: 4 N d. ``compression`` =
    4 N d / model_bytes, so 2-bit GNAQ at d = 64 is 256 / (16 + 4) = 12.8x with FP8 levels and 256 / (16 + 16)
    = 8x with float32 levels; ``avg_bits`` = 8 · model_bytes / (N d) (2.5 and 4 bits there)."""
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


# ---------------------------------------------------------------------------------------------- the runner's hooks
def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused when torch supports it for these tensors: the same update as the loop implementation
    (tests compare them), one kernel instead of about ten passes over the whole embedding table per step.
    No Adam weight decay: LightGCN's L2 is on the batch's ego embeddings, in the loss (module docstring)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


# Recommendation methods of one fixed width: an unset --bits means this width (TrainConfig.resolve would fill 8).
FIXED_BITS = {"bigear": 1}


def with_method_bits(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the width a fixed-width method implies (:data:`FIXED_BITS`: BiGeaR is 1-bit) when ``bits``
    is unset; ``cfg`` itself otherwise. :func:`resolve_config` and :mod:`qgnn.grid` (which resolves a cell's
    config as the runner will) both call it."""
    bits = FIXED_BITS.get(cfg.method.lower())
    return dataclass_copy(cfg, bits=bits) if bits is not None and cfg.bits is None else cfg


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` resolved for a recommendation dataset, checked before any data is loaded: a known model and
    method, no prompt (prompts attach to GNN layers), ``--pretrained`` for the methods that start from an FP32
    LightGCN."""
    c = with_method_bits(cfg).resolve("rec")
    lookup("recommendation model", c.model, REC_MODELS)
    lookup("recommendation method", c.method, REC_METHODS)
    if c.prompt:
        raise ConfigError(f"prompts attach to the layers of a GNN; a recommendation model ({c.model}) takes none")
    if c.method in ("gnaq", "bigear") and not c.quant.get("pretrained"):
        raise ConfigError(f"--method {c.method} starts from an FP32 LightGCN: pass --pretrained CKPT "
                          f"(from `qgnn train --dataset {c.dataset} --model lightgcn --save CKPT`)")
    return c


def dataset_options(cfg: TrainConfig) -> dict:
    """The loader options a recommendation config carries (``val_frac``, in ``quant``)."""
    return {k: cfg.quant[k] for k in ("val_frac",) if k in cfg.quant}


def make_rec_task(cfg: TrainConfig, ds, device) -> RecTask:
    """The sampling / evaluation task of ``ds`` that every run of ``cfg`` shares (its indices are built once)."""
    if cfg.quant.get("test_curve") and ds.val.size(1) > 0:
        raise ConfigError("test_curve (--test-curve) is for a refit without validation (--val-frac 0): with a "
                          "validation split the test split is evaluated only at the epochs validation selects")
    return RecTask(ds, device, cfg.batch_size, sampling=cfg.sampling)


def build_run_model(cfg: TrainConfig, ds, task: RecTask, device) -> nn.Module:
    """A run's model: :func:`build_rec_model` on ``device``, propagating over the training graph, its ego table
    from ``--pretrained`` where given, prepared for ``task`` (BiGeaR: the teacher's top-R lists, from the
    pretrained table, before a resumed state replaces the weights)."""
    model = build_rec_model(cfg, ds).to(device)
    model.set_graph(task.edge_index)
    if cfg.quant.get("pretrained"):
        load_pretrained(cfg.quant["pretrained"], model, ds)
    if hasattr(model, "prepare"):
        model.prepare(task)
    return model


class RecTrainTask:
    """One recommendation run as the runner's task (:mod:`qgnn.train.task`): BPR epochs of ``data``
    (:class:`RecTask`) drawn from a generator of its own, seeded with the run's seed; selection on the
    validation Recall@20, ties to the higher NDCG@20; the test pass only for epochs that improve validation
    (``evaluate_test``); a refit (no validation split, ``has_validation`` False) reports its last epoch and,
    with ``test_curve``, records the test scores every ``eval_every`` epochs; one ``history`` entry per
    evaluation. Scores carry the epoch's ``train_loss``.
    """

    metric = "recall@20"
    timing = "split"
    summary_keys = (*METRIC_KEYS, *(f"val_{k}" for k in METRIC_KEYS), "best_epoch", "epochs_run")

    # under torchrun its step calls LightGCN's train_forward, not forward: gradients are averaged before each
    # optimizer step instead of by a DDP wrapper (qgnn.train.distributed.Dist.average_gradients)
    trains_through_forward = False

    def __init__(self, data: RecTask, seed: int, weight_decay: float, test_curve: bool = False, shard=None):
        self.data, self.weight_decay, self.test_curve = data, weight_decay, test_curve
        self.shard = shard  # this rank's share of each epoch's triples (qgnn.train.distributed)
        self.gen = torch.Generator().manual_seed(seed)
        self.has_validation = data.val_idx.codes.numel() > 0
        self.train_loss = math.nan  # of the last epoch trained

    @staticmethod
    def selection(scores: dict) -> tuple[float, float]:
        """(Recall@20, -NDCG@20) of validation; (0, 0) for a refit's scores, which have neither."""
        return scores.get("val_recall@20", 0.0), (-scores["val_ndcg@20"] if "val_ndcg@20" in scores else 0.0)

    def train_epoch(self, model, opt, penalties) -> float:
        self.train_loss = self.data.train_epoch(model, opt, self.gen, self.weight_decay, penalties, self.shard)
        return self.train_loss

    def evaluate(self, model) -> dict[str, float]:
        """Validation Recall / NDCG (``val_`` keys), or for a refit the test scores; and the ``train_loss``."""
        if self.has_validation:
            scores = {f"val_{k}": v for k, v in self.data.evaluate(model, "val").items()}
        else:
            scores = dict(self.data.evaluate(model, "test"))
        return {**scores, "train_loss": self.train_loss}

    def evaluate_test(self, model) -> dict[str, float]:
        return self.data.evaluate(model, "test")

    def curve_entry(self, epoch: int, scores: dict) -> dict:
        """A validated epoch: its loss and validation Recall / NDCG@20; a refit's evaluation: its loss, and with
        ``test_curve`` every test score (``test_`` keys)."""
        entry = {"epoch": epoch, "train_loss": scores["train_loss"]}
        if self.has_validation:
            return {**entry, **{f"val_{k}": scores[f"val_{k}"] for k in CURVE_KEYS}}
        if self.test_curve:
            return {**entry, **{f"test_{k}": v for k, v in scores.items() if k != "train_loss"}}
        return entry

    def generators(self) -> dict[str, torch.Generator]:
        return {}  # its one stream is saved by state_dict, under "gen" as before the one runner

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def load_rec_model(path: str | Path, root=None):
    """Rebuild a recommendation checkpoint (``qgnn train --dataset gowalla --model lightgcn --save``), eval mode.

    The training graph is rebuilt from the dataset named in the config (needed for propagation)."""
    from qgnn.data import load_dataset

    state, meta = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: metadata does not describe a qgnn model ({e})") from None
    ds = load_dataset(cfg.dataset, root=root, **dataset_options(cfg))
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
