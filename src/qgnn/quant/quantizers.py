"""Quantizer modules: one interface, ``forward(x, index=None) -> x̂`` (fake-quantized, same shape/dtype).

:class:`Quantizer` fixes the grid (``bits``, ``symmetric``, ``signed`` -> ``qmin``/``qmax``) and the
granularity (:class:`~qgnn.quant.granularity.Layout`); subclasses only say where the scale and zero-point
come from:

* :class:`UniformQuantizer`: from an observed range (min-max, EMA or percentile), with STE or clipped-STE
  gradients; affine uniform quantization of Jacob et al., CVPR 2018.
* :class:`LSQQuantizer`: a learned step size (Esser et al., ICLR 2020), optionally a learned zero-point
  (LSQ+, Bhalgat et al., CVPR-W 2020).

Integer export reads the same parameters through :meth:`Quantizer.quant_int`, which returns codes with
``dequantize(codes, scale, zero_point) == forward(x)`` bit for bit (eval mode).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError, lookup

from . import sync
from .granularity import Layout, fill_nan, fill_unseen
from .observers import Observer, make_observer
from .primitives import (
    SCALE_EPS,
    binary_fake_quant,
    calc_qparams,
    clamp_ste,
    code_dtype,
    fake_quant,
    grad_scale,
    is_binary,
    parse_estimator,
    qrange,
    quantize,
    round_ste,
    validate_bits,
)

__all__ = ["Quantizer", "UniformQuantizer", "LSQQuantizer"]

_LSQ_INITS = {"lsq": "lsq", "minmax": "minmax"}


class Quantizer(nn.Module):
    """Base fake quantizer.

    Args:
        bits: code width, 1..8 (ConfigError otherwise).
        symmetric: zero-point fixed at 0 (True) or affine with an integer zero-point (False).
        signed: signed codes (two's complement; 1 bit = binary {-1, +1}) or unsigned [0, 2^b - 1].
            Defaults to ``symmetric``: symmetric grids are centred on 0, affine ones use unsigned codes
            like Jacob et al. (for affine grids the sign only shifts the codes, not the real values).
        granularity: ``"tensor"``, ``"channel"`` or ``"node"`` (see :class:`Layout`).
        ch_axis: channel axis for ``"channel"`` (-1 for activations ``[N, C]``, 0 for weights ``[out, in]``).
        num_nodes: size of the per-node table (required for ``"node"``).
        num_channels: number of channels (optional; otherwise taken from the first tensor).
        estimator: gradient estimator for x, ``"ste"`` or ``"clipped_ste"``.

    ``forward(x, index=None)``: for ``"node"``, ``index[i]`` is the node id of row ``i`` of ``x`` (a
    LongTensor of length ``x.shape[0]``); with ``index=None`` row ``i`` is node ``i``. Other granularities
    ignore ``index``. Empty tensors pass through. ``enabled = False`` makes the quantizer the identity.

    A signed 1-bit symmetric quantizer is binary: x̂ = s · sign(x), sign(0) = +1, codes {-1, +1}.
    """

    kind = "base"
    # forward(x) == dequantize(*quant_int(x)) in eval mode: integer kernels may then sum the codes in
    # place of the fake-quantized values (False for a mixture of grids such as RelaxedQuantizer).
    integer_exact = True

    def __init__(
        self,
        bits: int = 8,
        *,
        symmetric: bool = False,
        signed: bool | None = None,
        granularity: str = "tensor",
        ch_axis: int = -1,
        num_nodes: int | None = None,
        num_channels: int | None = None,
        estimator: str = "ste",
    ):
        super().__init__()
        self.bits = validate_bits(bits)
        self.symmetric = bool(symmetric)
        self.signed = self.symmetric if signed is None else bool(signed)
        self.binary = is_binary(self.bits, self.signed)
        if self.binary and not self.symmetric:
            raise ConfigError(
                "1-bit signed codes are binary {-1, +1} and have no zero-point: use symmetric=True for the "
                "binary quantizer, or signed=False for the affine 1-bit grid {0, 1}"
            )
        self.qmin, self.qmax = qrange(self.bits, self.signed)
        self.layout = Layout(granularity, ch_axis, num_nodes, num_channels)
        self.estimator = parse_estimator(estimator)
        self.enabled = True

    # ------------------------------------------------------------------ read-only views
    @property
    def bit_width(self) -> int | Tensor:
        """Bits per code: an int here; subclasses with per-element widths (A2Q) return a tensor."""
        return self.bits

    @property
    def granularity(self) -> str:
        return self.layout.granularity

    @property
    def scale(self) -> Tensor:
        """Current scale table, shape [P] (detached)."""
        raise NotImplementedError

    @property
    def zero_point(self) -> Tensor:
        """Current integer zero-point table (float dtype, integer values), shape [P]; zeros if symmetric."""
        raise NotImplementedError

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        if not self.enabled or x.numel() == 0:
            return x
        self.layout.check(x, index)
        scale, zero_point = self._qparams(x, index)
        if self.binary:
            return binary_fake_quant(x, scale, self.estimator)
        return fake_quant(x, scale, zero_point, self.qmin, self.qmax, self.estimator)

    def _qparams(self, x: Tensor, index: Tensor | None, observe: bool = True) -> tuple[Tensor, Tensor | None]:
        """Scale and zero-point (None if symmetric) broadcastable against ``x``. ``observe=False``: do
        not update statistics (export), except to calibrate a quantizer that has never seen data."""
        raise NotImplementedError

    @torch.no_grad()
    def quant_int(self, x: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Integer codes of ``x`` and the (scale, zero_point) that dequantize them, broadcastable against
        the codes: ``dequantize(*q.quant_int(x, index))`` equals ``q(x, index)`` in eval mode.

        Codes are int8 when [qmin, qmax] fits (signed, or unsigned up to 7 bits), uint8 for unsigned
        8-bit; binary codes are {-1, +1}. No statistics are updated; ``enabled`` is ignored (export asks
        for codes explicitly).
        """
        self.layout.check(x, index)
        if x.numel() == 0:
            empty = x.new_zeros(())
            return torch.empty(x.shape, dtype=code_dtype(self.qmin, self.qmax), device=x.device), empty, empty
        scale, zero_point = self._qparams(x, index, observe=False)
        codes = quantize(x, scale, zero_point, self.qmin, self.qmax, binary=self.binary)
        return codes, scale.detach(), (torch.zeros_like(scale) if zero_point is None else zero_point).detach()

    # ------------------------------------------------------------------ repr
    def _repr_fields(self) -> list[str]:
        fields = [
            f"bits={self.bits}",
            f"symmetric={self.symmetric}",
            f"signed={self.signed}",
            f"granularity={self.layout.describe()}",
        ]
        if self.binary:
            fields.append("binary=True")
        return fields

    def extra_repr(self) -> str:
        fields = self._repr_fields()
        if not self.enabled:
            fields.append("enabled=False")
        return ", ".join(fields)


class UniformQuantizer(Quantizer):
    """Affine / symmetric uniform quantizer whose range comes from an observer (Jacob et al. 2018).

    ``x̂ = (clamp(round(x/s) + z, qmin, qmax) - z) · s`` with ``(s, z) = calc_qparams(observer.range())``.
    In training mode the observer first folds in the batch (so the batch itself is in range for min-max);
    in eval mode the range is frozen, except that a quantizer that has never observed anything calibrates
    on its first batch rather than quantize with an undefined range. ``observer.eval()`` alone freezes the
    range while the model trains. The scale gets no gradient; x gets STE or clipped-STE gradients.

    Args: see :class:`Quantizer`; plus ``observer`` (``"minmax"``, ``"ema"``, ``"percentile"`` or an
    :class:`Observer` with the same granularity) and ``observer_kwargs`` (e.g. ``{"momentum": 0.9}``,
    ``{"p": 0.999, "sample_size": 16384}``).
    """

    kind = "uniform"

    def __init__(
        self,
        bits: int = 8,
        *,
        symmetric: bool = False,
        signed: bool | None = None,
        granularity: str = "tensor",
        ch_axis: int = -1,
        num_nodes: int | None = None,
        num_channels: int | None = None,
        estimator: str = "ste",
        observer: str | Observer = "minmax",
        observer_kwargs: dict | None = None,
    ):
        super().__init__(
            bits,
            symmetric=symmetric,
            signed=signed,
            granularity=granularity,
            ch_axis=ch_axis,
            num_nodes=num_nodes,
            num_channels=num_channels,
            estimator=estimator,
        )
        if isinstance(observer, Observer):
            if observer_kwargs:
                raise ConfigError("observer_kwargs only apply when observer is given by name")
            if not observer.layout.same_as(self.layout):
                raise ConfigError(
                    f"observer granularity {observer.layout.describe()} does not match the quantizer's "
                    f"{self.layout.describe()}"
                )
            self.observer = observer
        else:
            self.observer = make_observer(
                observer,
                granularity=granularity,
                ch_axis=ch_axis,
                num_nodes=num_nodes,
                num_channels=num_channels,
                **(observer_kwargs or {}),
            )
        self.layout = self.observer.layout  # one layout, so lazy channel sizing is seen by both

    def _table(self) -> tuple[Tensor, Tensor]:
        mn, mx = self.observer.range()
        return calc_qparams(mn, mx, self.bits, self.symmetric, self.signed)

    @property
    def scale(self) -> Tensor:
        return self._table()[0]

    @property
    def zero_point(self) -> Tensor:
        return self._table()[1]

    def forward_rows(self, x: Tensor, keep: Tensor) -> Tensor:
        """``x`` with only the rows ``keep`` (ids) quantized, the others as they are; the observer sees the kept
        rows alone. Equal to ``x.index_copy(0, keep, self(x[keep]))`` in value and gradient (per-tensor /
        per-channel granularity), without gathering the kept rows into a copy that autograd must scatter back:
        the whole tensor is fake-quantized once and the protected rows (Degree-Quant protects 10-20 % of nodes)
        are copied back into it (Degree-Quant's masked training spent most of its extra time in the gather /
        scatter of the kept rows)."""
        if not self.enabled or x.numel() == 0 or self.layout.granularity not in ("tensor", "channel"):
            return x.index_copy(0, keep, self(x.index_select(0, keep)))
        obs = self.observer
        if keep.numel() == 0:
            if obs.training and sync.active():  # the other ranks reduce their kept rows' range: take part
                obs.update(x[:0], None)
            return x
        if obs.training or not obs.observed:
            with torch.no_grad():
                obs.update(x.detach().index_select(0, keep), None)
        scale, zero_point = self._qparams(x, None, observe=False)
        y = (binary_fake_quant(x, scale, self.estimator) if self.binary else
             fake_quant(x, scale, zero_point, self.qmin, self.qmax, self.estimator))
        protected = torch.ones(x.size(0), dtype=torch.bool, device=x.device).index_fill_(0, keep, False)
        protected = protected.nonzero().view(-1)
        # the few protected rows copied back in place (their gradient goes to x through the copy): cheaper than a
        # broadcast torch.where over every row, forward and backward
        return y.index_copy_(0, protected, x.index_select(0, protected)) if protected.numel() else y

    def _qparams(self, x, index, observe=True):
        obs = self.observer
        if (observe and obs.training) or not obs.observed:
            obs.update(x, index)
        scale, zero_point = self._table()
        expand = self.layout.expand
        return expand(scale, x, index), (None if self.symmetric else expand(zero_point, x, index))

    def _repr_fields(self):
        obs = self.observer.describe()
        return [*super()._repr_fields(), f"observer={obs}", f"estimator={self.estimator}"]


class LSQQuantizer(Quantizer):
    """Learned step size quantization (LSQ, Esser et al., ICLR 2020); LSQ+ zero-point optional.

    ``x̂ = s · (clamp(round(x/s) + z, qmin, qmax) - z)`` with a learnable step ``s`` (``self.step``; the
    forward uses ``|step|`` floored at a tiny epsilon so it stays positive). Gradients (clipped STE), with
    u = x/s and "inside" meaning qmin <= u + z <= qmax:

    * d x̂/dx = 1 inside, 0 outside
    * d x̂/ds = -u + round(u) inside, qmin - z or qmax - z outside (the paper's formula for z = 0),
      multiplied by the gradient scale ``g = 1 / sqrt(N · qmax)``, N = elements sharing the step
      (whole tensor per tensor, ``numel / C`` per channel, one row per node)
    * d x̂/dz = -s outside, 0 inside (learned zero-point, rounded straight-through, same ``g``)

    Initialisation from the first non-empty batch (any mode), ``init``:

    * ``"lsq"`` (default when symmetric): ``s = 2 · mean|x| / sqrt(qmax)`` (Esser et al.); binary uses
      ``mean|x|``, the L2-optimal scale of XNOR-Net. Made for 2-4 bits: at 8 bits it is coarse (about
      28 dB SQNR on Gaussian data, against 40 dB for the min-max range) until training refines it.
    * ``"minmax"`` (default and only choice when asymmetric): ``(s, z)`` from the batch range, as
      :func:`calc_qparams` (LSQ+ initialises asymmetric quantizers from the range too); the way to start
      an 8-bit LSQ quantizer, or to start from a calibrated / pretrained range.

    Per node, nodes not in the first batch get the mean (``"lsq"``) or pooled range (``"minmax"``) of
    those that were.

    Args: see :class:`Quantizer` (``symmetric`` defaults to True here); ``learn_zero_point`` makes the
    zero-point of an asymmetric quantizer a parameter (LSQ+), otherwise it is a buffer fixed at init;
    ``init`` as above.
    """

    kind = "lsq"

    def __init__(
        self,
        bits: int = 8,
        *,
        symmetric: bool = True,
        signed: bool | None = None,
        granularity: str = "tensor",
        ch_axis: int = -1,
        num_nodes: int | None = None,
        num_channels: int | None = None,
        learn_zero_point: bool = False,
        init: str | None = None,
    ):
        super().__init__(
            bits,
            symmetric=symmetric,
            signed=signed,
            granularity=granularity,
            ch_axis=ch_axis,
            num_nodes=num_nodes,
            num_channels=num_channels,
            estimator="clipped_ste",  # the LSQ step gradient is defined with the clipped STE
        )
        if learn_zero_point and self.symmetric:
            raise ConfigError("learn_zero_point needs an asymmetric quantizer (symmetric=False)")
        self.learn_zero_point = bool(learn_zero_point)
        self.init = lookup("LSQ init", init or ("lsq" if self.symmetric else "minmax"), _LSQ_INITS)
        if self.init == "lsq" and not self.symmetric:
            raise ConfigError("init='lsq' is for symmetric quantizers; asymmetric ones start from 'minmax'")
        p = self.layout.size or 0  # 0: per-channel, sized at initialisation
        self.step = nn.Parameter(torch.ones(p))
        if self.symmetric:
            self.zp = None
        elif self.learn_zero_point:
            self.zp = nn.Parameter(torch.zeros(p))
        else:
            self.register_buffer("zp", torch.zeros(p))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # Python mirror: no tensor read in the hot path

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def initialize(self, x: Tensor, index: Tensor | None = None) -> None:
        """(Re)initialise step (and zero-point) from ``x``; called automatically on the first batch."""
        p = self.layout.check(x, index)
        x = x.detach()
        if self.init == "lsq":
            # distributed runs: the mean over the ranks' batches (qgnn.quant.sync), so every rank starts alike
            mean_abs = fill_nan(sync.nanmean(self.layout.mean(x.abs(), index))[0])
            factor = 1.0 if self.binary else 2.0 / math.sqrt(self.qmax)
            step, zp = (mean_abs * factor).clamp(min=SCALE_EPS), None
        else:
            mn, mx = fill_unseen(*sync.min_max(*self.layout.minmax(x, index)))
            step, zp = calc_qparams(mn, mx, self.bits, symmetric=self.symmetric, signed=self.signed)
            zp = None if self.symmetric else zp
        if self.layout.granularity == "channel":
            self.layout.num_channels = p
        self._set("step", step)
        if zp is not None:
            self._set("zp", zp)
        self.initialized.fill_(True)
        self._initialized = True

    def _set(self, name: str, value: Tensor) -> None:
        t = getattr(self, name)
        if t.shape != value.shape:  # lazily sized per-channel table; keep the Parameter object for optimizers
            with torch.inference_mode(False):  # a normal tensor even if first called under inference_mode
                t.data = torch.empty(value.shape, dtype=t.dtype, device=value.device)
        t.data.copy_(value)

    # ------------------------------------------------------------------ parameters
    def _step(self) -> Tensor:
        return self.step.abs().clamp(min=SCALE_EPS)

    def _zero_point(self) -> Tensor:
        # integer zero-point in [qmin, qmax]; a learned one is rounded/clamped straight-through
        return round_ste(clamp_ste(self.zp, self.qmin, self.qmax)) if self.learn_zero_point else self.zp

    @property
    def scale(self) -> Tensor:
        return self._step().detach()

    @property
    def zero_point(self) -> Tensor:
        return torch.zeros_like(self.step).detach() if self.symmetric else self._zero_point().detach()

    def _qparams(self, x, index, observe=True):
        if not self._initialized:
            self.initialize(x, index)
        expand = self.layout.expand
        g = 1.0 / math.sqrt(max(self.layout.group_size(x), 1) * self.qmax)
        step = self._step()
        if step.requires_grad:
            step = grad_scale(step, g)
        zero_point = None
        if not self.symmetric:
            zero_point = self._zero_point()
            if zero_point.requires_grad:
                zero_point = grad_scale(zero_point, g)
            zero_point = expand(zero_point, x, index)
        return expand(step, x, index), zero_point

    def _repr_fields(self):
        fields = [*super()._repr_fields(), f"init={self.init}"]
        if not self.symmetric:
            fields.append(f"learn_zero_point={self.learn_zero_point}")
        return [*fields, f"estimator={self.estimator}"]

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("step", "zp"):
            saved, t = state_dict.get(prefix + name), getattr(self, name, None)
            if saved is not None and t is not None and t.shape != saved.shape and self.layout.size is None:
                t.data = torch.empty(saved.shape, dtype=t.dtype, device=t.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.layout.granularity == "channel" and self.step.numel():
            self.layout.num_channels = self.step.numel()
        self._initialized = bool(self.initialized)
