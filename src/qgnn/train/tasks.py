"""The GNN tasks: one epoch of training and one evaluation pass, for node and graph classification.

Each implements the Task protocol of :mod:`qgnn.train.task` (``metric``, ``train_epoch``, ``evaluate``,
``generators``): a task owns its data and knows how to run a model over it; the one runner
(:class:`qgnn.train.runner.Runner`) owns the loop, the optimizer, selection, checkpoints and resume. Extra loss
terms that a method adds (a bit penalty, a memory penalty) come from :func:`penalty_modules`. Both select on
validation accuracy, ties to the lower validation loss (the protocol's default), and return the test accuracy
from the same evaluation pass (so they need no ``evaluate_test``).

Node tasks on sampled mini-batches: :mod:`qgnn.train.minibatch` (same interface; its shuffle and sampler draw
from a generator of its own, listed by ``generators()`` and saved with the resume state). Recommendation:
:class:`qgnn.train.rec.RecTrainTask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.loader import DataLoader


def penalty_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that add a term to the training loss through a ``penalty()`` method."""
    return [m for m in model.modules() if callable(getattr(m, "penalty", None))]


def penalty(mods: list[nn.Module]) -> torch.Tensor | float:
    return sum((m.penalty() for m in mods), 0.0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label (0.0 for no rows)."""
    if y.numel() == 0:
        return 0.0
    return (logits.argmax(-1) == y).float().mean().item()


def node_scores(out: torch.Tensor, d) -> dict[str, float]:
    """Accuracy on the train / val / test masks of ``d`` and the validation loss, from every node's logits.

    An OGB dataset (``d.ogb_name``, set by :func:`qgnn.data.ogbn.load_ogbn`) is scored by OGB's own
    ``Evaluator``, as its leaderboard is (accuracy for ogbn-arxiv and ogbn-products)."""
    name = getattr(d, "ogb_name", None)
    if isinstance(name, str):
        from qgnn.data.ogbn import evaluate

        def acc(logits, y):
            return evaluate(name, y, logits.argmax(-1)) if y.numel() else 0.0
    else:
        acc = accuracy
    return {
        "train_acc": acc(out[d.train_mask], d.y[d.train_mask]),
        "val_acc": acc(out[d.val_mask], d.y[d.val_mask]),
        "test_acc": acc(out[d.test_mask], d.y[d.test_mask]),
        "val_loss": F.cross_entropy(out[d.val_mask], d.y[d.val_mask]).item() if d.val_mask.any() else 0.0,
    }


class NodeTask:
    """Transductive node classification on one graph with train/val/test masks."""

    metric = "acc"

    def __init__(self, data, device: torch.device | str = "cpu", shard=None):
        self.data = data.to(device)
        # under torchrun (shard: qgnn.train.distributed.Shard) a fixed share of the training nodes, its loss
        # weighted so that the gradient DDP averages is the single-process one
        self.train_idx, self.loss_weight = None, 1.0
        if shard is not None:
            train = self.data.train_mask.nonzero().view(-1)
            self.train_idx = shard.split(train)
            self.loss_weight = shard.world / max(train.numel(), 1)

    def generators(self) -> dict[str, torch.Generator]:
        return {}  # full batch: nothing drawn of its own (dropout draws from torch's generator)

    def _loss(self, out: torch.Tensor) -> torch.Tensor:
        d = self.data
        if self.train_idx is None:
            return F.cross_entropy(out[d.train_mask], d.y[d.train_mask])
        idx = self.train_idx
        return F.cross_entropy(out[idx], d.y[idx], reduction="sum") * self.loss_weight

    @torch.no_grad()
    def warm_up(self, model: nn.Module) -> None:
        """One forward in eval mode (no statistic is updated), so that quantizers sized and initialised by their
        first batch (LSQ's, A2Q's) take their shapes before DDP wraps the model (:mod:`qgnn.train.task`)."""
        model.eval()
        model(self.data.x, self.data.edge_index)

    def train_epoch(self, model: nn.Module, opt: torch.optim.Optimizer, penalties: list[nn.Module]) -> float:
        model.train()
        opt.zero_grad(set_to_none=True)
        d = self.data
        out = model(d.x, d.edge_index)
        loss = self._loss(out) + penalty(penalties)
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        d = self.data
        return node_scores(model(d.x, d.edge_index), d)


class GraphTask:
    """Graph classification on one cross-validation split (train / val / test graph indices)."""

    metric = "acc"

    def __init__(self, dataset, split, batch_size: int = 32, device: torch.device | str = "cpu",
                 eval_batch_size: int = 256, shard=None):
        self.device = torch.device(device)
        self.shuffle = None  # under torchrun: the generator every rank shuffles with alike (seeded alike)
        if shard is None:
            self.train_loader = DataLoader(dataset[split.train], batch_size=batch_size, shuffle=True)
        else:  # this rank's share of each epoch's shuffled graphs (qgnn.train.distributed.ShardSampler)
            self.shuffle = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
            train = dataset[split.train]
            self.train_loader = DataLoader(train, batch_size=shard.batch_size(batch_size),
                                           sampler=shard.sampler(len(train), self.shuffle))
        self._first = dataset[split.train[:batch_size]]  # warm_up's batch
        # Evaluation batches are larger: no gradients, fewer Python iterations.
        self.val_loader = DataLoader(dataset[split.val], batch_size=eval_batch_size)
        self.test_loader = DataLoader(dataset[split.test], batch_size=eval_batch_size)

    def generators(self) -> dict[str, torch.Generator]:
        # one process: the training loader shuffles with torch's generator, saved with the rest of the RNG state
        return {"shard": self.shuffle} if self.shuffle is not None else {}

    @torch.no_grad()
    def warm_up(self, model: nn.Module) -> None:
        """One eval-mode forward on the first training graphs (as :meth:`NodeTask.warm_up`)."""
        from torch_geometric.data import Batch

        model.eval()
        self._forward(model, Batch.from_data_list(list(self._first)))

    def _forward(self, model, batch):
        batch = batch.to(self.device)
        return model(batch.x, batch.edge_index, batch.batch), batch.y

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (a regression task has its own: qgnn.train.regression)."""
        return F.cross_entropy(out, y)

    def train_epoch(self, model: nn.Module, opt: torch.optim.Optimizer, penalties: list[nn.Module]) -> float:
        model.train()
        total, count = 0.0, 0
        has_bn = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
        for batch in self.train_loader:
            if batch.num_graphs < 2 and has_bn:
                continue  # BatchNorm cannot normalise a batch of one graph's pooled row
            opt.zero_grad(set_to_none=True)
            out, y = self._forward(model, batch)
            loss = self.loss(out, y) + penalty(penalties)
            loss.backward()
            opt.step()
            total += loss.item() * batch.num_graphs
            count += batch.num_graphs
        return total / max(count, 1)

    @torch.no_grad()
    def _score(self, model, loader) -> tuple[float, float]:
        correct, loss, n = 0, 0.0, 0
        for batch in loader:
            out, y = self._forward(model, batch)
            correct += int((out.argmax(-1) == y).sum())
            loss += F.cross_entropy(out, y, reduction="sum").item()
            n += y.numel()
        return (correct / n, loss / n) if n else (0.0, 0.0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        val_acc, val_loss = self._score(model, self.val_loader)
        test_acc, _ = self._score(model, self.test_loader)
        return {"val_acc": val_acc, "test_acc": test_acc, "val_loss": val_loss}
