"""integer_aggregate (MixQ-GNN Theorem 1): the integer sum rescaled once equals Σ_j e_ij x_j computed in
float64 from the dequantized tensors, to float32 rounding of the final rescale; the accumulator equals an
independent int64 (NumPy) sum exactly; int32 falls back to int64 exactly when it could overflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qgnn.errors import ConfigError
from qgnn.kernels import (
    INT32_MAX,
    accumulator_bound,
    integer_accumulate,
    integer_aggregate,
    max_in_degree_int32,
)
from qgnn.quant import UniformQuantizer

# The integer sum is exact; the only rounding is acc -> float32 (when |acc| > 2^24), the product s_e · s_x
# and the multiply (and the division for "mean"): a few float32 ulps of each element.
RTOL = 1e-6


def random_graph(n: int, e: int, seed: int, isolated: int = 3, self_loops: int = 4, duplicates: int = 5):
    """[2, E] edges among the first n - isolated nodes (the rest isolated), with explicit self loops and
    duplicated edges; shuffled."""
    g = torch.Generator().manual_seed(seed)
    k = max(n - isolated, 1)
    ei = torch.randint(0, k, (2, e), generator=g)
    loops = torch.randint(0, k, (self_loops,), generator=g).repeat(2, 1)
    dup = ei[:, torch.randint(0, max(e, 1), (duplicates,), generator=g)] if e else ei[:, :0]
    ei = torch.cat([ei, loops, dup], dim=1)
    return ei[:, torch.randperm(ei.size(1), generator=g)]


def codes_of(x: torch.Tensor, bits: int, symmetric: bool, granularity: str = "tensor"):
    q = UniformQuantizer(bits, symmetric=symmetric, granularity=granularity)
    q.eval()
    return q.quant_int(x)  # calibrates on x (never observed)


def float64_reference(q_x, s_x, z_x, ei, n, q_e=None, s_e=None, z_e=None, reduce="sum", absolute=False):
    """Σ_j e_ij x_j in float64 from the dequantized tensors (independent of the kernel); ``absolute``:
    Σ_j |e_ij x_j| instead, the scale of float64's own rounding error."""
    x = (q_x.double() - z_x.double()) * s_x.double()
    msg = x.index_select(0, ei[0])
    if q_e is not None:
        e = (q_e.double() - z_e.double()) * s_e.double()
        msg = msg * e.view(-1, 1)
    if absolute:
        msg = msg.abs()
    out = torch.zeros(n, x.size(1), dtype=torch.float64).index_add_(0, ei[1], msg)
    if reduce == "mean":
        out = out / torch.bincount(ei[1], minlength=n).clamp(min=1).double().view(-1, 1)
    return out


def assert_matches_reference(out, *args, **kwargs):
    """|out - ref| <= RTOL·|ref| + 1e-12 · Σ_j |e_ij x_j| elementwise: float32 rounding of the rescale,
    plus the float64 reference's own summation error (it is not exact where terms cancel)."""
    ref = float64_reference(*args, **kwargs)
    tol = RTOL * ref.abs() + 1e-12 * float64_reference(*args, **kwargs, absolute=True)
    err = (out.double() - ref).abs()
    assert bool((err <= tol).all()), f"max error {float(err.max()):.3e}, worst ratio {float((err / tol).max()):.2f}"


def numpy_accumulator(q_x, z_x, ei, n, q_e=None, z_e=None):
    xc = q_x.numpy().astype(np.int64) - z_x.numpy().astype(np.int64).reshape(1, -1)
    msg = xc[ei[0].numpy()]
    if q_e is not None:
        msg = msg * (q_e.numpy().astype(np.int64) - int(z_e)).reshape(-1, 1)
    acc = np.zeros((n, q_x.shape[1]), dtype=np.int64)
    np.add.at(acc, ei[1].numpy(), msg)
    return acc


CASES = [  # (nodes, edges, channels, seed)
    (1, 1, 1, 0),
    (12, 30, 3, 1),
    (50, 400, 7, 2),
    (200, 3000, 16, 3),
]


@pytest.mark.parametrize("n,e,c,seed", CASES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_matches_float64_aggregation_of_dequantized_values(n, e, c, seed, bits, symmetric, granularity, weighted,
                                                           reduce):
    g = torch.Generator().manual_seed(100 + seed)
    ei = random_graph(n, e, seed, isolated=min(3, n - 1))
    x = torch.randn(n, c, generator=g) * torch.rand(c, generator=g) * 4 + 0.5  # channels of different ranges
    q_x, s_x, z_x = codes_of(x, bits, symmetric, granularity)
    q_e = s_e = z_e = None
    if weighted:  # signed weights, asymmetric or symmetric codes
        q_e, s_e, z_e = codes_of(torch.randn(ei.size(1), generator=g) + 0.3, bits, symmetric)
    out, acc = integer_aggregate(q_x, s_x, z_x, ei, n, q_e, s_e, z_e, reduce=reduce, return_accumulator=True)
    assert out.dtype == torch.float32 and out.shape == (n, c)
    assert_matches_reference(out, q_x, s_x, z_x, ei, n, q_e, s_e, z_e, reduce)
    # the accumulator is exact: equal to an independent int64 sum, and int32 here (small graphs)
    assert acc.dtype == torch.int32
    np.testing.assert_array_equal(acc.numpy(), numpy_accumulator(q_x, z_x, ei, n, q_e, z_e))
    # isolated nodes (the last ones) give exactly 0, never NaN
    if n > 1:
        assert torch.equal(out[-1], torch.zeros(c))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_empty_graph_and_no_nodes_give_zeros(reduce):
    q_x, s_x, z_x = codes_of(torch.randn(5, 3), 4, False)
    ei = torch.empty(2, 0, dtype=torch.long)
    out, acc = integer_aggregate(q_x, s_x, z_x, ei, 5, reduce=reduce, return_accumulator=True)
    assert torch.equal(out, torch.zeros(5, 3)) and torch.equal(acc, torch.zeros(5, 3, dtype=torch.int32))
    q_e = torch.empty(0, dtype=torch.int8)
    assert torch.equal(integer_aggregate(q_x, s_x, z_x, ei, 5, q_e, 0.1, 2, reduce=reduce), torch.zeros(5, 3))
    empty = integer_aggregate(q_x[:0], s_x, z_x, ei, 0, reduce=reduce)
    assert empty.shape == (0, 3)


def test_scalar_and_python_number_parameters_and_explicit_int16_codes():
    g = torch.Generator().manual_seed(5)
    ei = random_graph(20, 60, 5)
    q_x = torch.randint(-300, 300, (20, 4), generator=g, dtype=torch.int16)
    q_e = torch.randint(0, 16, (ei.size(1),), generator=g, dtype=torch.uint8)
    out = integer_aggregate(q_x, 0.25, 3, ei, 20, q_e, 0.5, 7)
    assert_matches_reference(out, q_x, torch.tensor(0.25), torch.tensor(3), ei, 20, q_e, torch.tensor(0.5),
                             torch.tensor(7))
    # zero-point None means 0; per-channel parameters as [C] or [1, C]
    s = torch.rand(4, generator=g) + 0.1
    z = torch.randint(-5, 5, (4,), generator=g).float()
    a = integer_aggregate(q_x, s, z, ei, 20)
    b = integer_aggregate(q_x, s.view(1, -1), z.view(1, -1), ei, 20)
    assert torch.equal(a, b)
    torch.testing.assert_close(integer_aggregate(q_x, s, None, ei, 20), integer_aggregate(q_x, s, 0, ei, 20))


def test_binary_codes():
    q = UniformQuantizer(1, symmetric=True)
    q.eval()
    x = torch.randn(15, 5)
    q_x, s_x, z_x = q.quant_int(x)
    ei = random_graph(15, 50, 8)
    out = integer_aggregate(q_x, s_x, z_x, ei, 15)
    assert_matches_reference(out, q_x, s_x, z_x, ei, 15)


def test_source_rows_need_not_be_nodes():
    """Message codes: one source row per edge, targets are nodes."""
    g = torch.Generator().manual_seed(9)
    ei = random_graph(10, 40, 9)
    msg = torch.randn(ei.size(1), 3, generator=g)
    q_m, s_m, z_m = codes_of(msg, 8, False)
    rows = torch.stack([torch.arange(ei.size(1)), ei[1]])
    out = integer_aggregate(q_m, s_m, z_m, rows, 10)
    assert_matches_reference(out, q_m, s_m, z_m, rows, 10)


def test_integer_sum_is_order_and_permutation_exact():
    """Integer addition is associative: shuffling the edges or relabelling the nodes changes nothing, bit for
    bit (the float path only guarantees this up to rounding)."""
    g = torch.Generator().manual_seed(11)
    n = 60
    ei = random_graph(n, 500, 11)
    q_x, s_x, z_x = codes_of(torch.randn(n, 6, generator=g), 8, False, "channel")
    q_e, s_e, z_e = codes_of(torch.rand(ei.size(1), generator=g), 8, False)
    out = integer_aggregate(q_x, s_x, z_x, ei, n, q_e, s_e, z_e)
    order = torch.randperm(ei.size(1), generator=g)
    assert torch.equal(integer_aggregate(q_x, s_x, z_x, ei[:, order], n, q_e[order], s_e, z_e), out)
    perm = torch.randperm(n, generator=g)  # new node i is old node perm[i]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    assert torch.equal(integer_aggregate(q_x[perm], s_x, z_x, inv[ei], n, q_e, s_e, z_e), out[perm])


# --------------------------------------------------------------------------------------------------
# accumulator width
# --------------------------------------------------------------------------------------------------


def test_static_bound():
    assert accumulator_bound(8, 10, 8) == 255 * 255 * 10
    assert accumulator_bound(4, 7) == 15 * 7
    assert max_in_degree_int32(8, 8) == 33025
    assert max_in_degree_int32(8) == 8421504
    assert max_in_degree_int32(4, 4) == 9544371
    assert accumulator_bound(8, max_in_degree_int32(8, 8), 8) <= INT32_MAX
    assert accumulator_bound(8, max_in_degree_int32(8, 8) + 1, 8) > INT32_MAX
    with pytest.raises(ConfigError):
        accumulator_bound(0, 3)
    with pytest.raises(ConfigError):
        accumulator_bound(8, -1)


def _star(deg: int, c: int = 2):
    """``deg`` edges from node 1 into node 0 at the extreme 8-bit codes: |q_x - z_x| = |q_e - z_e| = 255."""
    ei = torch.stack([torch.ones(deg, dtype=torch.long), torch.zeros(deg, dtype=torch.long)])
    q_x = torch.full((2, c), 255, dtype=torch.uint8)
    q_e = torch.full((deg,), 255, dtype=torch.uint8)
    return q_x, ei, q_e


@pytest.mark.parametrize("deg,dtype", [(33025, torch.int32), (33026, torch.int64)])
def test_int64_fallback_exactly_when_int32_could_overflow(deg, dtype):
    q_x, ei, q_e = _star(deg)
    acc = integer_accumulate(q_x, 0, ei, 2, q_e, 0)
    assert acc.dtype == dtype
    assert acc[0].tolist() == [255 * 255 * deg] * 2 and acc[1].tolist() == [0, 0]
    out = integer_aggregate(q_x, 0.5, 0, ei, 2, q_e, 0.25, 0)
    torch.testing.assert_close(out[0].double(), torch.full((2,), 255.0 * 255 * deg * 0.125, dtype=torch.float64),
                               rtol=RTOL, atol=0.0)
    if dtype == torch.int64:
        assert 255 * 255 * deg > INT32_MAX  # an int32 index_add_ would have wrapped here
        with pytest.raises(ConfigError, match="overflow"):
            integer_accumulate(q_x, 0, ei, 2, q_e, 0, accum_dtype=torch.int32)


def test_bound_uses_the_codes_and_zero_points_not_only_the_degree():
    """Codes near their zero-point keep a high-degree node in int32; the unweighted 8-bit case reaches
    int64 only beyond 8.4 M in-edges."""
    deg = 40000  # beyond the static 8/8-bit int32 degree (33025)
    q_x, ei, q_e = _star(deg)
    acc = integer_accumulate(q_x, 250, ei, 2, q_e, 250)  # |q - z| = 5 everywhere
    assert acc.dtype == torch.int32 and acc[0].tolist() == [25 * deg] * 2
    acc = integer_accumulate(q_x, 0, ei, 2)  # unweighted: 255 · 40000 fits
    assert acc.dtype == torch.int32 and acc[0].tolist() == [255 * deg] * 2
    acc64 = integer_accumulate(q_x, 0, ei, 2, accum_dtype=torch.int64)
    assert acc64.dtype == torch.int64 and torch.equal(acc64, acc.long())


def test_random_graphs_int32_accumulator_equals_int64():
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        ei = random_graph(80, 2000, seed)
        q_x = torch.randint(-128, 128, (80, 5), generator=g, dtype=torch.int8)
        q_e = torch.randint(-128, 128, (ei.size(1),), generator=g, dtype=torch.int8)
        z = torch.randint(-128, 128, (5,), generator=g).float()
        a32 = integer_accumulate(q_x, z, ei, 80, q_e, -3)
        a64 = integer_accumulate(q_x, z, ei, 80, q_e, -3, accum_dtype=torch.int64)
        assert a32.dtype == torch.int32 and torch.equal(a32.long(), a64)
        np.testing.assert_array_equal(a64.numpy(), numpy_accumulator(q_x, z, ei, 80, q_e, torch.tensor(-3)))


# --------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------


def _ok():
    q_x = torch.randint(0, 16, (6, 3), dtype=torch.int8)
    ei = torch.tensor([[0, 1, 2, 5], [1, 2, 0, 0]])
    q_e = torch.randint(0, 16, (4,), dtype=torch.int8)
    return q_x, ei, q_e


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(q_x=a["q_x"].float()), "integer codes"),
        (lambda a: a.update(q_x=a["q_x"].bool()), "integer codes"),
        (lambda a: a.update(q_x=a["q_x"][:, 0]), "shape"),
        (lambda a: a.update(q_e=a["q_e"].float()), "integer codes"),
        (lambda a: a.update(q_e=a["q_e"][:3]), "one code per edge"),
        (lambda a: a.update(edge_index=torch.tensor([[0, 6], [1, 2]])), "sources"),
        (lambda a: a.update(edge_index=torch.tensor([[0, -1], [1, 2]])), "sources"),
        (lambda a: a.update(edge_index=torch.tensor([[0, 1], [1, 9]])), "targets"),
        (lambda a: a.update(edge_index=torch.tensor([0, 1, 2])), "shape"),
        (lambda a: a.update(edge_index=a["edge_index"].float()), "int64"),
        (lambda a: a.update(x_scale=torch.full((6, 1), 0.1)), "per tensor"),
        (lambda a: a.update(x_scale=torch.full((4,), 0.1)), "1 or 3 values"),
        (lambda a: a.update(x_scale=0.0), "positive"),
        (lambda a: a.update(x_scale=float("nan")), "positive"),
        (lambda a: a.update(x_zero_point=torch.tensor(0.5)), "integers"),
        (lambda a: a.update(e_scale=None), "e_scale"),
        (lambda a: a.update(e_scale=torch.full((3,), 0.1)), "one value"),
        (lambda a: a.update(e_zero_point=torch.tensor([1.0, 2.0])), "one value"),
        (lambda a: a.update(q_e=None, e_zero_point=None), "e_scale was given without q_e"),
        (lambda a: a.update(q_e=None, e_scale=None), "e_zero_point was given without q_e"),
        (lambda a: a.update(reduce="max"), "reduce"),
        (lambda a: a.update(num_nodes=-1), "num_nodes"),
        (lambda a: a.update(accum_dtype=torch.int16), "accum_dtype"),
    ],
)
def test_bad_inputs_raise_config_error(change, match):
    q_x, ei, q_e = _ok()
    args = dict(q_x=q_x, x_scale=0.1, x_zero_point=2, edge_index=ei, num_nodes=6, q_e=q_e, e_scale=0.2,
                e_zero_point=1)
    integer_aggregate(**args)  # the unchanged arguments are fine
    change(args)
    with pytest.raises(ConfigError, match=match):
        integer_aggregate(**args)
