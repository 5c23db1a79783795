"""The integer runtime against FP32 PyG: latency, peak memory and the physical limit (one thread, CPU).

Part ``scale`` (section ``runtime-scale``): GCN and SAGE 128 -> 256 -> 40 trained with QAT at 8 and 4 bits
on ``sbm-100k`` (full batch, one seed; cached under runs/runtime-bench/), exported, and run on ``sbm-1m``
(1M nodes, 10M edges, the same generator and classes) by

* the packed integer runtime (``IntModel.prepare`` at load: graph plan and the features encoded as the first
  layer's codes, the float features freed; ``IntModel.run`` per forward), and
* its FP32 PyG twin (``qgnn.export.fp32_reference``: the same weights dequantized, PyG layers on a
  ``torch.sparse_csr`` ``adj_t`` built at load, GCN's normalisation included).

Latency: the median of ``--repeats`` alternating forwards of each, in one process (``speedup`` = FP32 /
runtime). Peak memory: the largest RSS growth during one forward, over the RSS once model and graph are
loaded, each side in a fresh process (``memory_ratio`` = runtime / FP32). Both sides hold the features in
RAM at load (the dataset's memory-mapped file is read into memory first), the runtime as codes.
Physical limit: the bytes each forward must move (:func:`bytes_fp32`, :func:`bytes_runtime`: tables read and
written, neighbour rows gathered, CSR arrays) over the copy bandwidth measured in the same process.

Part ``small`` (section ``runtime-small``): ``qgnn eval --fp32-reference`` on Cora and CiteSeer (GCN, GAT,
GIN, SAGE, QAT 8 and 4) and MUTAG / REDDIT-BINARY (GIN): latency and peak of both sides, measured by that
command in a fresh process per case, ``--rounds`` times (default 3); each side's median latency and median
peak over the rounds, and the median over the rounds of each round's ratios, both sides of a round measured
in one process (``--repeats`` passes per round; use 30: a pass of a few milliseconds varies by 10-20 % between
processes).

Parts ``scale`` and ``small`` write their results per CPU kind (:func:`cpu_name`): ``runtime-scale`` /
``runtime-small`` where fbgemm's GEMM is exact on full-range codes (AVX512-VNNI), ``runtime-scale-no-vnni`` /
``runtime-small-no-vnni`` elsewhere, where the runtime's 8-bit GEMMs take the exact float path; each JSON names
its CPU (:func:`cpu_info`).

Part ``kernels``: the kernels alone against their FP32 counterparts on sbm-1m's graph.

Part ``gemm`` (section ``runtime-gemm``): the two integer GEMM backends (fbgemm, ``torch._int_mm``) per shape
the runtime meets (the layers' (K, O), chunks of 64 to 16,384 rows), codes or float32 out, against FP32
``F.linear``: the measurement behind the dispatcher's rule (:func:`qgnn.kernels.intops.linear_backend`).

    OMP_NUM_THREADS=1 python benchmarks/runtime.py --part scale
    OMP_NUM_THREADS=1 python benchmarks/runtime.py --part small --repeats 30
    OMP_NUM_THREADS=1 python benchmarks/runtime.py --part kernels
    OMP_NUM_THREADS=1 python benchmarks/runtime.py --part gemm --repeats 20
    python benchmarks/runtime.py --render
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS_DIR, ROOT, command_line, update_section, write_json  # noqa: E402

RUNS = ROOT / "runs" / "runtime-bench"
SCALE_CASES = [("gcn", 8), ("gcn", 4), ("sage", 8), ("sage", 4)]
TRAIN = {"dataset": "sbm-100k", "hidden": 256, "epochs": 20, "seeds": 1}
SMALL_CASES = [(d, m, b) for d in ("Cora", "CiteSeer") for m in ("gcn", "gat", "gin", "sage") for b in (8, 4)] + [
    ("MUTAG", "gin", 8), ("MUTAG", "gin", 4), ("REDDIT-BINARY", "gin", 8), ("REDDIT-BINARY", "gin", 4)]
GRAPH_TRAIN = {"MUTAG": {"epochs": 100, "folds": 1}, "REDDIT-BINARY": {"epochs": 10, "folds": 1}}


def model_file(dataset: str, model: str, bits: int, over: dict | None = None, method: str = "qat") -> Path:
    """Train (once; cached) and export a QAT model; the export file's path."""
    from qgnn.export import export_checkpoint
    from qgnn.train import TrainConfig, run_experiment

    over = dict(over or {})
    tag = f"{dataset.lower()}-{model}-{method}{bits}" + (f"-h{over['hidden']}" if "hidden" in over else "")
    ckpt, out = RUNS / f"{tag}.ckpt", RUNS / f"{tag}.qgnn.safetensors"
    if not out.exists():
        RUNS.mkdir(parents=True, exist_ok=True)
        if not ckpt.exists():
            over.setdefault("seeds", 1)
            cfg = TrainConfig(dataset=dataset, model=model, method=method, bits=bits, **over)
            # resume: a benchmark stopped during training continues it (training resumes to the same result)
            run_experiment(cfg, out=RUNS / f"{tag}.json", save=ckpt, progress=False, resume=True)
        export_checkpoint(ckpt, out)
    return out


# --------------------------------------------------------------------------------------------------
# bytes moved per forward (the physical limit)
# --------------------------------------------------------------------------------------------------


def _row_bytes(c: int, bits: int, fields: bool = True) -> int:
    from qgnn.kernels.reference.rowwise import row_bytes

    return row_bytes(c, bits, fields)


def bytes_fp32(kind: str, n: int, nnz: int, dims: list[int]) -> int:
    """DRAM bytes of one FP32 PyG forward: each layer's inputs read and outputs written once, the
    neighbour rows gathered once per CSR entry (4 bytes a value), the CSR (int64 columns, float values)."""
    total = 0
    for i, (k, o) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        if kind == "gcn":
            total += 4 * n * k + 4 * n * o  # X·W
            total += 4 * nnz * o + 12 * nnz + 8 * n + 4 * n * o  # spmm over adj_t (self loops included)
        else:  # sage: mean of x, then lin_l(agg) + lin_r(x)
            total += 4 * nnz * k + 8 * nnz + 8 * n + 4 * n * k
            total += 2 * (4 * n * k + 4 * n * o) + 12 * n * o
        if not last:
            total += 8 * n * o  # activation
    return total


def bytes_runtime(model, n: int, nnz: int) -> int:
    """DRAM bytes of one packed-runtime forward: tables at their stored width (qgnn.export.packed)."""
    from qgnn.export.packed_ops import PackedGCN
    from qgnn.export.tables import _bits_for

    layers = model.packed.layers
    total = 0
    for i, layer in enumerate(layers):
        c = layer.conv
        q = layer.input
        k = c.weight.shape[1] if hasattr(c, "weight") else None
        o = c.weight.shape[0]
        bin_ = _bits_for(q.span)
        in_row = _row_bytes(k, bin_, layer.input_fields)
        last = i == len(layers) - 1
        out_row = 4 * o if last else _row_bytes(o, _bits_for(layers[i + 1].input.span), layers[i + 1].input_fields)
        if isinstance(layer, PackedGCN):
            h_row = _row_bytes(o, _bits_for(layer.xw.span))
            total += n * in_row + n * h_row  # GEMM: codes in, codes out
            total += nnz * h_row + 8 * nnz + 4 * n + n * out_row  # gather, int32 index + float coefficient
        else:
            total += nnz * in_row + 4 * nnz + 4 * n  # gather of the input rows
            total += n * in_row + n * out_row  # root GEMM reads the codes; the output table
    return total


def copy_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write), the memory system's practical limit."""
    import torch

    a = torch.ones(mb << 20, dtype=torch.uint8)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t)
    return 2 * a.numel() / statistics.median(times)


# --------------------------------------------------------------------------------------------------
# part scale: children in fresh processes
# --------------------------------------------------------------------------------------------------


def _load_graph(dataset: str):
    """(x in RAM, edge_index, y, test mask) of a node dataset."""
    from qgnn.data.registry import load_dataset

    ds = load_dataset(dataset)
    d = ds.data
    return d.x.clone(), d.edge_index, d.y, d.test_mask


def fp32_matmul(ref, x, graph):
    """The FP32 twin with PyG's aggregation replaced by torch's plain CSR product ``adj_t @ h`` (MKL's sparse
    kernel; PyG calls ``torch.sparse.mm(adj_t, h, reduce)``, a slower kernel): the fastest FP32 path found
    here, reported beside PyG's for honesty. GCN and SAGE node stacks."""
    import warnings

    from torch_geometric.nn import GCNConv, SAGEConv

    h = x
    last = len(ref.convs) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (conv, key) in enumerate(zip(ref.convs, ref.conv_forms, strict=True)):
            adj = graph[key]
            if isinstance(conv, GCNConv):
                h = adj @ conv.lin(h)
                if conv.bias is not None:
                    h += conv.bias
            elif isinstance(conv, SAGEConv):
                ptr = adj.crow_indices()
                deg = (ptr[1:] - ptr[:-1]).clamp_(min=1).to(h.dtype).view(-1, 1)
                out = conv.lin_l((adj @ h).div_(deg))
                if conv.root_weight:
                    out += conv.lin_r(h)
                h = out
            else:
                raise ValueError(f"fp32_matmul runs GCN and SAGE stacks, not {type(conv).__name__}")
            if i < last:
                h = ref.act(h)
    return h


def child_time(path: str, dataset: str, repeats: int) -> dict:
    import torch

    from qgnn.export.fp32_reference import from_file
    from qgnn.export.runtime import load_int_model

    x, ei, y, test = _load_graph(dataset)
    n = x.size(0)
    im = load_int_model(path)
    t0 = time.perf_counter()
    prepared = im.prepare(x, ei)
    load_runtime = time.perf_counter() - t0
    ref = from_file(path)
    t0 = time.perf_counter()
    graph = ref.graph(ei, n)
    load_fp32 = time.perf_counter() - t0
    with torch.no_grad():
        out_i = im.run(prepared)
        out_f = ref(x, graph)
        out_m = fp32_matmul(ref, x, graph)
        ti, tf, tm = [], [], []
        for _ in range(repeats):  # alternate, so drift hits all alike
            t = time.perf_counter()
            im.run(prepared)
            ti.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref(x, graph)
            tf.append(time.perf_counter() - t)
            t = time.perf_counter()
            fp32_matmul(ref, x, graph)
            tm.append(time.perf_counter() - t)
    bw = copy_bandwidth()
    kind = im.desc["config"]["model"]
    dims = [im.desc["num_features"], *[c.weight.shape[0] for c in im.convs]]
    nnz = int(prepared["plans"][next(iter(prepared["plans"]))].indices.numel())
    nnz_fp32 = nnz if kind == "gcn" else int(ei.size(1))
    b_rt, b_fp = bytes_runtime(im, n, nnz), bytes_fp32(kind, n, nnz_fp32, dims)
    pi, pf = out_i.argmax(1), out_f.argmax(1)
    r = {"runtime_ms": statistics.median(ti) * 1e3, "fp32_ms": statistics.median(tf) * 1e3,
         "runtime_runs_ms": [t * 1e3 for t in ti], "fp32_runs_ms": [t * 1e3 for t in tf],
         "load_runtime_s": load_runtime, "load_fp32_s": load_fp32, "copy_bandwidth_gbs": bw / 1e9,
         "bytes_runtime": b_rt, "bytes_fp32": b_fp,
         "accuracy_runtime": float((pi[test] == y[test]).float().mean()),
         "accuracy_fp32": float((pf[test] == y[test]).float().mean()),
         "agreement": float((pi == pf).float().mean()), "fp32_matmul_ms": statistics.median(tm) * 1e3,
         "fp32_matmul_runs_ms": [t * 1e3 for t in tm],
         "fp32_matmul_max_diff": float((out_m - out_f).abs().max()), "nodes": n, "edges": int(ei.size(1)), "nnz": nnz,
         "paths": sorted(set(im.paths.values()))}
    r["speedup"] = r["fp32_ms"] / r["runtime_ms"]
    r["speedup_vs_matmul"] = r["fp32_matmul_ms"] / r["runtime_ms"]
    r["limit_runtime_ms"] = b_rt / bw * 1e3
    r["limit_fp32_ms"] = b_fp / bw * 1e3
    r["runtime_over_limit"] = r["runtime_ms"] / r["limit_runtime_ms"]
    r["fp32_over_limit"] = r["fp32_ms"] / r["limit_fp32_ms"]
    return r


def child_peak(path: str, dataset: str, side: str) -> dict:
    import torch

    from qgnn.export.measure import peak_memory, rss_bytes

    x, ei, _, _ = _load_graph(dataset)
    n = x.size(0)
    if side == "runtime":
        from qgnn.export.runtime import load_int_model

        im = load_int_model(path)
        prepared = im.prepare(x, ei)
        del x  # a deployment keeps the codes (prepared["x"]) and frees the float features
        gc.collect()

        def fn():
            return im.run(prepared)
        held = prepared["x"].nbytes() + sum(p.nbytes() for p in prepared["plans"].values())
    else:
        from qgnn.export.fp32_reference import from_file

        ref = from_file(path)
        graph = ref.graph(ei, n)

        def fn():
            with torch.no_grad():
                return ref(x, graph)
        held = x.numel() * 4 + graph.nbytes()
    gc.collect()
    base = rss_bytes()
    peak = peak_memory(fn)
    return {"peak_bytes": peak, "rss_loaded_bytes": base, "held_bytes": held}


def _child(args_list: list[str], timeout: int = 3600) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, __file__, *args_list], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"child {' '.join(args_list)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def part_scale(args) -> dict:
    cases = [c for c in SCALE_CASES if c[0] in args.models and c[1] in args.bits]
    name = cpu_name("runtime-scale")
    prior = _read(name)
    rows = {r["case"]: r for r in prior.get("rows", [])}
    for model, bits in cases:
        path = model_file(TRAIN["dataset"], model, bits, {k: v for k, v in TRAIN.items() if k != "dataset"})
        case = f"{model}-qat{bits}"
        print(f"[scale] {case}: timing on {args.dataset}", flush=True)
        r = {"case": case, "model": model, "bits": bits, "file": str(path.relative_to(ROOT)),
             "dataset": args.dataset, "trained_on": TRAIN, "command": command_line()}
        r.update(_child(["--child", "time", str(path), args.dataset, str(args.repeats)]))
        for side in ("runtime", "fp32"):
            print(f"[scale] {case}: peak memory ({side}, fresh process)", flush=True)
            r[f"peak_{side}"] = _child(["--child", "peak", str(path), args.dataset, side])
        r["memory_ratio"] = r["peak_runtime"]["peak_bytes"] / max(1, r["peak_fp32"]["peak_bytes"])
        rows[case] = r
        print(f"[scale] {case}: {r['runtime_ms']:.0f} ms vs FP32 {r['fp32_ms']:.0f} ms ({r['speedup']:.2f}x), "
              f"peak {r['peak_runtime']['peak_bytes'] / 2**20:.0f} vs {r['peak_fp32']['peak_bytes'] / 2**20:.0f} MiB "
              f"({r['memory_ratio']:.3f})", flush=True)
        out = {"command": command_line(), "cpu": cpu_info(), "rows": list(rows.values())}
        write_json(name, out)
    return out


def eval_child(path: Path, repeats: int) -> dict:
    """``qgnn eval PATH --fp32-reference --repeats R --out F`` in a fresh process (the user's command; and a
    process of its own because the peak measurement changes glibc's malloc thresholds, which slows every
    allocation after it): the JSON it writes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        r = subprocess.run([sys.executable, "-m", "qgnn", "eval", str(path), "--fp32-reference", "--repeats",
                            str(repeats), "--out", str(out)], capture_output=True, text=True, env=env, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"qgnn eval {path} failed:\n{r.stderr[-3000:]}")
        return json.loads(out.read_text())


def median_rounds(runs: list[dict]) -> dict:
    """One row from several ``qgnn eval --fp32-reference`` results of a case (fresh processes): each side's
    median latency and median peak, every round's figures (``rounds``), and the ratios (:func:`round_ratios`)."""
    med = statistics.median
    r = dict(runs[0])
    r["fp32"] = dict(r["fp32"])
    r["latency_ms"] = med(x["latency_ms"] for x in runs)
    r["peak_memory_bytes"] = med(x["peak_memory_bytes"] for x in runs)
    r["fp32"]["latency_ms"] = med(x["fp32"]["latency_ms"] for x in runs)
    r["fp32"]["peak_memory_bytes"] = med(x["fp32"]["peak_memory_bytes"] for x in runs)
    r["rounds"] = [{"latency_ms": x["latency_ms"], "fp32_latency_ms": x["fp32"]["latency_ms"],
                    "peak_memory_bytes": x["peak_memory_bytes"],
                    "fp32_peak_memory_bytes": x["fp32"]["peak_memory_bytes"]} for x in runs]
    return {**r, **round_ratios(r["rounds"])}


def round_ratios(rounds: list[dict]) -> dict:
    """``speedup`` (FP32 latency / runtime latency) and ``memory_ratio`` (runtime peak / FP32 peak): the median
    over the rounds of each round's ratio, both sides of a round measured in one process (the machine's load
    moves between processes, so a ratio of medians taken over different processes mixes their loads)."""
    med = statistics.median
    return {"speedup": med(x["fp32_latency_ms"] / x["latency_ms"] for x in rounds),
            "memory_ratio": med(x["peak_memory_bytes"] / max(1, x["fp32_peak_memory_bytes"]) for x in rounds)}


def cpu_info() -> dict:
    """The CPU's model name and whether it has AVX512-VNNI, and whether fbgemm's GEMM is exact on full-range codes
    here (its kernels without VNNI saturate int16 pair sums, so the runtime's 8-bit GEMMs take another path)."""
    from qgnn.kernels.cpu.fbgemm import fbgemm_linear_exact

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "avx512_vnni": "avx512_vnni" in flags, "avx2": "avx2" in flags,
            "fbgemm_full_range_exact": fbgemm_linear_exact()[0]}


def cpu_name(base: str) -> str:
    """The results of this CPU kind: ``base`` where fbgemm is exact on full-range codes (AVX512-VNNI),
    ``base-no-vnni`` elsewhere (8-bit GEMMs on the exact float path)."""
    from qgnn.kernels.cpu.fbgemm import fbgemm_linear_exact

    return base if fbgemm_linear_exact()[0] else f"{base}-no-vnni"


def cpu_line(cpu: dict | None) -> list[str]:
    """The table's CPU note (none for results written before the CPU was recorded)."""
    if not cpu:
        return []
    return ["", f"CPU: {cpu['model']}, AVX512-VNNI {'yes' if cpu['avx512_vnni'] else 'no'}, fbgemm's GEMM exact on "
            f"full-range codes {'yes' if cpu['fbgemm_full_range_exact'] else 'no'} (where not, 8-bit GEMMs run as "
            "exact float32 GEMMs on the centred codes, 4-bit ones on fbgemm)."]


def part_small(args) -> dict:
    name = cpu_name("runtime-small")
    prior = _read(name)
    rows = {r["case"]: r for r in prior.get("rows", [])}
    for dataset, model, bits in SMALL_CASES:
        case = f"{dataset.lower()}-{model}-qat{bits}"
        if args.datasets and dataset.lower() not in [d.lower() for d in args.datasets]:
            continue
        if args.cases and not any(case.startswith(c.lower()) for c in args.cases):
            continue
        path = model_file(dataset, model, bits, GRAPH_TRAIN.get(dataset))
        print(f"[small] {case}", flush=True)
        r = median_rounds([eval_child(path, args.repeats) for _ in range(args.rounds)])
        r = {**r, "slot_bits": r.get("bits"), "case": case, "dataset": dataset, "model": model, "bits": bits}
        rows[case] = r
        # the command that runs every case (a --datasets / --cases run updates its rows and keeps the others)
        command = command_line().replace(f" --datasets {' '.join(args.datasets or [])}", "").replace(
            f" --cases {' '.join(args.cases or [])}", "")
        write_json(name, {"command": command, "cpu": cpu_info(), "rows": list(rows.values())})
    return {"rows": list(rows.values())}


def median_seconds(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``fn`` after one untimed call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


GEMM_SHAPES = [(7, 64), (64, 64), (128, 256), (256, 256), (256, 40), (1433, 16), (3703, 16)]  # (K, O) met
GEMM_ROWS = (64, 256, 1024, 4096, 16384)  # M: the runtime's chunk sizes (tables.row_chunk / target_chunk)


def part_gemm(args) -> dict:
    """The two integer GEMM backends per shape (codes in; codes of the next grid or float32 out) against
    FP32 ``F.linear``: which one a measured, per-shape choice would take."""
    import torch
    import torch.nn.functional as F

    from qgnn.kernels.intops import PreparedLinear, qlinear

    gen = torch.Generator().manual_seed(0)
    med = functools.partial(median_seconds, repeats=max(args.repeats, 5))

    rows = []
    for k, o in GEMM_SHAPES:
        lin = PreparedLinear(torch.randint(-128, 128, (o, k), generator=gen, dtype=torch.int8), torch.zeros(()),
                             torch.full((), 0.01), torch.randn(o, generator=gen))
        wf = torch.randn(o, k, generator=gen)
        for m in GEMM_ROWS:
            u = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.uint8)
            xf = torch.randn(m, k, generator=gen)
            row = {"m": m, "k": k, "o": o, "fp32_ms": med(lambda xf=xf, wf=wf: F.linear(xf, wf)) * 1e3}
            for out, grid in (("codes", (0.05, 7, 255)), ("float", None)):
                for be in ("fbgemm", "int_mm"):
                    fn = functools.partial(qlinear, u, 3, 0.02, lin, grid, be)
                    row[f"{be}_{out}_ms"] = med(fn) * 1e3
                row[f"faster_{out}"] = min(("fbgemm", "int_mm"), key=lambda be, out=out: row[f"{be}_{out}_ms"])
            rows.append(row)
            print({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()}, flush=True)
    out = {"command": command_line(), "rows": rows}
    write_json("runtime-gemm", out)
    return out


def part_kernels(args) -> dict:
    import warnings

    import torch
    import torch.nn.functional as F

    from qgnn.data.registry import load_dataset
    from qgnn.kernels.intops import PreparedLinear, qlinear, rowwise_aggregate
    from qgnn.kernels.reference.rowwise import pack_rows
    from qgnn.nn.graph import by_target

    d = load_dataset(args.dataset).data
    n = d.num_nodes
    ptr, src, _, _ = by_target(d.edge_index[0], d.edge_index[1], None, n)
    w = torch.rand(src.numel(), generator=torch.Generator().manual_seed(0))
    warnings.simplefilter("ignore")
    adj = torch.sparse_csr_tensor(ptr, src, w, (n, n))
    ptr32, src32 = ptr.to(torch.int32), src.to(torch.int32)

    med = functools.partial(median_seconds, repeats=args.repeats)

    rows = []
    gen = torch.Generator().manual_seed(0)
    for c in (40, 128, 256):
        x = torch.randn(n, c, generator=gen)
        t_fp = med(lambda x=x: adj @ x)
        row = {"op": "aggregate", "channels": c, "fp32_csr_ms": t_fp * 1e3}
        for bits in (8, 4, 2):
            u = torch.randint(0, 1 << bits, (n, c), generator=gen, dtype=torch.uint8)
            rows_t = pack_rows(u, bits, 1.0, -3.0)
            del u
            t = med(lambda r=rows_t, b=bits, c=c: rowwise_aggregate(r, b, c, ptr32, src32, w))
            row[f"int{bits}_ms"] = t * 1e3
            row[f"int{bits}_ratio"] = t / t_fp
            del rows_t
        rows.append(row)
        del x
        print(row, flush=True)
    for m, k, o in ((262144, 128, 256), (262144, 256, 40)):
        xf = torch.randn(m, k, generator=gen)
        wf = torch.randn(o, k, generator=gen)
        t_fp = med(lambda xf=xf, wf=wf: F.linear(xf, wf))
        u = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.uint8)
        lin = PreparedLinear(torch.randint(-128, 128, (o, k), generator=gen, dtype=torch.int8), torch.zeros(()),
                             torch.full((), 0.01), None)
        row = {"op": "linear", "shape": [m, k, o], "fp32_ms": t_fp * 1e3}
        for be in ("fbgemm", "int_mm"):
            t = med(lambda be=be, u=u, lin=lin: qlinear(u, 3, 0.02, lin, (0.05, 7, 255), backend=be))
            row[f"{be}_ms"], row[f"{be}_ratio"] = t * 1e3, t / t_fp
        rows.append(row)
        print(row, flush=True)
    out = {"command": command_line(), "dataset": args.dataset, "rows": rows}
    write_json("runtime-kernels", out)
    return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def _read(name: str) -> dict:
    p = RESULTS_DIR / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def render() -> None:
    for name, title in (("runtime-scale", ""), ("runtime-scale-no-vnni", ", on a CPU without AVX512-VNNI")):
        scale = _read(name)
        if scale:
            update_section(name, scale_table(scale, title))
    _render_rest()


def scale_table(scale: dict, title: str) -> str:
    """The sbm-1m table (section ``runtime-scale`` or its CPU twin) from its JSON."""
    commands = list(dict.fromkeys(r.get("command", scale["command"]) for r in scale["rows"]))
    lines = [f"## The integer runtime on a million nodes{title}", "",
             "| model | latency s: PyG FP32 / FP32 `adj_t @ h` / runtime | speedup vs PyG (vs `adj_t @ h`) | "
             "peak MiB FP32 → runtime (ratio) | runtime / its limit | accuracy FP32 twin / runtime | target |",
             "|---|---|---|---|---|---|---|"]
    for r in scale["rows"]:
        pf, pr = r["peak_fp32"]["peak_bytes"] / 2**20, r["peak_runtime"]["peak_bytes"] / 2**20
        tgt = ">= 2x faster, peak <= 0.4x" if r["bits"] == 8 else "peak <= 0.25x, not slower than INT8"
        lines.append(
            f"| {r['model'].upper()} QAT {r['bits']} | {r['fp32_ms'] / 1e3:.2f} / "
            f"{r['fp32_matmul_ms'] / 1e3:.2f} / "
            f"{r['runtime_ms'] / 1e3:.2f} | {r['speedup']:.2f}x ({r['speedup_vs_matmul']:.2f}x) | "
            f"{pf:,.0f} → {pr:,.0f} ({r['memory_ratio']:.3f}) | {r['runtime_over_limit']:.1f}x "
            f"({r['limit_runtime_ms'] / 1e3:.2f} s) | {100 * r['accuracy_fp32']:.2f} / "
            f"{100 * r['accuracy_runtime']:.2f} | {tgt} |")
    r0 = scale["rows"][0]
    lines += ["", f"sbm-1m ({r0['nodes']:,} nodes, {r0['edges']:,} edges), 128 → 256 → 40, one thread; models "
              "trained on sbm-100k (QAT, full batch, 20 epochs, one seed), the FP32 side their dequantized "
              f"weights. Copy bandwidth {r0['copy_bandwidth_gbs']:.1f} GB/s; the limit is the bytes a forward "
              "moves over it (FP32 PyG's own limit: "
              + ", ".join(f"{r['model'].upper()} {r['limit_fp32_ms'] / 1e3:.2f} s" for r in scale["rows"]
                          if r["bits"] == 8)
              + "). The runtime's features are encoded at load as the first layer's codes and the float copy "
              "freed; FP32 holds them as float32. Command" + ("s" if len(commands) > 1 else "") + ": "
              + "; ".join(f"`{c}`" for c in commands) + "."]
    return "\n".join(lines + cpu_line(scale.get("cpu")))


def _render_rest() -> None:
    gemm = _read("runtime-gemm")
    if gemm:
        lines = ["## The integer GEMM backends per shape", "",
                 "| rows x K -> O | FP32 `F.linear` ms | codes out: fbgemm / int_mm ms | float out: fbgemm / int_mm ms "
                 "| faster (codes / float) |", "|---|---|---|---|---|"]
        for r in gemm["rows"]:
            lines.append(f"| {r['m']:,} x {r['k']:,} -> {r['o']} | {r['fp32_ms']:.3f} | {r['fbgemm_codes_ms']:.3f} / "
                         f"{r['int_mm_codes_ms']:.3f} | {r['fbgemm_float_ms']:.3f} / {r['int_mm_float_ms']:.3f} | "
                         f"{r['faster_codes']} / {r['faster_float']} |")
        lines += ["", "Codes in (uint8, one scale), one thread, median of the passes; the weights int8 per tensor. "
                  "Codes out: the next layer's grid, fbgemm's requantisation fused. Float out: fbgemm's kernel "
                  "takes float input, so its path dequantizes the codes first, where `torch._int_mm` reads them. "
                  "The dispatcher (`qgnn.kernels.intops`) keeps fbgemm for codes out (it wins or ties at every "
                  "shape here, and a timing-dependent choice between two requantisations that round exact ties "
                  "differently would make predictions vary between runs), and measures both per shape on first "
                  "use for float out (`ShapeChoice`: rows rounded up to a power of two, K, O). Command: "
                  f"`{gemm['command']}`."]
        update_section("runtime-gemm", "\n".join(lines))
    for name, title in (("runtime-small", ""), ("runtime-small-no-vnni", ", on a CPU without AVX512-VNNI")):
        small = _read(name)
        if small:
            update_section(name, small_table(small, title))


def small_table(small: dict, title: str) -> str:
    """The small-graph table (section ``runtime-small`` or its CPU twin) from its JSON."""
    cpu = small.get("cpu")
    counts: dict[int, list[str]] = {}  # rounds -> cases
    for r in small["rows"]:
        counts.setdefault(len(r.get("rounds", [])) or 1, []).append(r["case"])
    common = max(counts, key=lambda n: len(counts[n]))
    rounds = "; ".join([str(common)] + [f"{n} for {', '.join(cases)}" for n, cases in sorted(counts.items())
                                        if n != common])
    lines = [f"## The integer runtime against FP32 PyG on Planetoid and TU{title}", "",
             "| dataset | model | bits | accuracy FP32 twin / runtime | latency ms FP32 → runtime (speedup) | "
             "peak MiB FP32 → runtime (ratio) |", "|---|---|---|---|---|---|"]
    for r in small["rows"]:
        f = r["fp32"]
        bits = int(r["case"].rsplit("qat", 1)[1])  # the case's width (older rows: the slot table)
        ratio = "n/a" if r.get("memory_ratio") is None else f"{r['memory_ratio']:.2f}"
        lines.append(f"| {r['dataset']} | {r['model'].upper()} | {bits} | {100 * f['accuracy']:.1f} / "
                     f"{100 * r['accuracy']:.1f} | {f['latency_ms']:.2f} → {r['latency_ms']:.2f} "
                     f"({r['speedup']:.2f}x) | {f['peak_memory_bytes'] / 2**20:.2f} → "
                     f"{r['peak_memory_bytes'] / 2**20:.2f} ({ratio}) |")
    lines += ["", "QAT models trained with each dataset's recipe (one seed; MUTAG 100 epochs, REDDIT-BINARY 10, "
              "one fold), exported, and run by `qgnn eval MODEL --fp32-reference`: the FP32 twin is the same "
              "weights dequantized in PyG FP32 layers on a CSR `adj_t` (no activation quantization, hence its "
              "accuracy); "
              "latency is the median of the passes after the load step (graph plans, features encoded; for "
              "graph tasks once per batch, as the FP32 twin builds each batch's `adj_t` once), one "
              "thread; peak the RSS growth of a pass (median of up to 5). Each side's figures are the medians "
              f"over fresh processes (`--rounds`: {rounds}), the "
              "ratios the medians of each round's ratios (both sides of a round run in one process). Graph "
              "tasks: the "
              f"selected fold's test graphs in batches of the recipe's size. Command: `{small['command']}`."]
    return "\n".join(lines + cpu_line(cpu))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("scale", "small", "kernels", "gemm"))
    p.add_argument("--dataset", default="sbm-1m")
    p.add_argument("--datasets", nargs="*", default=None, help="part small: only these datasets")
    p.add_argument("--cases", nargs="*", default=None,
                   help="part small: only the cases whose name starts with one of these (e.g. cora-gin mutag)")
    p.add_argument("--models", nargs="*", default=["gcn", "sage"])
    p.add_argument("--bits", nargs="*", type=int, default=[8, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="part small: fresh `qgnn eval` processes per case, "
                   "whose medians are reported")
    p.add_argument("--render", action="store_true")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        r = child_time(rest[0], rest[1], int(rest[2])) if kind == "time" else child_peak(*rest)
        print(json.dumps(r))
        return
    if args.part == "scale":
        part_scale(args)
    elif args.part == "small":
        part_small(args)
    elif args.part == "kernels":
        part_kernels(args)
    elif args.part == "gemm":
        part_gemm(args)
    if args.render or args.part:
        render()


if __name__ == "__main__":
    main()
