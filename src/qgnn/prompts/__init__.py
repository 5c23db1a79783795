"""Prompts for quantized GNNs: node prompts (GPF, GPF-plus) and aggregation prompts (LoRAP), injected
into an existing model peft-style.

* :class:`GPF`, :class:`GPFPlus` (Fang et al., NeurIPS 2023), :class:`LoRAP` (Liu, Li & Rossi,
  arXiv 2601.15079): the prompt modules (:mod:`qgnn.prompts.modules`).
* :func:`inject_prompts` / :func:`disable_prompts` / :func:`enable_prompts` / :func:`unload_prompts`,
  :func:`prompt_state_dict` / :func:`load_prompt_state_dict`, :func:`freeze_backbone`,
  :func:`prompt_report` (:mod:`qgnn.prompts.inject`, which documents where each prompt sits per layer).
* :func:`apply_prompts`: what ``qgnn train --prompt ...`` does (:mod:`qgnn.prompts.train`).

See docs/prompts.md.
"""

from .inject import (
    PROMPT_KINDS,
    PromptConfig,
    PromptedLayer,
    aggregation_dim,
    disable_prompts,
    enable_prompts,
    freeze_backbone,
    inject_prompts,
    load_prompt_state_dict,
    prompt_parameters,
    prompt_report,
    prompt_state_dict,
    prompted_layers,
    unload_prompts,
)
from .modules import GPF, GPFPlus, LoRAP, PromptModule
from .train import apply_prompts, resolve_prompt

__all__ = [
    "GPF",
    "PROMPT_KINDS",
    "GPFPlus",
    "LoRAP",
    "PromptConfig",
    "PromptModule",
    "PromptedLayer",
    "aggregation_dim",
    "apply_prompts",
    "disable_prompts",
    "enable_prompts",
    "freeze_backbone",
    "inject_prompts",
    "load_prompt_state_dict",
    "prompt_parameters",
    "prompt_report",
    "prompt_state_dict",
    "prompted_layers",
    "resolve_prompt",
    "unload_prompts",
]
