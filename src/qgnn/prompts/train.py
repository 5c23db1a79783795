"""Prompts in the training runner: ``TrainConfig.prompt`` -> injected (and optionally frozen-backbone) model.

``TrainConfig.prompt`` is a dict: ``kind``, ``k``, ``rank``, ``targets``, ``backend`` (a
:class:`~qgnn.prompts.PromptConfig`), plus

* ``freeze_backbone`` (default false): train only the prompts; the host's parameters, quantizer ranges
  and BatchNorm statistics stay fixed (:func:`~qgnn.prompts.freeze_backbone`). Default: prompts train
  jointly with the quantized weights, as in the paper.
* ``backbone``: a ``qgnn train --save`` checkpoint of the host (same dataset, model, method and bits,
  no prompts) whose weights fill the model before the prompts are injected: prompt tuning on a trained
  quantized backbone.
* ``lr`` / ``weight_decay`` (absent: the run's; ``TrainConfig.resolve`` fills ``lr`` from the prompt recipe
  of the host, :mod:`qgnn.recipes`, so ``qgnn train --prompt ...`` trains the prompts at 1e-3): the
  optimizer settings of the prompt parameters alone (their own Adam parameter group). Adam moves every
  parameter by about lr per step whatever its gradient's scale, so a zero-initialised prompt grows at the
  host's lr to the size of the weights within a few dozen steps, however small the aggregate it corrects
  (GCN on Cora: ‖s_i‖ ≈ 0.34); a smaller lr (or a stronger decay) keeps it a correction. For Adam this is
  the same as LoRA's output scale α / r.

The runner calls :func:`apply_prompts` after the quantization method, so prompts sit outside every
quantizer; ``load_model`` calls it with ``load_backbone=False`` (the checkpoint holds all weights).
"""

from __future__ import annotations

from torch import nn

from qgnn.errors import CheckpointError, ConfigError

from .inject import PromptConfig, check_number, freeze_backbone, inject_prompts

__all__ = ["RUNNER_KEYS", "apply_prompts", "prompt_optimizer_options", "resolve_prompt"]

RUNNER_KEYS = ("freeze_backbone", "backbone", "lr", "weight_decay")


def resolve_prompt(prompt: dict | None) -> dict:
    """The prompt dict with every default filled in (what the results JSON records); {} for no prompt."""
    if not prompt or prompt.get("kind", "lorap") == "none":
        return {}
    extra = {k: prompt[k] for k in RUNNER_KEYS if k in prompt}
    cfg = PromptConfig.from_dict({k: v for k, v in prompt.items() if k not in RUNNER_KEYS})
    out = {**cfg.fields_dict(), "freeze_backbone": bool(extra.get("freeze_backbone", False)),
           "backbone": extra.get("backbone")}
    if out["backbone"] is not None and not isinstance(out["backbone"], str):
        raise ConfigError(f"prompt backbone must be a checkpoint path, got {out['backbone']!r}")
    for key, positive in (("lr", True), ("weight_decay", False)):
        if extra.get(key) is not None:
            out[key] = check_number(f"prompt {key} (absent: the run's)", extra[key], positive)
    return out


def prompt_optimizer_options(prompt: dict | None) -> dict:
    """The Adam options of the prompt parameter group (``lr``, ``weight_decay`` where set; {} = the run's)."""
    prompt = resolve_prompt(prompt)
    return {k: prompt[k] for k in ("lr", "weight_decay") if k in prompt}


def apply_prompts(model: nn.Module, prompt: dict | None, load_backbone: bool = True) -> nn.Module:
    """Inject the prompts ``prompt`` describes (see the module docstring); no prompt: the model unchanged."""
    prompt = resolve_prompt(prompt)
    if not prompt:
        return model
    if load_backbone and prompt["backbone"]:
        from qgnn.train.checkpoint import load_checkpoint

        state, _ = load_checkpoint(prompt["backbone"])
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"backbone {prompt['backbone']} does not fit this model (same dataset, model, "
                                  f"method and bits, saved without prompts?): {e}") from None
    cfg = PromptConfig.from_dict({k: v for k, v in prompt.items() if k not in RUNNER_KEYS})
    inject_prompts(model, cfg)
    if prompt["freeze_backbone"]:
        freeze_backbone(model)
    return model
