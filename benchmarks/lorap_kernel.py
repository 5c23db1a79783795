"""LoRAP prompt-injection kernel: fused Triton vs the plain-torch reference, forward + backward latency on a
CUDA device, after a parity check (no speedup is reported when the outputs or gradients disagree).

Needs a CUDA device and triton; without them it says so, writes nothing and exits 0.

    python benchmarks/lorap_kernel.py                      # shapes of Cora / ogbn-arxiv / ogbn-products layers
    python benchmarks/lorap_kernel.py --shapes 2708x16 169343x256 --k 40 --rank 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, update_section, write_json  # noqa: E402

DEFAULT_SHAPES = ["2708x16", "2708x1433", "169343x256", "2449029x256"]


def _time(fn, reps: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1000.0  # µs


def _latencies(backend: str, inputs, go, reps: int) -> dict:
    import torch

    from qgnn.kernels import lorap_inject

    plain = [t.detach() for t in inputs]

    def fwd():
        return lorap_inject(*plain, backend=backend)

    def fwd_bwd():
        return torch.autograd.grad(lorap_inject(*inputs, backend=backend), inputs, go)

    return {f"{backend}_fwd_us": _time(fwd, reps), f"{backend}_fwd_bwd_us": _time(fwd_bwd, reps)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="NxD of the aggregated features")
    p.add_argument("--k", type=int, default=40)
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args(argv)

    import torch

    from qgnn.kernels import lorap_backend, lorap_inject

    probe = torch.zeros(1, 1, device="cuda") if torch.cuda.is_available() else torch.zeros(1, 1)
    name, why = lorap_backend(probe)
    if name != "triton":
        print(f"lorap kernel benchmark skipped: {why}")
        return 0
    rows, out = [], []
    for shape in args.shapes:
        n, d = (int(v) for v in shape.lower().split("x"))
        g = torch.Generator(device="cuda").manual_seed(0)
        s, w_a, u, v = (torch.randn(*sh, device="cuda", generator=g).requires_grad_()
                        for sh in [(n, d), (args.k, d), (args.k, args.rank), (args.rank, d)])
        go = torch.randn(n, d, device="cuda", generator=g)
        res = {}
        for backend in ("reference", "triton"):
            o = lorap_inject(s, w_a, u, v, backend=backend)
            grads = torch.autograd.grad(o, (s, w_a, u, v), go)
            res[backend] = (o.detach(), [gr.detach() for gr in grads])
        ok = torch.allclose(res["triton"][0], res["reference"][0], rtol=1e-4, atol=1e-4) and all(
            torch.allclose(a, b, rtol=1e-3, atol=1e-3 * max(1.0, b.abs().max().item()))
            for a, b in zip(res["triton"][1], res["reference"][1], strict=True))
        entry = {"n": n, "d": d, "k": args.k, "rank": args.rank, "parity": ok}
        for backend in ("reference", "triton"):
            entry.update(_latencies(backend, (s, w_a, u, v), go, args.reps))
        out.append(entry)
        speed = (f"{entry['reference_fwd_us'] / entry['triton_fwd_us']:.2f}x / "
                 f"{entry['reference_fwd_bwd_us'] / entry['triton_fwd_bwd_us']:.2f}x") if ok else "parity FAILED"
        rows.append(f"| {n} x {d} | {entry['reference_fwd_us']:.1f} / {entry['reference_fwd_bwd_us']:.1f} | "
                    f"{entry['triton_fwd_us']:.1f} / {entry['triton_fwd_bwd_us']:.1f} | {speed} |")
        print(rows[-1], flush=True)
    device = torch.cuda.get_device_name(0)
    write_json("lorap-kernel", {"device": device, "results": out, "command": command_line()})
    update_section("lorap-kernel", f"## LoRAP kernel latency ({device}, k = {args.k}, r = {args.rank})\n\n"
                   "Forward / forward + backward in µs (CUDA events, mean of the repetitions); the speedup is "
                   "only given when the fused kernel matches the reference.\n\n"
                   "| N x d | reference | fused Triton | speedup (fwd / fwd+bwd) |\n|---|---|---|---|\n"
                   + "\n".join(rows) + f"\n\nCommand: `{command_line()}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
