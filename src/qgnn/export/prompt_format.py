"""The ``prompts`` section of a ``.qgnn.safetensors`` descriptor: the prompts of a prompted model.

A model trained with ``qgnn train --prompt gpf|gpf-plus|lorap|gpf-lorap`` (:mod:`qgnn.prompts`) carries a
node prompt on the input features and / or one LoRAP prompt per message-passing layer. Its descriptor has
(``docs/format.md``, "Prompts")::

    prompts = {"kind": "gpf-lorap",
               "node": {"kind": "gpf-plus", "dim": F, "k": 40, "after_quant": false,
                        "params": {"w_a": P, "basis": P}},                    # or null
               "aggregate": {"0": {"kind": "lorap", "dim": d_0, "k": 40, "rank": 2, "normalize": false,
                                   "params": {"w_a": P, "u": P, "v": P}}, ...}}

Parameter shapes per kind (:data:`PARAM_SHAPES`): GPF ``p`` [d]; GPF-plus ``w_a`` [k, d], ``basis``
[k, d]; LoRAP ``w_a`` [k, d], ``u`` [k, r], ``v`` [r, d]. ``d`` is the node prompt's input width
(``num_features``) or the width of layer i's aggregate (:func:`aggregate_width`, per export type, the table of
:mod:`qgnn.prompts.inject`). Each parameter ``P`` is either

* 8-bit: the weight-quantizer object of the layers (``bits``, ``signed``, ``qmin`` / ``qmax``,
  ``granularity`` ``tensor`` or ``channel`` = per row, ``shape``, packed ``codes``, ``scale``,
  ``zero_point`` null: symmetric), decoded as ``q · s``; or
* float32: ``{"shape": [...], "float": "<tensor name>"}``.

:func:`prompt_tensor_specs` checks the section and adds its tensors to a spec table; ConfigError on
anything malformed (``read_file`` turns it into a CheckpointError naming the file).
"""

from __future__ import annotations

from collections.abc import Callable

from .format import _fail, _int, weight_specs

__all__ = ["NODE_KINDS", "AGGREGATE_KINDS", "AGGREGATE_WIDTHS", "PARAM_SHAPES", "aggregate_width", "param_shape",
           "prompt_tensor_specs", "register_aggregate_width"]

NODE_KINDS = ("gpf", "gpf-plus")
AGGREGATE_KINDS = ("lorap",)


# kind -> parameter -> shape(d, k, r): the parameters of qgnn.prompts.modules, under their attribute names
PARAM_SHAPES = {
    "gpf": {"p": lambda d, k, r: (d,)},
    "gpf-plus": {"w_a": lambda d, k, r: (k, d), "basis": lambda d, k, r: (k, d)},
    "lorap": {"w_a": lambda d, k, r: (k, d), "u": lambda d, k, r: (k, r), "v": lambda d, k, r: (r, d)},
}


def param_shape(kind: str, name: str, d: int, k: int | None, r: int | None) -> tuple[int, ...]:
    """The shape of parameter ``name`` of a ``kind`` prompt of width d, k basis prompts, rank r."""
    return PARAM_SHAPES[kind][name](d, k, r)



# export type -> the width of the aggregate a LoRAP prompt sees in that layer, from its spec (the table of
# qgnn.prompts.inject): GCN the transformed rows, GIN / SAGE the neighbour sum of the inputs, GAT the heads
# concatenated. A layer kind added beside the built-ins registers its rule with register_aggregate_width
# (in its op file, qgnn.export.ops), as it registers its spec check.
AGGREGATE_WIDTHS: dict[str, Callable[[dict], int]] = {
    "gcn": lambda layer: layer["out"],
    "gin": lambda layer: layer["in"],
    "sage": lambda layer: layer["in"],
    "gat": lambda layer: layer["out"] * layer.get("heads", 1),
}


def register_aggregate_width(kind: str, rule: Callable[[dict], int]) -> None:
    """Declare the LoRAP width of export type ``kind``: ``rule(layer spec) -> int``."""
    AGGREGATE_WIDTHS[kind] = rule


def aggregate_width(layer: dict) -> int:
    """Features per row of the aggregate a LoRAP prompt sees in an exported conv layer (:data:`AGGREGATE_WIDTHS`)."""
    rule = AGGREGATE_WIDTHS.get(layer.get("type"))
    if rule is None:
        _fail(f"a {layer.get('type')!r} layer declares no aggregate width for a prompt "
              "(qgnn.export.prompt_format.register_aggregate_width)")
    return rule(layer)


def _param(p, where: str, shape: tuple[int, ...], specs: dict) -> None:
    if not isinstance(p, dict):
        _fail(f"{where} must be an object")
    if "float" in p:
        if p.get("shape") != list(shape) or not isinstance(p["float"], str) or set(p) != {"shape", "float"}:
            _fail(f"{where}: a float parameter is {{shape: {list(shape)}, float: <tensor name>}}")
        specs[p["float"]] = ("float32", shape, where)
        return
    if p.get("kind", "uniform") != "uniform" or p.get("zero_point") is not None or not p.get("signed"):
        _fail(f"{where}: quantized prompt parameters are symmetric signed uniform grids (zero_point null)")
    if len(shape) == 1 and p.get("granularity") != "tensor":
        _fail(f"{where}: a vector is quantized per tensor")
    weight_specs(p, where, shape, specs)


def _prompt(entry, where: str, kinds: tuple[str, ...], dim: int, specs: dict) -> None:
    if not isinstance(entry, dict):
        _fail(f"{where} must be an object")
    kind = entry.get("kind")
    if kind not in kinds:
        _fail(f"{where}: kind must be one of {', '.join(kinds)}, got {kind!r}")
    d = _int(entry.get("dim"), f"{where}: dim", 1)
    if d != dim:
        _fail(f"{where}: dim {d} does not match the {dim} features it acts on")
    k = _int(entry.get("k"), f"{where}: k", 1) if kind != "gpf" else None
    r = _int(entry.get("rank"), f"{where}: rank", 1) if kind == "lorap" else None
    for flag in ("normalize",) if kind == "lorap" else ("after_quant",):
        if not isinstance(entry.get(flag, False), bool):
            _fail(f"{where}: {flag} must be a boolean")
    params = entry.get("params")
    names = set(PARAM_SHAPES[kind])
    if not isinstance(params, dict) or set(params) != names:
        _fail(f"{where}: params must have exactly {', '.join(sorted(names))}")
    for name in sorted(names):
        _param(params[name], f"{where}.{name}", param_shape(kind, name, d, k, r), specs)


def prompt_tensor_specs(desc: dict, specs: dict) -> None:
    """Check ``desc["prompts"]`` (absent or null: nothing to check) against the model and add its tensors to
    ``specs`` (name -> (dtype, shape, where)). Node models and graph models alike."""
    prompts = desc.get("prompts")
    if prompts is None:
        return
    if not isinstance(prompts, dict) or set(prompts) - {"kind", "node", "aggregate"}:
        _fail("prompts must be an object with keys among kind, node, aggregate")
    if not isinstance(prompts.get("kind"), str | None):
        _fail("prompts.kind must be a string or null")
    convs = desc["model"]["convs"]
    if prompts.get("node") is not None:
        _prompt(prompts["node"], "prompts.node", NODE_KINDS, desc["num_features"], specs)
    aggregate = prompts.get("aggregate") or {}
    if not isinstance(aggregate, dict):
        _fail("prompts.aggregate must be an object: conv index -> prompt")
    for key, entry in aggregate.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < len(convs)) or str(int(key)) != key:
            _fail(f"prompts.aggregate: {key!r} is not a conv index (0..{len(convs) - 1})")
        _prompt(entry, f"prompts.aggregate.{key}", AGGREGATE_KINDS, aggregate_width(convs[int(key)]), specs)
    if prompts.get("node") is None and not aggregate:
        _fail("prompts has neither a node prompt nor an aggregate prompt (write null for no prompts)")
