"""The ``.qgnn.safetensors`` file: packed integer weights, quantization tables and a JSON model description.

A safetensors file (no pickle: a JSON header of tensor names, dtypes, shapes and byte offsets, then raw
little-endian bytes) whose metadata entry ``qgnn_export`` is the JSON *descriptor* (``docs/format.md``):

* ``format`` = ``"qgnn-packed"``, ``version`` = :data:`FORMAT_VERSION`;
* ``task``, ``num_features``, ``num_classes``, ``model`` (the architecture and, per layer, each quantized
  slot's grid and tables), ``bits`` (slot -> width, the bit assignment), ``config`` (the training config)
  and ``quant`` (the QuantConfig);
* ``prompts`` (prompted models only): the node and aggregation prompts, 8-bit or float32 tables
  (:mod:`qgnn.export.prompt_format`).

Every tensor of the file is named by the descriptor with its dtype and shape (:func:`tensor_specs`), and
:func:`read_file` refuses anything else: an unknown version, a missing, extra or mis-shaped tensor, a
bit-width outside 1..8, a grid inconsistent with its bits, a zero-point outside the grid, a non-positive
scale, a truncated or random-bytes file. Errors are :class:`~qgnn.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from qgnn.errors import CheckpointError, ConfigError
from qgnn.quant import qrange

from .packing import packed_nbytes

__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "write_file", "read_file", "tensor_specs", "grid_offset"]

FORMAT = "qgnn-packed"
FORMAT_VERSION = 1
METADATA_KEY = "qgnn_export"
MAX_HEADER = 16 << 20  # safetensors' own header limit is 100 MB; ours are a few KB

_DTYPES = {"uint8": torch.uint8, "int32": torch.int32, "float32": torch.float32,
           "float8_e4m3fn": torch.float8_e4m3fn}  # FP8: GNAQ's per-node levels (qgnn.export.rec_format)


def grid_offset(desc: dict) -> int:
    """What is subtracted from a code before packing: ``qmin``, or -1 for binary codes {-1, +1} stored
    as {0, 1} (``stored = (q + 1) / 2``)."""
    return desc["qmin"]


# --------------------------------------------------------------------------------------------------
# descriptor walk: every tensor the descriptor refers to, with dtype and shape
# --------------------------------------------------------------------------------------------------


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _int(v, what: str, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        _fail(f"{what} must be an integer{'' if lo is None else f' >= {lo}'}, got {v!r}")
    return v


def _number_list(v, what: str, n: int) -> list[float]:
    if not isinstance(v, list) or len(v) != n or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                         for a in v):
        _fail(f"{what} must be a list of {n} numbers")
    return v


def _check_grid(d: dict, where: str) -> None:
    bits = _int(d.get("bits"), f"{where}: bits", 1)
    if bits > 8:
        _fail(f"{where}: bits must be in 1..8, got {bits}")
    signed, binary = d.get("signed"), d.get("binary")
    if not isinstance(signed, bool) or not isinstance(binary, bool):
        _fail(f"{where}: 'signed' and 'binary' must be booleans")
    if binary != (bits == 1 and signed):
        _fail(f"{where}: binary must be true exactly for signed 1-bit grids")
    if (d.get("qmin"), d.get("qmax")) != qrange(bits, signed):
        _fail(f"{where}: grid [{d.get('qmin')}, {d.get('qmax')}] does not match {bits}-bit "
              f"{'signed' if signed else 'unsigned'} codes {list(qrange(bits, signed))}")


def _table_spec(d: dict, key: str, where: str, entries: int, dtype: str, specs: dict) -> None:
    """A per-tensor table is inline in the JSON (a list of one number); longer ones are tensors."""
    v = d.get(key)
    if v is None and key == "zero_point":
        return  # null: all zero (symmetric grids)
    if isinstance(v, str):
        specs[v] = (dtype, (entries,), where + "." + key)
    else:
        _number_list(v, f"{where}: {key}", entries)


def _quant_entries(d: dict, where: str, rows: int | None, channels: int | None) -> int:
    g = d.get("granularity")
    if g == "tensor":
        return 1
    if g == "channel":
        if channels is None:
            _fail(f"{where}: per-channel quantization is not allowed here")
        return channels
    if g == "node":
        n = _int(d.get("num_nodes"), f"{where}: num_nodes", 1)
        if rows is not None:
            _fail(f"{where}: per-node quantization is only allowed on node rows")
        return n
    if g == "nn" and d.get("kind") == "a2q":
        return _int(d.get("groups"), f"{where}: groups", 1)
    _fail(f"{where}: unknown granularity {g!r}")
    return 0


def _a2q_spec(d: dict, where: str, entries: int, specs: dict) -> None:
    """A2Q: integer widths per entry (uint8 tensor or one inline value), zero-point null."""
    if d.get("zero_point") is not None:
        _fail(f"{where}: A2Q grids have zero-point 0 (null)")
    w = d.get("widths")
    if isinstance(w, str):
        specs[w] = ("uint8", (entries,), where + ".widths")
    elif not (isinstance(w, list) and len(w) == 1 and w[0] == d["bits"]):
        _fail(f"{where}: widths must name a uint8 tensor or be [bits]")


def act_specs(d: dict | None, where: str, channels: int | None, specs: dict, rows_are_nodes: bool = True) -> None:
    if d is None:
        return
    if not isinstance(d, dict):
        _fail(f"{where}: quantizer description must be an object")
    if d.get("kind", "uniform") not in ("uniform", "a2q"):
        _fail(f"{where}: unknown quantizer kind {d.get('kind')!r}")
    _check_grid(d, where)
    if d.get("granularity") in ("node", "nn") and not rows_are_nodes:
        _fail(f"{where}: per-node quantization is only allowed on node rows")
    entries = _quant_entries(d, where, None, channels)
    _table_spec(d, "scale", where, entries, "float32", specs)
    _table_spec(d, "zero_point", where, entries, "int32", specs)
    if d.get("kind") == "a2q":
        _a2q_spec(d, where, entries, specs)


def weight_specs(d: dict | None, where: str, shape: tuple[int, ...], specs: dict) -> None:
    if d is None:
        return
    _check_grid(d, where)
    if list(shape) != d.get("shape"):
        _fail(f"{where}: weight shape {d.get('shape')} does not match the layer {list(shape)}")
    numel = math.prod(shape)
    entries = {"tensor": 1, "channel": shape[0]}.get(d.get("granularity"))
    if entries is None:
        _fail(f"{where}: weights are quantized per tensor or per output channel, got {d.get('granularity')!r}")
    if not isinstance(d.get("codes"), str):
        _fail(f"{where}: codes must name a tensor")
    if d.get("kind", "uniform") == "a2q":
        # rows packed at their own widths: the byte count depends on the width table (checked at load)
        nbytes = _int(d.get("nbytes"), f"{where}: nbytes", 0)
        if nbytes > packed_nbytes(numel, 8) + shape[0]:
            _fail(f"{where}: nbytes {nbytes} is more than {numel} codes of at most 8 bits need")
        _a2q_spec(d, where, entries, specs)
    elif d.get("kind", "uniform") != "uniform":
        _fail(f"{where}: unknown quantizer kind {d.get('kind')!r}")
    else:
        nbytes = packed_nbytes(numel, d["bits"])
    specs[d["codes"]] = ("uint8", (nbytes,), where + ".codes")
    _table_spec(d, "scale", where, entries, "float32", specs)
    _table_spec(d, "zero_point", where, entries, "int32", specs)


def float_spec(name, where: str, shape: tuple[int, ...], specs: dict, optional: bool = True) -> None:
    if name is None and optional:
        return
    if not isinstance(name, str):
        _fail(f"{where} must name a tensor")
    specs[name] = ("float32", tuple(shape), where)


def _float_or_weight(layer: dict, key: str, shape, specs, where) -> None:
    """A weight matrix: quantized (``slots[key]``) or float (``layer[key + '_float']``)."""
    slot = layer.get("slots", {}).get(key)
    if slot is not None:
        weight_specs(slot, f"{where}.{key}", shape, specs)
    else:
        float_spec(layer.get(f"{key}_float"), f"{where}.{key} (float)", shape, specs, optional=False)


_LAYER_SLOTS = {
    "linear": ("input", "weight", "output"),
    "gcn": ("input", "weight", "xw", "edge", "aggr", "output"),
    "gin": ("input", "aggr", "output"),
    "sage": ("input", "weight", "weight_root", "aggr", "output"),
    "gat": ("input", "weight", "att", "xw", "attention", "aggr", "output"),
}
_WEIGHT_KEYS = {"weight", "weight_root", "att"}


# export type -> (its slots, check(layer, slots, k_in, k_out, specs, where)): layer kinds added beside the
# built-ins register how their spec is checked (qgnn.export.ops); the input, bias and output are checked here.
LAYER_SPEC_CHECKS: dict[str, tuple[tuple[str, ...], object]] = {}


def layer_spec_check(kind: str, slots: tuple[str, ...]):
    """Decorator: the spec check of export type ``kind`` (weights, options, its own slots)."""

    def deco(fn):
        LAYER_SPEC_CHECKS[kind] = (tuple(slots), fn)
        return fn

    return deco


def _registered_spec(layer: dict, t: str, specs: dict, where: str) -> tuple[int, int]:
    names, check = LAYER_SPEC_CHECKS[t]
    slots = layer.get("slots")
    if not isinstance(slots, dict) or set(slots) - set(names):
        _fail(f"{where}: slots must be an object with keys among {', '.join(names)}")
    k_in, k_out = _int(layer.get("in"), f"{where}: in", 1), _int(layer.get("out"), f"{where}: out", 1)
    act_specs(slots.get("input"), f"{where}.input", k_in, specs)
    check(layer, slots, k_in, k_out, specs, where)
    float_spec(layer.get("bias"), f"{where}.bias", (k_out,), specs)
    act_specs(slots.get("output"), f"{where}.output", k_out, specs)
    return k_in, k_out


def layer_specs(layer: dict, specs: dict, where: str) -> tuple[int, int]:
    """Check one layer description, add its tensors; returns (in, out) feature widths."""
    t = layer.get("type")
    if t == "batchnorm":
        c = _int(layer.get("channels"), f"{where}: channels", 1)
        for k in ("weight", "bias", "running_mean", "running_var"):
            float_spec(layer.get(k), f"{where}.{k}", (c,), specs, optional=k in ("weight", "bias"))
        return c, c
    if t == "relu":
        return -1, -1
    if t not in _LAYER_SLOTS and t not in LAYER_SPEC_CHECKS:
        from . import ops  # noqa: F401  (layer kinds added beside the built-ins register their checks)
    if t in LAYER_SPEC_CHECKS:
        return _registered_spec(layer, t, specs, where)
    if t not in _LAYER_SLOTS:
        _fail(f"{where}: unknown layer type {t!r}")
    slots = layer.get("slots")
    if not isinstance(slots, dict) or set(slots) - set(_LAYER_SLOTS[t]):
        _fail(f"{where}: slots must be an object with keys among {', '.join(_LAYER_SLOTS[t])}")
    k_in, k_out = _int(layer.get("in"), f"{where}: in", 1), _int(layer.get("out"), f"{where}: out", 1)
    heads = _int(layer.get("heads", 1), f"{where}: heads", 1)
    width = k_out * heads if t == "gat" else k_out
    # a linear layer's rows are nodes inside a GIN MLP and graphs in a readout head: both row-wise tables
    # (per node, A2Q's groups) are allowed; the runtime checks the row count against a per-node table
    act_specs(slots.get("input"), f"{where}.input", k_in, specs)
    if t == "linear":
        _float_or_weight(layer, "weight", (k_out, k_in), specs, where)
        float_spec(layer.get("bias"), f"{where}.bias", (k_out,), specs)
        act_specs(slots.get("output"), f"{where}.output", k_out, specs)
        return k_in, k_out
    if t == "gin":
        seq = layer.get("nn")
        if not isinstance(seq, list) or not seq:
            _fail(f"{where}: nn must be a non-empty list of layers")
        width_in, cur = k_in, k_in
        for i, sub in enumerate(seq):
            a, b = layer_specs(sub, specs, f"{where}.nn.{i}")
            if a != -1:
                if a != cur:
                    _fail(f"{where}.nn.{i}: expects {a} features, gets {cur}")
                cur = b
        if cur != k_out:
            _fail(f"{where}: nn ends with {cur} features, the layer says out = {k_out}")
        act_specs(slots.get("aggr"), f"{where}.aggr", width_in, specs)
        act_specs(slots.get("output"), f"{where}.output", k_out, specs)
        if not isinstance(layer.get("eps"), (int, float)):
            _fail(f"{where}: eps must be a number")
        return k_in, k_out
    if t == "gcn":
        _float_or_weight(layer, "weight", (k_out, k_in), specs, where)
        act_specs(slots.get("xw"), f"{where}.xw", k_out, specs)
        act_specs(slots.get("edge"), f"{where}.edge", None, specs, rows_are_nodes=False)
    elif t == "sage":
        _float_or_weight(layer, "weight", (k_out, k_in), specs, where)
        if layer.get("root_weight"):
            _float_or_weight(layer, "weight_root", (k_out, k_in), specs, where)
        act_specs(slots.get("aggr"), f"{where}.aggr", k_in, specs)
    elif t == "gat":
        _float_or_weight(layer, "weight", (width, k_in), specs, where)
        _float_or_weight(layer, "att", (2, heads, k_out), specs, where)
        act_specs(slots.get("xw"), f"{where}.xw", width, specs)
        act_specs(slots.get("attention"), f"{where}.attention", None, specs, rows_are_nodes=False)
        act_specs(slots.get("aggr"), f"{where}.aggr", width, specs)
        width = width if layer.get("concat", True) else k_out
    if t in ("gcn",):
        act_specs(slots.get("aggr"), f"{where}.aggr", k_out, specs)
    float_spec(layer.get("bias"), f"{where}.bias", (width if t == "gat" else k_out,), specs)
    act_specs(slots.get("output"), f"{where}.output", width if t == "gat" else k_out, specs)
    return k_in, (width if t == "gat" else k_out)


def tensor_specs(desc: dict) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """name -> (dtype, shape, where) of every tensor ``desc`` refers to; ConfigError on a bad descriptor."""
    if not isinstance(desc, dict):
        _fail("the descriptor must be a JSON object")
    if desc.get("task") == "rec":  # LightGCN embedding tables: their own layout
        from .rec_format import rec_tensor_specs

        return rec_tensor_specs(desc)
    model = desc.get("model")
    if not isinstance(model, dict):
        _fail("descriptor has no 'model' object")
    f_in = _int(desc.get("num_features"), "num_features", 1)
    _int(desc.get("num_classes"), "num_classes", 1)
    specs: dict = {}
    arch = model.get("arch")
    convs = model.get("convs")
    if not isinstance(convs, list) or not convs:
        _fail("model.convs must be a non-empty list")
    if arch == "node_stack":
        if model.get("activation") not in ("relu", "elu"):
            _fail(f"model.activation must be relu or elu, got {model.get('activation')!r}")
        cur = f_in
        for i, layer in enumerate(convs):
            a, b = layer_specs(layer, specs, f"convs.{i}")
            if a != cur:
                _fail(f"convs.{i} expects {a} features, gets {cur}")
            cur = b
        if cur != desc["num_classes"]:
            _fail(f"the last layer gives {cur} outputs for {desc['num_classes']} classes")
    elif arch == "graph_readout":
        if model.get("pooling") not in ("sum", "mean", "max"):
            _fail(f"model.pooling must be sum, mean or max, got {model.get('pooling')!r}")
        norms, heads, rnorms = model.get("norms"), model.get("heads"), model.get("readout_norms")
        if not (isinstance(norms, list) and isinstance(heads, list) and len(norms) == len(convs)
                and len(heads) == len(convs) + 1):
            _fail("graph model needs one norm per conv and one head per depth (convs + 1)")
        if rnorms is not None and (not isinstance(rnorms, list) or len(rnorms) != len(heads)):
            _fail("readout_norms must be null or one per head")
        widths, cur = [f_in], f_in
        for i, (layer, norm) in enumerate(zip(convs, norms, strict=True)):
            a, b = layer_specs(layer, specs, f"convs.{i}")
            if a != cur:
                _fail(f"convs.{i} expects {a} features, gets {cur}")
            if layer_specs(norm, specs, f"norms.{i}")[0] != b or norm.get("type") != "batchnorm":
                _fail(f"norms.{i} must be a batchnorm over {b} features")
            cur = b
            widths.append(b)
        for k, head in enumerate(heads):
            if head.get("type") != "linear":
                _fail(f"heads.{k} must be a linear layer")
            a, b = layer_specs(head, specs, f"heads.{k}")
            if a != widths[k] or b != desc["num_classes"]:
                _fail(f"heads.{k} maps {a} -> {b}, expected {widths[k]} -> {desc['num_classes']}")
            if rnorms is not None:
                if rnorms[k].get("type") != "batchnorm" or layer_specs(rnorms[k], specs, f"readout_norms.{k}")[0] \
                        != widths[k]:
                    _fail(f"readout_norms.{k} must be a batchnorm over {widths[k]} features")
    else:
        _fail(f"unknown model.arch {arch!r}; valid: node_stack, graph_readout")
    if desc.get("prompts") is not None:  # a prompted model's prompt tables (qgnn.export.prompt_format)
        from .prompt_format import prompt_tensor_specs

        prompt_tensor_specs(desc, specs)
    return specs


# --------------------------------------------------------------------------------------------------
# read / write
# --------------------------------------------------------------------------------------------------


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], desc: dict) -> Path:
    """Check ``tensors`` against ``desc`` (same rules as reading) and write them atomically."""
    from safetensors.torch import save_file

    from qgnn.train.checkpoint import atomic_write

    desc = {"format": FORMAT, "version": FORMAT_VERSION, **desc}
    _validate(desc, tensors, str(path))
    header = {METADATA_KEY: json.dumps(desc, separators=(",", ":"), allow_nan=False)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _read_header(path: Path) -> dict:
    """The safetensors JSON header, read by hand first so that a random or truncated file gives one clear
    error before any tensor is touched (the format: u64 little-endian length, then that much JSON)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a qgnn export file (only {size} bytes)")
        n = int.from_bytes(head, "little")
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: not a qgnn export file, or truncated (header length {n}, file {size} B)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a qgnn export file (unreadable header: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a qgnn export file (header is not an object)")
    end = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            raise CheckpointError(f"{path}: tensor {name!r} has no valid data offsets")
        if end + offs[1] > size:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {end + offs[1]} of {size}")
    return header


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, descriptor) of a validated export file; CheckpointError for anything malformed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"export file not found: {path}")
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    raw = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if not raw:
        raise CheckpointError(f"{path}: not a qgnn export file (no '{METADATA_KEY}' metadata; a training "
                              "checkpoint? convert it with `qgnn export`)")
    try:
        desc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt descriptor: {e}") from None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a qgnn export file (format {desc.get('format')!r})")
    if desc.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {desc.get('version')!r} is not supported "
                              f"(this qgnn reads version {FORMAT_VERSION})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated export file: {e}") from None
    _validate(desc, tensors, str(path))
    return tensors, desc


def _validate(desc: dict, tensors: dict[str, torch.Tensor], path: str) -> None:
    try:
        specs = tensor_specs(desc)
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid model description: {e}") from None
    missing = sorted(set(specs) - set(tensors))
    extra = sorted(set(tensors) - set(specs))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(missing[:5])}")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor(s) {', '.join(extra[:5])}")
    for name, (dtype, shape, where) in specs.items():
        t = tensors[name]
        if t.dtype != _DTYPES[dtype] or tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{path}: tensor {name} ({where}) must be {dtype} {list(shape)}, got "
                                  f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t.to(torch.float32)).all()):  # no FP8 isfinite
            raise CheckpointError(f"{path}: tensor {name} ({where}) holds NaN or infinite values")
