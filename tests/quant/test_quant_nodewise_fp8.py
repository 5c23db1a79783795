"""FP8 (e4m3) levels of the node-wise quantizer: rounding, saturation, straight-through gradient, edge cases."""

import pytest
import torch

from qgnn.errors import ConfigError
from qgnn.quant.nodewise import FP8_DTYPE, FP8_MAX, NodeLevelQuantizer, round_fp8, to_fp8


def _all_fp8() -> torch.Tensor:
    """Every finite e4m3fn value, sorted, as float32 (0x7F / 0xFF are the NaNs)."""
    v = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).to(torch.float32)
    return torch.unique(v[torch.isfinite(v)])


def test_rounded_values_are_representable_and_nearest():
    grid = _all_fp8()
    assert grid.max() == FP8_MAX == 448 and grid.numel() == 253  # 254 finite codes, +0 and -0 one value
    x = torch.cat([torch.randn(2000, generator=torch.Generator().manual_seed(0)) * s for s in (1e-3, 0.1, 3, 100)])
    r = round_fp8(x)
    assert r.dtype == torch.float32 and torch.isin(r, grid).all()
    # round to nearest: no representable value is closer than the chosen one
    best = (grid[None, :] - x[:, None]).abs().min(1).values
    assert torch.equal((r - x).abs(), best)
    # and the bound of 3 mantissa bits: relative error <= 2^-4 in the normal range (|x| >= 2^-6)
    normal = x.abs() >= 2 ** -6
    assert ((r - x).abs()[normal] <= x.abs()[normal] * 2 ** -4).all()


def test_ties_round_to_even_and_small_values_to_subnormals():
    # 1.0625 lies halfway between 1.0 (mantissa 000) and 1.125 (001): the even one
    assert round_fp8(torch.tensor([1.0625, 1.1875])).tolist() == [1.0, 1.25]
    assert round_fp8(torch.tensor([2.0 ** -9, 2.0 ** -11, 0.0])).tolist() == [2.0 ** -9, 0.0, 0.0]


def test_saturation_at_the_e4m3_maximum():
    x = torch.tensor([448.0, 449.0, 470.0, 1e6, float("inf"), -1e9, float("-inf")])
    assert round_fp8(x).tolist() == [448.0, 448.0, 448.0, 448.0, 448.0, -448.0, -448.0]
    assert torch.isnan(round_fp8(torch.tensor([float("nan")]))).all()
    assert to_fp8(x).dtype == FP8_DTYPE and to_fp8(x).element_size() == 1


def test_gradient_passes_straight_through():
    x = torch.tensor([0.1, -0.33, 5.0, 1e3, -1e4], requires_grad=True)
    g = torch.tensor([1.0, -2.0, 3.0, 0.5, 7.0])
    (round_fp8(x) * g).sum().backward()
    assert torch.equal(x.grad, g)  # identity, saturated entries included


def _fp8_quantizer(x, bits=2, learnable=True):
    q = NodeLevelQuantizer(x.size(0), bits, learnable=learnable, level_dtype="fp8")
    q.initialize(x)
    return q


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_fp8_quantizer_codes_are_nearest_stored_levels_and_levels_learn(bits):
    x = torch.randn(12, 16, generator=torch.Generator().manual_seed(bits)) * 0.2
    q = _fp8_quantizer(x, bits)
    s = q.stored_levels().detach()
    assert torch.equal(s, q.levels.detach().to(FP8_DTYPE).to(torch.float32))  # FP8 values of the float32 copy
    codes = q.codes(x)
    xh = q.dequantize(codes)
    assert torch.equal(xh.detach(), torch.gather(s, 1, codes.long()))
    nearest = (x[:, :, None] - s[:, None, :]).abs().min(2).values
    assert torch.equal((xh.detach() - x).abs(), nearest)
    # the gradient reaches the float32 levels as it would without rounding: the sum of the upstream
    # gradient over the coordinates that use each level
    g = torch.randn_like(x)
    (xh * g).sum().backward()
    want = torch.zeros_like(s).scatter_add_(1, codes.long(), g)
    assert torch.allclose(q.levels.grad, want)
    # the export holds those FP8 bytes, and unpacks to the levels the model used
    stored = q.export(codes)
    assert stored["levels"].dtype == FP8_DTYPE
    c2, lv2 = NodeLevelQuantizer.unpack(stored, bits)
    assert torch.equal(c2, codes) and torch.equal(lv2, s)


def test_constant_and_zero_rows():
    x = torch.zeros(4, 8)
    x[1] = 0.1   # constant: zero range, every level the same FP8 value
    x[2] = -3.3
    x[3, :4] = 1e-5  # a range below the smallest FP8 subnormal: both levels round to 0
    q = _fp8_quantizer(x)
    assert torch.equal(q.step()[:3], torch.zeros(3))
    xh = q.dequantize(q.codes(x)).detach()
    assert torch.isfinite(xh).all()
    assert torch.equal(xh[:3], round_fp8(x[:3]))
    assert torch.equal(xh[3], torch.zeros(8))


def test_level_bytes_and_bad_dtype():
    n, d = 1000, 64
    b8 = NodeLevelQuantizer(n, 2, level_dtype="fp8").nbytes(d)
    b32 = NodeLevelQuantizer(n, 2, level_dtype="fp32").nbytes(d)
    assert b8["code_bytes"] == b32["code_bytes"] == n * d * 2 // 8
    assert b8["level_bytes"] == n * 4 and b32["level_bytes"] == 4 * n * 4
    assert 4 * n * d / (b8["code_bytes"] + b8["level_bytes"]) == pytest.approx(12.8)
    assert 4 * n * d / (b32["code_bytes"] + b32["level_bytes"]) == pytest.approx(8.0)
    with pytest.raises(ConfigError, match="level_dtype"):
        NodeLevelQuantizer(n, 2, level_dtype="fp16")
