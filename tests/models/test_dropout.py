"""sparse_input_dropout: F.dropout in distribution, drawing only at the non-zero features."""

import pytest
import torch
import torch.nn.functional as F

from qgnn.models.dropout import SPARSE_DENSITY, sparse_input_dropout


def _sparse(rows=400, cols=300, density=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=g) < density).float() * (torch.rand(rows, cols, generator=g) + 0.5)


def test_zeros_stay_zero_and_kept_entries_are_scaled_by_one_over_keep_probability():
    x, p = _sparse(), 0.4
    y = sparse_input_dropout(x, p)
    assert not ((y != 0) & (x == 0)).any()
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_the_kept_fraction_of_non_zeros_is_one_minus_p(p):
    x = _sparse(rows=2000, cols=500, density=0.02)  # ~20,000 non-zeros
    n = int((x != 0).sum())
    kept = int((sparse_input_dropout(x, p) != 0).sum())
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(kept - n * (1 - p)) < 5 * sigma


def test_the_output_is_unbiased_over_many_draws():
    x = _sparse(rows=50, cols=40, density=0.1)
    mean = torch.stack([sparse_input_dropout(x, 0.5) for _ in range(2000)]).mean(0)
    nz = x != 0
    # each entry's mean of 2000 draws of {0, 2x}: standard error x / sqrt(2000) ≈ 0.022 x
    assert ((mean[nz] - x[nz]).abs() / x[nz]).max() < 0.12
    assert (mean[~nz] == 0).all()


def test_evaluation_and_p_zero_return_the_input():
    x = _sparse()
    assert torch.equal(sparse_input_dropout(x, 0.5, training=False), x)
    assert torch.equal(sparse_input_dropout(x, 0.0), x)


def test_p_one_drops_everything():
    assert (sparse_input_dropout(_sparse(), 1.0) == 0).all()


def test_a_bad_probability_is_rejected_as_f_dropout_rejects_it():
    with pytest.raises(ValueError, match="probability"):
        sparse_input_dropout(_sparse(), 1.5)


@pytest.mark.parametrize("case", ["dense", "requires_grad"])
def test_dense_inputs_and_inputs_with_gradient_are_f_dropout_draw_for_draw(case):
    x = torch.rand(50, 30) + 0.1 if case == "dense" else _sparse().requires_grad_()
    torch.manual_seed(3)
    want = F.dropout(x, 0.5, True)
    torch.manual_seed(3)
    got = sparse_input_dropout(x, 0.5)
    assert torch.equal(got, want)
    if case == "requires_grad":
        got.sum().backward()
        assert x.grad is not None and (x.grad != 0).float().mean() > 0.3  # zeros get gradient too


def test_density_at_the_threshold_takes_the_dense_path():
    x = torch.zeros(100, 100)
    x.view(-1)[: int(SPARSE_DENSITY * x.numel())] = 1.0
    torch.manual_seed(1)
    want = F.dropout(x, 0.5, True)
    torch.manual_seed(1)
    assert torch.equal(sparse_input_dropout(x, 0.5), want)


def test_an_in_place_change_after_a_call_is_seen():
    x = _sparse(seed=1)
    sparse_input_dropout(x, 0.5)  # positions of x are now kept
    x.zero_()
    x[0, 0] = 3.0  # the only non-zero now
    outs = [sparse_input_dropout(x, 0.5) for _ in range(40)]
    assert all(((o != 0) & (x == 0)).sum() == 0 for o in outs)
    assert any(o[0, 0] == 6.0 for o in outs)


def test_another_tensor_gets_its_own_positions():
    a, b = _sparse(seed=1), _sparse(seed=2)
    sparse_input_dropout(a, 0.5)
    outs = [sparse_input_dropout(b, 0.3) for _ in range(5)]
    assert all(((o != 0) & (b == 0)).sum() == 0 for o in outs)
    assert min(int((o != 0).sum()) for o in outs) > 0.5 * int((b != 0).sum())


def test_empty_and_non_contiguous_inputs():
    assert sparse_input_dropout(torch.zeros(0, 7), 0.5).shape == (0, 7)
    x = _sparse().t()  # a transposed view: not contiguous
    y = sparse_input_dropout(x, 0.5)
    assert y.shape == x.shape and not ((y != 0) & (x == 0)).any()
    kept = y != 0
    torch.testing.assert_close(y[kept], 2 * x[kept])
