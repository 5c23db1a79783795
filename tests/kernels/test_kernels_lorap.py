"""LoRAP prompt injection kernels: the reference against an independent float64 evaluation (forward and
gradients), the dispatcher's choice and reasons, and the fused Triton kernel against the reference on random
and awkward shapes, forward and backward (on CPU through TRITON_INTERPRET=1; skipped without triton)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qgnn.errors import ConfigError
from qgnn.kernels import lorap_backend, lorap_inject_reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'qgnn[triton]')")


def _inputs(n, d, k, r, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(n, d), (k, d), (k, r), (r, d)]
    return [(scale * torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype).requires_grad_() for s in shapes]


def _explicit(s, w_a, u, v):
    """Row by row, the k basis prompts formed explicitly: s_i + Σ_k softmax(W_a s_i)_k (U V)_k."""
    basis = u @ v  # [k, d]
    rows = []
    for i in range(s.size(0)):
        z = w_a @ s[i]
        a = torch.exp(z - z.max())
        rows.append(s[i] + (a / a.sum()) @ basis)
    return torch.stack(rows) if rows else s.clone()


@pytest.mark.parametrize("n,d,k,r", [(1, 5, 1, 1), (13, 7, 4, 3), (0, 6, 2, 2)])
def test_reference_matches_explicit_float64(n, d, k, r):
    ts = _inputs(n, d, k, r, dtype=torch.float64)
    out = lorap_inject_reference(*ts)
    ref = _explicit(*ts)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    if n:
        go = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, ts, go), torch.autograd.grad(ref, ts, go), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_zero_v_is_an_exact_identity():
    s, w_a, u, v = _inputs(9, 6, 5, 2)
    with torch.no_grad():
        v.zero_()
    assert torch.equal(lorap_inject_reference(s, w_a, u, v), s)


def test_reference_checks_shapes():
    s, w_a, u, v = _inputs(4, 6, 5, 2)
    with pytest.raises(ConfigError, match="shapes"):
        lorap_inject_reference(s, w_a[:, :5], u, v)
    with pytest.raises(ConfigError, match="2-D"):
        lorap_inject_reference(s[0], w_a, u, v)


def test_dispatcher_picks_reference_on_cpu_and_says_why():
    s = torch.zeros(2, 3)
    name, why = lorap_backend(s)
    assert name == "reference" and "cpu" in why
    assert lorap_backend(s, "reference") == ("reference", "requested")
    with pytest.raises(ConfigError, match="unknown lorap backend"):
        lorap_backend(s, "cuda-graphs")


def test_dispatcher_looks_for_triton_once(monkeypatch):
    """The dispatcher runs on every prompted layer's forward; searching sys.path for triton each time cost
    about 0.1 ms a call, as much as the fused kernel itself."""
    from qgnn.kernels import lorap as dispatch

    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: calls.append(name) or real(name, *a))
    dispatch._have_triton.cache_clear()
    try:
        for _ in range(3):
            with contextlib.suppress(ConfigError):
                lorap_backend(torch.zeros(2, 3), "triton")
        assert calls.count("triton") == 1
    finally:
        dispatch._have_triton.cache_clear()


def test_dispatcher_refuses_triton_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="triton"):
        lorap_backend(torch.zeros(2, 3), "triton")


# 1 row, sizes that are not multiples of any block (BLOCK_N 32, BLOCK_D <= 64, k / r padded to 16), k = 1,
# r > k, d above one d-tile, many row blocks.
SHAPES = [(1, 1, 1, 1), (1, 7, 1, 1), (33, 70, 40, 2), (5, 16, 3, 5), (65, 130, 17, 1), (100, 16, 1, 2)]


@pytest.fixture(scope="module")
def triton_results():
    """One fresh interpreter process for all shapes: TRITON_INTERPRET must be set before triton's first import,
    and this process may have imported triton already (PyG does when it is installed)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("lorap_triton_worker.py")
    r = subprocess.run([sys.executable, str(worker), json.dumps(SHAPES)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_reference_forward_and_backward(triton_results, shape):
    res = triton_results["shapes"]["x".join(map(str, shape))]
    assert res["dtype"] == "torch.float32" and res["shape"] == [shape[0], shape[1]]
    assert res["out"] < 1e-5, res
    assert res["grad_shapes_ok"]
    for name, err in res["grads"].items():
        assert err < 1e-4, (name, res)


@needs_triton
def test_triton_zero_v_is_identity_and_empty_input_works(triton_results):
    assert triton_results["zero_v_identity"] is True
    assert triton_results["empty_shape"] == [0, 20]
