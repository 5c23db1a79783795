"""Run by tests/kernels/test_kernels_lorap.py in a fresh process with TRITON_INTERPRET=1 (which must be set
before triton is first imported, and PyG imports triton as soon as it is imported itself): compares the fused
LoRAP kernel with the float64 reference on the shapes given as JSON in argv[1] and prints the errors as JSON."""

from __future__ import annotations

import json
import sys

import torch

from qgnn.kernels import lorap_inject, lorap_inject_reference


def _inputs(n, d, k, r, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).float().requires_grad_()
            for s in [(n, d), (k, d), (k, r), (r, d)]]


def compare(n, d, k, r):
    ts = _inputs(n, d, k, r, seed=n + d)
    ref64 = [t.detach().double().requires_grad_() for t in ts]
    out = lorap_inject(*ts, backend="triton")
    ref = lorap_inject_reference(*ref64)
    go = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, ts, go)
    grads_ref = torch.autograd.grad(ref, ref64, go.double())

    def err(a, b):  # max |a - b| / (1 + max |b|)
        return float((a.double() - b).abs().max()) / (1.0 + float(b.abs().max()))

    return {"dtype": str(out.dtype), "shape": list(out.shape), "out": err(out, ref),
            "grads": {name: err(a, b) for name, a, b in zip(("s", "w_a", "u", "v"), grads, grads_ref, strict=True)},
            "grad_shapes_ok": all(a.shape == b.shape for a, b in zip(grads, grads_ref, strict=True))}


def identity_checks():
    s, w_a, u, v = _inputs(37, 20, 6, 2, seed=0)
    with torch.no_grad():
        v.zero_()
    same = bool(torch.equal(lorap_inject(s, w_a, u, v, backend="triton"), s))
    empty = list(lorap_inject(torch.zeros(0, 20), w_a, u, v, backend="triton").shape)
    return {"zero_v_identity": same, "empty_shape": empty}


if __name__ == "__main__":
    shapes = json.loads(sys.argv[1])
    print(json.dumps({"shapes": {"x".join(map(str, s)): compare(*s) for s in shapes}, **identity_checks()}))
