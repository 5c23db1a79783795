"""Integer operators of the runtime: every int8 matmul backend equals the int64 reference bit for bit (also
at the extremes and across the float path's K blocks); int_linear equals Σ_k (a − z_a)(w − z_w); the scipy
CSR aggregation equals qgnn.kernels.integer_accumulate exactly, widening to int64 exactly when needed."""

from __future__ import annotations

import pytest
import torch

from qgnn.errors import ConfigError
from qgnn.export.intops import CENTRED_BLOCK, GraphPlan, centred_matmul_float, int8_matmul, int_linear, resolve_gemm
from qgnn.kernels import INT32_MAX, integer_accumulate

BACKENDS = ("reference", "int_mm", "float")


def randint8(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int64).to(torch.int8)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (33, 1024, 9), (20, 1025, 16), (40, 2500, 7), (0, 4, 3)])
def test_matmul_backends_exact(shape):
    n, k, o = shape
    a, w = randint8((n, k), 1), randint8((o, k), 2)
    want = a.long() @ w.long().t()
    for b in BACKENDS:
        got = int8_matmul(a, w, b)
        assert got.dtype == torch.int32 and torch.equal(got.long(), want), b


def test_matmul_extremes():
    # every product -128 · -128 = 2^14 and K = 3000: |sum| = 3000 · 2^14 > 2^24, beyond float32's integers,
    # so the float path must split K to stay exact
    a = torch.full((3, 3000), -128, dtype=torch.int8)
    w = torch.full((2, 3000), -128, dtype=torch.int8)
    for b in BACKENDS:
        assert torch.equal(int8_matmul(a, w, b), torch.full((3, 2), 3000 * 16384, dtype=torch.int32)), b


def test_int_linear_zero_points():
    a, w = randint8((9, 30), 3), randint8((5, 30), 4)
    cases = [(None, None), (torch.tensor(7), None), (torch.tensor([[3], [-2], [0], [1], [5], [9], [-8], [2], [4]]),
                                                      None),
             (torch.tensor(-5), torch.tensor([1, -2, 3, 0, 4])), (None, torch.tensor(3))]
    for za, zw in cases:
        ac = a.long() - (0 if za is None else za.long().reshape(-1, 1) if za.numel() > 1 else za.long())
        wc = w.long() - (0 if zw is None else zw.long().reshape(-1, 1) if zw.numel() > 1 else zw.long())
        want = ac @ wc.t()
        for b in BACKENDS:
            assert torch.equal(int_linear(a, za, w, zw, backend=b).long(), want), (za, zw, b)


@pytest.mark.parametrize("k", [1, 64, CENTRED_BLOCK, CENTRED_BLOCK + 1, 1433])
def test_centred_matmul_float_is_the_integer_sum(k):
    # centred codes of an 8-bit grid at their extremes (±255) and at random: one float GEMM per K block
    # must give exactly Σ_k (a − z_a)(w − z_w), what int_linear computes
    g = torch.Generator().manual_seed(k)
    ac = torch.randint(-255, 256, (11, k), generator=g)
    wc = torch.randint(-255, 256, (6, k), generator=g)
    ac[0], wc[0] = 255, 255
    ac[1], wc[1] = -255, 255
    want = ac @ wc.t()
    got = centred_matmul_float(ac.float(), wc.float().t().contiguous())
    fits = want.abs() <= 1 << 24
    assert got.dtype == torch.float32
    assert torch.equal(got[fits].long(), want[fits])  # exact wherever float32 holds the integer
    assert torch.equal(got, want.double().float())  # elsewhere: float32's rounding of the exact sum
    a8, w8 = randint8((11, k), 5), randint8((6, k), 6)
    za, zw = torch.tensor(-3), torch.tensor([1, -2, 3, 0, 4, 7])
    cent = centred_matmul_float((a8.float() - za), (w8.float() - zw.view(-1, 1).float()).t().contiguous())
    assert torch.equal(cent, int_linear(a8, za, w8, zw, backend="reference").float())
    with pytest.raises(ConfigError, match="centred_matmul_float"):
        centred_matmul_float(torch.zeros(2, 3), torch.zeros(4, 2))


def test_float_backend_needs_full_precision():
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # would allow bf16 products: not exact
        assert resolve_gemm("auto", torch.device("cpu"), 4, 4, 4) == "int_mm"
        with pytest.raises(ConfigError, match="highest"):
            int8_matmul(randint8((2, 2), 0), randint8((2, 2), 1), "float")
    finally:
        torch.set_float32_matmul_precision(old)
    assert resolve_gemm("auto", torch.device("cpu"), 4, 4, 4) == "float"
    with pytest.raises(ConfigError, match="backend"):
        int8_matmul(randint8((2, 2), 0), randint8((2, 2), 1), "cublas")
    with pytest.raises(ConfigError, match="int8"):
        int8_matmul(randint8((2, 2), 0).int(), randint8((2, 2), 1))


def graph(n, e, seed, isolated=3):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n - isolated, (2, e), generator=g)
    ei = torch.cat([ei, ei[:, :5], torch.arange(4).repeat(2, 1)], 1)  # duplicates and self loops
    return ei[:, torch.randperm(ei.size(1), generator=g)]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n,e", [(1, 0), (10, 30), (300, 2000)])
def test_aggregation_backends_equal_reference(n, e, weighted):
    ei = graph(max(n, 8), e, n + e) if e else torch.zeros(2, 0, dtype=torch.long)
    n = max(n, 8) if e else n
    g = torch.Generator().manual_seed(5)
    xc = torch.randint(-255, 256, (n, 6), generator=g, dtype=torch.int32)
    ev = torch.randint(-200, 200, (ei.size(1),), generator=g, dtype=torch.int32) if weighted else None
    plan = GraphPlan(ei[0], ei[1], n)
    want = integer_accumulate(xc, None, ei, n, ev, None)
    for b in ("reference", "scipy", "float_csr", "auto"):
        got = plan.accumulate(xc, ev, b)
        assert got.dtype == want.dtype and torch.equal(got, want), b
    # an independent int64 sum
    ref = torch.zeros(n, 6, dtype=torch.int64)
    for k in range(ei.size(1)):
        ref[ei[1, k]] += xc[ei[0, k]].long() * (1 if ev is None else int(ev[k]))
    assert torch.equal(want.long(), ref)


def test_aggregation_widens_to_int64():
    # in-degree 2 with |e| · |x| = 2^30 + 1 each: the sum passes 2^31 - 1, so int64 is needed
    ei = torch.tensor([[0, 1], [2, 2]])
    xc = torch.tensor([[1 << 15], [1 << 15], [0]], dtype=torch.int32)
    ev = torch.tensor([(1 << 15) + 1, (1 << 15) + 1], dtype=torch.int32)
    plan = GraphPlan(ei[0], ei[1], 3)
    for b in ("reference", "scipy", "float_csr"):  # float_csr: beyond 2^24, falls back to scipy
        acc = plan.accumulate(xc, ev, b)
        assert acc.dtype == torch.int64 and int(acc[2, 0]) == 2 * (1 << 15) * ((1 << 15) + 1) > INT32_MAX
    small = plan.accumulate(xc // 4, ev // 4, "scipy")
    assert small.dtype == torch.int32


def test_float_csr_only_below_two_to_the_24():
    # one edge, e = x = 2^12 + 1: the product 2^24 + 2^13 + 1 is odd and above 2^24, so float32 cannot hold
    # it; float_csr must not be used and the result stays exact (scipy's int32)
    ei = torch.tensor([[0], [1]])
    big = (1 << 12) + 1
    xc = torch.tensor([[big], [0]], dtype=torch.int32)
    ev = torch.tensor([big], dtype=torch.int32)
    plan = GraphPlan(ei[0], ei[1], 2)
    want = big * big
    assert float(torch.tensor(want, dtype=torch.float32)) != want  # not a float32 integer
    assert int(plan.accumulate(xc, ev, "float_csr")[1, 0]) == want
    small = torch.tensor([[1 << 12], [0]], dtype=torch.int32)  # 2^24 exactly: float32 holds it
    assert int(plan.accumulate(small, ev - 1, "float_csr")[1, 0]) == 1 << 24


def test_sources_differ_from_targets():
    # message-code style: one source row per edge
    dst = torch.tensor([0, 0, 2, 1])
    plan = GraphPlan(torch.arange(4), dst, 3, num_src=4)
    xc = torch.tensor([[1], [2], [3], [4]], dtype=torch.int32)
    assert plan.accumulate(xc, None, "scipy").view(-1).tolist() == [3, 4, 3]
    assert plan.accumulate(xc, None, "float_csr").view(-1).tolist() == [3, 4, 3]
    with pytest.raises(ConfigError):
        plan.accumulate(xc[:3], None, "scipy")
