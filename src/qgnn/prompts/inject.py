"""Inject prompts into an existing model, peft-style: wrap a layer, keep it as ``base_layer``, start as an
exact no-op, disable or unload at will.

``inject_prompts(model, PromptConfig(kind="lorap"))`` replaces each target message-passing layer
``convs.i`` by a :class:`PromptedLayer` holding the original as ``convs.i.base_layer`` (its state-dict
keys gain ``base_layer.``; :func:`unload_prompts` puts the originals back, keys included) and

* a node prompt (``gpf``, ``gpf-plus``) on the input features of the first target (the model's input
  layer): ``base_layer(prompt(x), ...)``;
* an aggregation prompt (``lorap``) on every target, applied through PyG's aggregate-forward hook,
  which the float PyG layers fire inside ``propagate`` and qgnn's quantized layers fire at the same
  point (:meth:`qgnn.nn.QuantModule._post_aggregate`). The hook is registered on ``base_layer`` for the
  duration of each forward only, so replacing or quantizing ``base_layer`` later cannot leave a stale
  hook behind.

Where "after aggregation, before the update" is, per layer (s_i is what LoRAP sees; d its width):

==========  ===============================================================  ==========================
layer       s_i                                                              d
==========  ===============================================================  ==========================
GCNConv     Σ_j ŵ_ij (x̂W)_j after the ``aggr`` quantizer, before the bias     out_channels
GINConv     Σ_j x̂_j, before (1 + eps) x̂_i is added, ``aggr`` and the MLP      in_channels (MLP input)
SAGEConv    AGG_j x̂_j after ``aggr``, before lin_l (and the root term)         in_channels
GATConv     Σ_j α_ij (x̂W)_j per head, after ``aggr``, heads concatenated       heads · out_channels
==========  ===============================================================  ==========================

Prompts stay float and sit outside every quantizer slot (LoRAP's output is not re-quantized, except by
GIN's ``aggr`` slot when it is on, which quantizes the sum after the self term). Degree-Quant's
protective mask does not touch them (all nodes get their prompt). With integer aggregation on
(eval mode) the prompt is added, in float, to the rescaled integer aggregate.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch_geometric.nn import GINConv, MessagePassing

from qgnn.config import ConfigBase
from qgnn.errors import ConfigError, lookup

from .modules import GPF, GPFPlus, LoRAP, PromptModule

__all__ = [
    "KIND_OPTIONS",
    "PROMPT_KINDS",
    "PromptConfig",
    "PromptedLayer",
    "aggregation_dim",
    "disable_prompts",
    "enable_prompts",
    "freeze_backbone",
    "inject_prompts",
    "load_prompt_state_dict",
    "prompt_parameters",
    "prompt_report",
    "prompt_state_dict",
    "prompted_layers",
    "unload_prompts",
]

# kind -> (node prompt, aggregation prompt)
_KINDS = {"none": (None, False), "gpf": ("gpf", False), "gpf-plus": ("gpf-plus", False),
          "lorap": (None, True), "gpf-lorap": ("gpf-plus", True)}
PROMPT_KINDS = tuple(_KINDS)


def check_number(what: str, value, positive: bool = False) -> float:
    """``value`` as a float if it is a number >= 0 (> 0 with ``positive``), else a ConfigError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{what} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


# Reference data (public; PromptConfig's docstring points here, no code reads it): the fields each kind uses
# (the others keep their defaults and are ignored by that kind).
KIND_OPTIONS = {
    "none": (),
    "gpf": ("targets", "node_after_quant"),
    "gpf-plus": ("k", "targets", "node_after_quant"),
    "lorap": ("k", "rank", "targets", "backend", "align", "normalize"),
    "gpf-lorap": ("k", "rank", "targets", "backend", "align", "normalize", "node_after_quant"),
}


@dataclass
class PromptConfig(ConfigBase):
    """Which prompts go where: one config discriminated by ``kind`` (a typed config, :mod:`qgnn.config`:
    checked when built, versioned ``to_dict`` / ``from_dict``). The fields each kind uses are
    :data:`KIND_OPTIONS`; ``to_dict`` records every field so that results files read back unchanged.

    kind: ``none`` | ``gpf`` | ``gpf-plus`` | ``lorap`` | ``gpf-lorap`` (GPF-plus on the input + LoRAP).
    k: basis prompts (GPF-plus and LoRAP); rank: LoRAP's r. Defaults k = 40, r = 2 (the paper's
    suggested range per its summary: k ≈ 40, r ≈ 2).
    targets: module names or regular expressions (full match) of the layers to wrap; None = every
    message-passing layer (PyG ``MessagePassing``, quantized ones included). The node prompt goes on the
    first target in module order.
    backend: LoRAP kernel choice (``auto`` | ``triton`` | ``reference``, see :func:`qgnn.kernels.lorap_backend`).
    align: weight λ of the aggregation-alignment loss (0 = off, the default; see :class:`PromptedLayer`).
    normalize: LoRAP's mixing weights from the aggregate's direction, softmax(W_a s_i / rms(s_i)) (default
    off: softmax(W_a s_i), our reading of the paper).
    node_after_quant: the node prompt (GPF / GPF-plus) acts on the first layer's quantized input, after its
    ``input`` quantizer, instead of on the raw features before it (default off: GPF's place; ``qgnn train``
    takes it from the prompt recipe of the host, :mod:`qgnn.recipes`: on, except on plain-QAT hosts other
    than GCN). Our option: a dense prompt in front of a min / max quantizer widens its range (a coarser grid
    for every feature) and is itself mostly rounded away; after it, the prompt stays a full-precision
    correction, as LoRAP's does.
    """

    config_name: ClassVar[str] = "prompt"

    kind: str = "lorap"
    k: int = 40
    rank: int = 2
    targets: list[str] | None = None
    backend: str = "auto"
    align: float = 0.0
    normalize: bool = False
    node_after_quant: bool = False

    def validate(self) -> None:
        from qgnn.kernels.lorap import LORAP_BACKENDS

        self.kind = lookup("prompt", self.kind, {k: k for k in _KINDS})
        self.require("k", self.k >= 1, "an integer >= 1 (basis prompts)")
        self.require("rank", self.rank >= 1, "an integer >= 1")
        self.require("align", math.isfinite(self.align) and self.align >= 0,
                     "a number >= 0 (weight of the aggregation-alignment loss)")
        self.require("backend", self.backend in LORAP_BACKENDS, f"one of {', '.join(LORAP_BACKENDS)}")

    @property
    def node(self) -> str | None:
        return _KINDS[self.kind][0]

    @property
    def aggregation(self) -> bool:
        return _KINDS[self.kind][1]


class PromptedLayer(nn.Module):
    """A message-passing layer with prompts: ``base_layer`` (the original, unchanged), ``node_prompt``
    (applied to the input features) and ``aggr_prompt`` (applied to the aggregate), either may be None.
    ``prompts_enabled = False`` makes the forward exactly ``base_layer``'s.

    Aggregation alignment (``align`` = λ > 0, training only): LoRAP is meant to correct the error that
    quantization leaves in the aggregate, f(X, A) − f(Q(X), A) (Liu et al. 2026 motivate it with
    argmin ‖f(X, A) − f(Q(X), A)‖_F). Trained on the task loss alone, the prompt gets no direct signal of that
    error (and, on 140 labelled Cora nodes, just more capacity). With ``align`` each training forward also
    runs this layer with its quantizers off, on the same input, to get the float aggregate s* (a detached
    target), and :meth:`penalty` adds

        λ · ‖s_q + P(s_q) − s*‖²_F / ‖s*‖²_F,   s_q the quantized aggregate, detached,

    over every node of the batch (labelled or not). s_q is detached so that only the prompt learns from
    this term: the host trains on the task loss as without it. Cost: one more float forward of the layer per
    step. Our addition, not the paper's training objective as far as we could check (docs/prompts.md).
    """

    def __init__(self, base_layer: nn.Module, node_prompt: PromptModule | None = None,
                 aggr_prompt: PromptModule | None = None, align: float = 0.0, node_after_quant: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.node_prompt = node_prompt
        self.aggr_prompt = aggr_prompt
        self.prompts_enabled = True
        self.align = float(align)
        self.node_after_quant = node_after_quant
        self._align_loss: Tensor | None = None

    def _node_prompt_after_quant(self) -> bool:
        """Whether the node prompt goes on the quantized input: asked for, and the layer quantizes its input
        (without an ``input`` quantizer both places are the same)."""
        quant = getattr(self.base_layer, "quant", None)
        return (self.node_after_quant and hasattr(self.base_layer, "register_slot_hook")
                and quant is not None and "input" in quant)

    def _aggr_hook(self, module, inputs, out: Tensor) -> Tensor:
        return self.aggr_prompt(out)

    def _run_hooked(self, hook, x, *args, **kwargs):
        base = self.base_layer
        handles = [base.register_aggregate_forward_hook(hook),
                   base.register_message_and_aggregate_forward_hook(hook)]  # PyG's fused path
        try:
            return base(x, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()

    def _float_aggregate(self, x, *args, **kwargs) -> Tensor | None:
        """This layer's aggregate with its quantizers off (no gradient, no statistics updated)."""
        from qgnn.quant.quantizers import Quantizer

        quantizers = [m for m in self.base_layer.modules() if isinstance(m, Quantizer) and m.enabled]
        # BatchNorm (GIN's MLP) stays in training mode, as in the real pass, but must not fold this extra
        # pass into its running statistics
        norms = [m for m in self.base_layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.training and m.track_running_stats]
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
        seen: list[Tensor] = []

        def capture(module, inputs, out):
            seen.append(out.detach())
            return out

        # the same random draws as the real pass that follows (dropout, Degree-Quant's masks): the target
        # sees the same masks, and the real pass the same numbers as without alignment
        devices = [x.device] if isinstance(x, Tensor) and x.is_cuda else []
        try:
            for q in quantizers:
                q.enabled = False
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                self._run_hooked(capture, x, *args, **kwargs)
        finally:
            for q in quantizers:
                q.enabled = True
            for m, (mean, var, count) in zip(norms, saved, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        return seen[0] if seen else None

    def forward(self, x, *args, **kwargs):
        self._align_loss = None
        if not self.prompts_enabled:
            return self.base_layer(x, *args, **kwargs)
        if self.node_prompt is not None and self._node_prompt_after_quant():
            handle = self.base_layer.register_slot_hook("input", lambda layer, xq: self.node_prompt(xq))
            try:
                return self._forward_aggregate(x, *args, **kwargs)
            finally:
                handle.remove()
        if self.node_prompt is not None:
            x = self.node_prompt(x)
        return self._forward_aggregate(x, *args, **kwargs)

    def _forward_aggregate(self, x, *args, **kwargs):
        """The base layer with the aggregation prompt (and its alignment loss) where there is one."""
        if self.aggr_prompt is None:
            return self.base_layer(x, *args, **kwargs)
        if not (self.align > 0 and self.training and torch.is_grad_enabled()):
            return self._run_hooked(self._aggr_hook, x, *args, **kwargs)
        target = self._float_aggregate(x, *args, **kwargs)

        def prompt_and_align(module, inputs, out):
            if target is not None and target.shape == out.shape:
                corrected = self.aggr_prompt(out.detach())
                self._align_loss = self.align * (corrected - target).pow(2).sum() / target.pow(2).sum().clamp_min(
                    1e-12)
            return self.aggr_prompt(out)

        return self._run_hooked(prompt_and_align, x, *args, **kwargs)

    def penalty(self) -> Tensor | float:
        """The aggregation-alignment term of the last training forward (0.0 when off)."""
        return self._align_loss if self._align_loss is not None else 0.0

    def __getattr__(self, name):
        # Attributes of the wrapped layer (out_channels, heads, ...) stay reachable, as in peft.
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")  # absent while copy / pickle rebuild the object
            if name == "base_layer" or not modules or "base_layer" not in modules:
                raise
            return getattr(modules["base_layer"], name)


def aggregation_dim(layer: nn.Module) -> int:
    """Features per node of the aggregate LoRAP sees in ``layer`` (table in the module docstring): the layer
    kind's ``aggregation_dim`` fact (:mod:`qgnn.nn.registry`)."""
    from qgnn.nn.registry import LAYERS, facts_for

    facts = facts_for(layer)
    if facts is None or facts.aggregation_dim is None:
        kinds = [f.float_cls.__name__ for f in LAYERS.values() if f.aggregation_dim is not None]
        raise ConfigError(f"LoRAP does not know where {type(layer).__name__} aggregates; supported layers: "
                          f"{', '.join(kinds)} (and their qgnn.nn.Quant* versions)")
    return facts.aggregation_dim(layer)


def _gin_aggregation_dim(layer) -> int:
    first = next((m for m in layer.nn.modules() if isinstance(getattr(m, "in_features", None), int)), None)
    if first is None:
        raise ConfigError("GINConv: cannot find the input width of its nn (no module with in_features)")
    return first.in_features


def _in_channels(layer) -> int:
    ch = layer.in_channels
    return ch[0] if isinstance(ch, (tuple, list)) else ch


def _register_aggregation_dims() -> None:
    """The built-in kinds' LoRAP widths, registered as their facts (qgnn.nn.registry)."""
    import qgnn.nn  # noqa: F401  (registers the layer kinds)
    from qgnn.nn.registry import set_fact

    set_fact("gat", "aggregation_dim", lambda m: m.heads * m.out_channels)
    set_fact("gcn", "aggregation_dim", lambda m: m.out_channels)
    set_fact("sage", "aggregation_dim", _in_channels)
    set_fact("gin", "aggregation_dim", _gin_aggregation_dim)


_register_aggregation_dims()


def input_dim(layer: nn.Module) -> int:
    """Features per node entering ``layer`` (for node prompts)."""
    if isinstance(layer, GINConv):
        return aggregation_dim(layer)
    ch = getattr(layer, "in_channels", None)
    ch = ch[0] if isinstance(ch, (tuple, list)) else ch
    if not isinstance(ch, int) or ch < 1:
        raise ConfigError(f"cannot tell the input width of {type(layer).__name__} (in_channels={ch!r})")
    return ch


def prompted_layers(model: nn.Module) -> dict[str, PromptedLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PromptedLayer)}


def _targets(model: nn.Module, targets: list[str] | None) -> list[tuple[str, nn.Module]]:
    mods = [(n, m) for n, m in model.named_modules() if n and isinstance(m, MessagePassing)]
    if targets is None:
        return mods
    picked = [(n, m) for n, m in mods if any(t == n or re.fullmatch(t, n) for t in targets)]
    missing = [t for t in targets if not any(t == n or re.fullmatch(t, n) for n, _ in mods)]
    if missing:
        raise ConfigError(f"prompt targets match no message-passing layer: {', '.join(missing)}; layers: "
                          f"{', '.join(n for n, _ in mods) or 'none'}")
    return picked


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inject_prompts(model: nn.Module, config: PromptConfig | dict | str) -> nn.Module:
    """Wrap the target layers of ``model`` in place (see the module docstring); returns the model.

    Call it after ``quantize_`` (the prompts are then outside every quantizer). The new parameters are
    created on the device of each layer's first parameter.
    """
    if isinstance(config, str):
        config = PromptConfig(kind=config)
    elif isinstance(config, dict):
        config = PromptConfig.from_dict(config)
    if prompted_layers(model):
        raise ConfigError("the model already has prompts; unload_prompts(model) first")
    if config.kind == "none":
        return model
    targets = _targets(model, config.targets)
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no message-passing layer to prompt")
    for i, (name, layer) in enumerate(targets):
        node = None
        if i == 0 and config.node == "gpf":
            node = GPF(input_dim(layer))
        elif i == 0 and config.node == "gpf-plus":
            node = GPFPlus(input_dim(layer), config.k)
        aggr = (LoRAP(aggregation_dim(layer), config.k, config.rank, config.backend, config.normalize)
                if config.aggregation else None)
        wrapped = PromptedLayer(layer, node, aggr, align=config.align, node_after_quant=config.node_after_quant)
        p = next(layer.parameters(), None)
        if p is not None:
            wrapped.to(p.device)
        _replace(model, name, wrapped)
    model.qgnn_prompt_config = config  # recorded like qgnn_config
    return model


def unload_prompts(model: nn.Module) -> nn.Module:
    """Put every wrapped layer's ``base_layer`` back (original modules, original state-dict keys)."""
    for name, layer in sorted(prompted_layers(model).items(), key=lambda kv: -kv[0].count(".")):
        _replace(model, name, layer.base_layer)
    model.__dict__.pop("qgnn_prompt_config", None)
    return model


def _set_enabled(model: nn.Module, enabled: bool) -> None:
    for layer in prompted_layers(model).values():
        layer.prompts_enabled = enabled


def disable_prompts(model: nn.Module) -> contextlib.AbstractContextManager:
    """Turn prompts off (the model computes exactly its host's output). Also a context manager that turns
    them back on when it exits: ``with disable_prompts(model): ...``."""
    _set_enabled(model, False)

    @contextlib.contextmanager
    def _restore():
        try:
            yield model
        finally:
            _set_enabled(model, True)

    return _restore()


def enable_prompts(model: nn.Module) -> None:
    _set_enabled(model, True)


def _is_prompt_key(key: str) -> bool:
    return ".node_prompt." in f".{key}" or ".aggr_prompt." in f".{key}"


def prompt_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> parameter for the prompt parameters only."""
    return {n: p for n, p in model.named_parameters() if _is_prompt_key(n)}


def prompt_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The prompt tensors only, under their full names (what a prompt-only checkpoint stores)."""
    return {k: v for k, v in model.state_dict().items() if _is_prompt_key(k)}


def load_prompt_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a :func:`prompt_state_dict` into a model with the same prompts; exact key match required."""
    mine = set(prompt_state_dict(model))
    missing, unexpected = sorted(mine - set(state)), sorted(set(state) - mine)
    if missing or unexpected:
        raise ConfigError(f"prompt state does not fit the model: missing {missing or 'none'}, "
                          f"unexpected {unexpected or 'none'}")
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys


def _freeze_stats_hook(module, args):
    # Observers (quantizer ranges) and BatchNorm statistics are backbone state: keep them fixed while the
    # prompts train. module.train() runs every epoch, so they are put back in eval mode before each forward.
    from qgnn.quant.observers import Observer

    for m in module.modules():
        if isinstance(m, (Observer, nn.modules.batchnorm._BatchNorm)) and m.training:
            m.eval()


def freeze_backbone(model: nn.Module, freeze_stats: bool = True) -> list[str]:
    """``requires_grad = False`` on every parameter but the prompts'; with ``freeze_stats`` the quantizers'
    range observers and BatchNorm statistics stop updating too. Returns the trainable parameter names."""
    names = []
    for n, p in model.named_parameters():
        keep = _is_prompt_key(n)
        p.requires_grad_(keep)
        if keep:
            names.append(n)
    if freeze_stats and not getattr(model, "_qgnn_stats_frozen", False):
        model.register_forward_pre_hook(_freeze_stats_hook)
        model._qgnn_stats_frozen = True
    return names


def prompt_report(model: nn.Module) -> dict:
    """``{"kind", "k", "rank", "params", "bytes", "layers"}`` of the model's prompts (bytes: stored in the
    parameters' own dtype, float32 by default: prompts are not quantized)."""
    params = prompt_parameters(model)
    cfg = getattr(model, "qgnn_prompt_config", None)
    return {"kind": cfg.kind if cfg else "none", "k": cfg.k if cfg else None, "rank": cfg.rank if cfg else None,
            "params": sum(p.numel() for p in params.values()),
            "bytes": sum(p.numel() * p.element_size() for p in params.values()),
            "layers": sorted(prompted_layers(model))}
