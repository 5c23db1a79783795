"""Packed export and the integer runtime: file size, prediction parity, latency and peak memory (CPU).

Part 1, models. For each case: train an FP32 model and a QAT model with qgnn's runner (one seed / fold,
checkpoints cached under runs/export-bench/), export the QAT one (`qgnn export`), then on the dataset:

* parity: predictions of the integer runtime against the fake-quant model it came from (eval mode) on
  every node (node tasks) or every graph (graph tasks), and against the fake-quant model with integer
  aggregation (``set_integer_aggregation``); largest logit difference relative to the largest logit;
* accuracy on the test split (test mask / the test fold of the saved run) of FP32, fake-quant, integer;
* file bytes: the export file against the FP32 checkpoint, whole files and tensor payload only;
* latency (median of --repeats passes) and peak RSS growth of the FP32 PyG model, the fake-quant model
  and the integer runtime (auto backends; and with ``--gemm int_mm``).

Part 2, aggregation micro-benchmark on a synthetic graph (--nodes, --edges >= 1M, C channels): the
neighbourhood sum Σ_j e_ij x_j of FP32 PyG (``SimpleConv``: gather + scatter over edge_index, as
MessagePassing does) against the integer runtime's (int8 codes in, ``GraphPlan.accumulate``, one rescale):
``int_float_csr`` (the exact integer sum computed by torch's float32 CSR kernel, valid below 2^24, the
runtime's default), ``int_scipy`` (int32 accumulation in scipy.sparse) and the plain-torch integer
reference (``integer_accumulate``). For honesty also torch's float32 CSR SpMM on float features
(``fp32_torch_csr``), a faster FP32 kernel than PyG's default edge_index path. Each
variant's peak memory is measured in a fresh subprocess (RSS growth above the inputs).

Part 3 (``--only rec``, section ``export-rec``), LightGCN on ml-100k: GNAQ 2-bit and QAT 2-bit checkpoints
fine-tuned from the FP32 one with benchmarks/recsys.py's recipe, exported; file and table bytes against FP32,
Recall@20 / NDCG@20 of the fake-quant model and of the runtime (identical), full-ranking latency.

    OMP_NUM_THREADS=1 python benchmarks/export.py
    OMP_NUM_THREADS=1 python benchmarks/export.py --only agg --edges 1000000
    OMP_NUM_THREADS=1 python benchmarks/export.py --only rec
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, command_line, update_section, write_json  # noqa: E402

RUNS = ROOT / "runs" / "export-bench"

# (dataset, model, bits, training overrides): REDDIT-BINARY trains few epochs (each is ~10 s here); the
# figures that matter are parity, size and speed, not its accuracy
CASES = [
    ("Cora", "gcn", 4, {}), ("Cora", "gcn", 8, {}),
    ("CiteSeer", "gcn", 4, {}), ("CiteSeer", "gcn", 8, {}),
    ("Cora", "gat", 8, {}),
    ("MUTAG", "gin", 4, {"epochs": 100, "folds": 1}), ("MUTAG", "gin", 8, {"epochs": 100, "folds": 1}),
    ("REDDIT-BINARY", "gin", 8, {"epochs": 10, "folds": 1}), ("REDDIT-BINARY", "gin", 4, {"epochs": 10, "folds": 1}),
    ("Cora", "gcn", 4, {"method": "a2q"}),  # learned per-node / per-channel widths
]


def train(dataset, model, method, bits, over, retrain):
    from qgnn.train import TrainConfig, run_experiment

    tag = f"{dataset.lower()}-{model}-{method}{bits or ''}"
    ckpt = RUNS / f"{tag}.ckpt"
    if ckpt.exists() and not retrain:
        return ckpt
    cfg = TrainConfig(dataset=dataset, model=model, method=method, bits=bits, seeds=1, **over)
    run_experiment(cfg, out=RUNS / f"{tag}.json", save=ckpt, progress=False)
    return ckpt


def payload_bytes(path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


def weight_bytes(path) -> tuple[int, int]:
    """(bytes of the quantized weights in the export file: packed codes + their scale / zero-point / width
    tables, FP32 bytes of the same weights): the issue's size target counts weights."""
    from qgnn.export import read_file

    tensors, desc = read_file(path)
    packed = fp32 = 0

    def nbytes(v, per):
        return tensors[v].numel() * tensors[v].element_size() if isinstance(v, str) else (per if v else 0)

    def walk(layer):
        nonlocal packed, fp32
        for sub in layer.get("nn", []):
            walk(sub)
        for d in (layer.get("slots") or {}).values():
            if "codes" in d:
                numel = 1
                for k in d["shape"]:
                    numel *= k
                fp32 += 4 * numel
                packed += tensors[d["codes"]].numel() + nbytes(d["scale"], 4) + nbytes(d.get("zero_point"), 4)
                packed += nbytes(d.get("widths"), 1) if isinstance(d.get("widths"), str) else 0

    m = desc["model"]
    for layer in [*m["convs"], *m.get("heads", [])]:
        walk(layer)
    return packed, fp32


def _forward_all(model, inputs):
    return [model(x, ei, b) if b is not None else model(x, ei) for x, ei, b, _, _ in inputs]


def _acc(outs, inputs):
    from qgnn.export.evaluate import _accuracy

    return _accuracy(outs, inputs)[0]


def model_case(dataset, model, bits, over, args) -> dict:
    from qgnn.export import export_checkpoint, load_int_model
    from qgnn.train import load_model

    over = dict(over)
    method = over.pop("method", "qat")
    fp32_ckpt = train(dataset, model, "fp32", None, over, args.retrain)
    q_ckpt = train(dataset, model, method, bits, over, args.retrain)
    out = RUNS / f"{dataset.lower()}-{model}-{method}{bits}.qgnn.safetensors"
    export_checkpoint(q_ckpt, out)
    im = load_int_model(out)
    fq, _ = load_model(q_ckpt)
    fp, _ = load_model(fp32_ckpt)
    with torch.no_grad():
        return _measure(dataset, model, method, bits, over, args, out, im, fq, fp, fp32_ckpt)


def _measure(dataset, model, method, bits, over, args, out, im, fq, fp, fp32_ckpt) -> dict:
    from qgnn.export import load_int_model
    from qgnn.export.evaluate import eval_inputs
    from qgnn.export.measure import median_latency, peak_memory
    from qgnn.nn import set_integer_aggregation

    _, test = eval_inputs(im.desc, split="test")
    _, every = eval_inputs(im.desc, split="all")
    r = {"dataset": dataset, "model": model, "method": method, "bits": bits, "training": over}
    # parity on every node / graph
    ref = _forward_all(fq, every)
    got = _forward_all(im, every)
    set_integer_aggregation(fq, True)
    ref_int = _forward_all(fq, every)
    set_integer_aggregation(fq, False)
    n = sum(o.size(0) for o in got)
    r["parity"] = {
        "compared": n,
        "pred_differ": sum(int((a.argmax(-1) != b.argmax(-1)).sum()) for a, b in zip(got, ref, strict=True)),
        "pred_differ_vs_integer_aggr": sum(int((a.argmax(-1) != b.argmax(-1)).sum())
                                           for a, b in zip(got, ref_int, strict=True)),
        "max_rel_logit_diff": max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref, strict=True)),
        "max_rel_logit_diff_vs_integer_aggr": max(float((a - b).abs().max() / b.abs().max())
                                                  for a, b in zip(got, ref_int, strict=True)),
        "paths": sorted(set(im.paths.values())),
    }
    r["accuracy"] = {"fp32": _acc(_forward_all(fp, test), test), "fake_quant": _acc(_forward_all(fq, test), test),
                     "integer": _acc(_forward_all(im, test), test)}
    fb, fpb = out.stat().st_size, fp32_ckpt.stat().st_size
    pb, fppb = payload_bytes(out), payload_bytes(fp32_ckpt)
    r["size"] = {"file_bytes": fb, "fp32_checkpoint_bytes": fpb, "file_ratio": fpb / fb,
                 "payload_bytes": pb, "fp32_payload_bytes": fppb, "payload_ratio": fppb / pb}
    # latency and memory on the test inputs (node tasks: the whole graph)
    runners = {"fp32_pyg": fp, "fake_quant": fq, "integer": im}
    im_mm = load_int_model(out, gemm="int_mm")
    runners["integer_int_mm"] = im_mm
    r["latency_ms"], r["peak_mb"] = {}, {}
    for name, m in runners.items():  # all latencies first: peak_memory changes malloc settings
        _forward_all(m, test)  # warm-up (graph caches)
        med, _ = median_latency(lambda m=m: _forward_all(m, test), repeats=args.repeats, warmup=0)
        r["latency_ms"][name] = med * 1e3
    for name, m in runners.items():
        r["peak_mb"][name] = peak_memory(lambda m=m: _forward_all(m, test)) / 2**20
    return r


# --------------------------------------------------------------------------------------------------
# aggregation micro-benchmark
# --------------------------------------------------------------------------------------------------


def _agg_inputs(nodes, edges, channels, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, nodes, (edges,), generator=g)
    dst = torch.randint(0, nodes, (edges,), generator=g)
    q_x = torch.randint(-128, 128, (nodes, channels), generator=g, dtype=torch.int64).to(torch.int8)
    q_e = torch.randint(0, 256, (edges,), generator=g, dtype=torch.int64).to(torch.uint8)
    return src, dst, q_x, q_e


def agg_child(variant, nodes, edges, channels, weighted, repeats) -> dict:
    """One variant in this (fresh) process: median seconds and peak RSS growth above its inputs."""
    import gc

    from torch_geometric.nn import SimpleConv

    from qgnn.export.intops import GraphPlan
    from qgnn.export.measure import median_latency, peak_memory
    from qgnn.kernels import integer_accumulate

    torch.set_num_threads(1)
    src, dst, q_x, q_e = _agg_inputs(nodes, edges, channels)
    s_x, z_x, s_e, z_e = 0.01, 3, 0.002, 17
    ei = torch.stack([src, dst])
    if variant == "fp32_pyg":
        x = (q_x.float() - z_x) * s_x
        w = (q_e.float() - z_e) * s_e if weighted else None
        del q_x, q_e
        conv = SimpleConv(aggr="sum")

        def fn():
            return conv(x, ei, w)
    elif variant == "fp32_torch_csr":
        x = (q_x.float() - z_x) * s_x
        w = (q_e.float() - z_e) * s_e if weighted else torch.ones(edges)
        adj = torch.sparse_coo_tensor(torch.stack([dst, src]), w, (nodes, nodes)).coalesce().to_sparse_csr()
        del q_x, q_e

        def fn():
            return adj @ x
    elif variant in ("int_scipy", "int_float_csr", "int_reference"):
        plan = GraphPlan(src, dst, nodes)
        plan.csr()  # one-time per graph, like a cached normalised adjacency
        e = (q_e.to(torch.int32) - z_e) if weighted else None
        scale = s_x * s_e if weighted else s_x

        def fn():  # int8 codes in, float out: centre, integer sum, one rescale (what the runtime does)
            if variant != "int_reference":
                acc = plan.accumulate(q_x.to(torch.int32).sub_(z_x), e, variant.removeprefix("int_"))
            else:
                acc = integer_accumulate(q_x, z_x, ei, nodes, None if e is None else e.to(torch.int16), None)
            return acc.to(torch.float32).mul_(scale)
    else:
        raise SystemExit(f"unknown variant {variant}")
    fn()
    med, _ = median_latency(fn, repeats=repeats, warmup=0)
    gc.collect()
    peak = peak_memory(fn)
    return {"variant": variant, "seconds": med, "peak_mb": peak / 2**20}


AGG_VARIANTS = ("fp32_pyg", "fp32_torch_csr", "int_float_csr", "int_scipy", "int_reference")


def agg_bench(args) -> list[dict]:
    rows = []
    for channels in args.channels:
        for weighted in (False, True):
            for v in AGG_VARIANTS:
                cmd = [sys.executable, __file__, "--_agg-child", v, "--nodes", str(args.nodes), "--edges",
                       str(args.edges), "--channels", str(channels), "--repeats", str(args.repeats)]
                if weighted:
                    cmd.append("--weighted")
                res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                if res.returncode:
                    raise SystemExit(res.stderr)
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row.update(channels=channels, weighted=weighted)
                rows.append(row)
                print(row, flush=True)
    # integer == reference check on a smaller copy of the same graph shape (parity before speed)
    from qgnn.export.intops import GraphPlan
    from qgnn.kernels import integer_accumulate

    src, dst, q_x, q_e = _agg_inputs(20000, 200000, 16, seed=1)
    plan = GraphPlan(src, dst, 20000)
    e = q_e.to(torch.int32) - 17
    b = integer_accumulate(q_x, 3, torch.stack([src, dst]), 20000, q_e, 17)
    for backend in ("scipy", "float_csr"):
        a = plan.accumulate(q_x.to(torch.int32) - 3, e, backend)
        if not torch.equal(a.long(), b.long()):
            raise SystemExit(f"parity failure: {backend} aggregation differs from the reference; no speed-up reported")
    return rows


# --------------------------------------------------------------------------------------------------
# recommendation: LightGCN embedding tables (GNAQ per-node levels, QAT per-tensor grid)
# --------------------------------------------------------------------------------------------------

# (method, bits): fine-tuned from the FP32 LightGCN checkpoint with benchmarks/recsys.py's recipe, one seed
REC_CASES = [("gnaq", 2), ("qat", 2)]


def rec_train(method, bits, retrain):
    """The FP32 checkpoint of `benchmarks/recsys.py ml100k` when it exists (else one seed of its recipe here),
    and a quantized one fine-tuned from it: recsys.py's ML100K + QUANT_EPOCHS recipe, lr 5e-3, one seed."""
    import recsys
    from qgnn.train import TrainConfig, run_experiment

    fp32 = recsys.RESULTS_DIR / "recsys-ml100k-fp32.ckpt"
    if not fp32.exists() or retrain:
        fp32 = RUNS / "ml100k-lightgcn-fp32.ckpt"
        if not fp32.exists() or retrain:
            cfg = TrainConfig(model="lightgcn", **{**recsys.ML100K, "seeds": 1})
            run_experiment(cfg, out=RUNS / "ml100k-lightgcn-fp32.json", save=fp32, progress=False)
    tag = f"ml100k-lightgcn-{method}{bits}"
    ckpt = RUNS / f"{tag}.ckpt"
    if not ckpt.exists() or retrain:
        cfg = TrainConfig(model="lightgcn", method=method, bits=bits,
                          **{**recsys.ML100K, **recsys.QUANT_EPOCHS, "seeds": 1, "lr": 5e-3},
                          quant={"pretrained": str(fp32)})
        run_experiment(cfg, out=RUNS / f"{tag}.json", save=ckpt, progress=False)
    return fp32, ckpt


def rec_case(method, bits, args) -> dict:
    """Export one quantized LightGCN; parity, sizes and full-ranking latency against its fake-quant model."""
    from qgnn.data import load_dataset
    from qgnn.export import export_checkpoint, load_int_model
    from qgnn.export.measure import median_latency, peak_memory
    from qgnn.train import load_model
    from qgnn.train.rec import RecTask
    from qgnn.train.rec_metrics import topk_ranking

    fp32_ckpt, ckpt = rec_train(method, bits, args.retrain)
    out = RUNS / f"ml100k-lightgcn-{method}{bits}.qgnn.safetensors"
    export_checkpoint(ckpt, out)
    load_s, _ = median_latency(lambda: load_int_model(out), repeats=args.repeats, warmup=1)
    im = load_int_model(out)
    fq, _ = load_model(ckpt)
    fp, _ = load_model(fp32_ckpt)
    task = RecTask(load_dataset("ml-100k"))
    im.set_graph(task.edge_index)
    r = {"dataset": "ml-100k", "method": method, "bits": bits, "checkpoint": str(ckpt.relative_to(ROOT)),
         "fp32_checkpoint": str(fp32_ckpt.relative_to(ROOT))}
    with torch.no_grad():
        ue, ie = fq()
        ue2, ie2 = im()
        users = torch.arange(ue.size(0))
        excl = [task.train_idx, task.val_idx]  # the test protocol's exclusions
        a, _ = topk_ranking(ue, ie, users, excl, 20)
        b, _ = topk_ranking(ue2, ie2, users, excl, 20)
        r["parity"] = {"ego_identical": bool(torch.equal(fq.ego(), im.ego)),
                       "embeddings_identical": bool(torch.equal(ue, ue2) and torch.equal(ie, ie2)),
                       "max_abs_score_diff": float((ue @ ie.T - ue2 @ ie2.T).abs().max()),
                       "users": int(users.numel()), "users_top20_differ": int((a != b).any(1).sum())}
    r["metrics"] = {"fp32": task.evaluate(fp, "test"), "fake_quant": task.evaluate(fq, "test"),
                    "runtime": task.evaluate(im, "test")}
    r["parity"]["metrics_identical"] = r["metrics"]["fake_quant"] == r["metrics"]["runtime"]
    n, d = im.num_nodes, im.hidden
    r["size"] = {"file_bytes": out.stat().st_size, "fp32_checkpoint_bytes": fp32_ckpt.stat().st_size,
                 "quant_checkpoint_bytes": ckpt.stat().st_size, "table_bytes": im.table_bytes,
                 "fp32_table_bytes": 4 * n * d, "nodes": n, "hidden": d}
    r["size"]["file_ratio"] = r["size"]["fp32_checkpoint_bytes"] / r["size"]["file_bytes"]
    r["size"]["table_ratio"] = r["size"]["fp32_table_bytes"] / r["size"]["table_bytes"]
    runners = {"fp32": fp, "fake_quant": fq, "runtime": im}
    r["latency_ms"], r["peak_mb"] = {"runtime_load": load_s * 1e3}, {}
    for name, m in runners.items():  # all latencies first: peak_memory changes malloc settings
        med, _ = median_latency(lambda m=m: task.evaluate(m, "test"), repeats=args.repeats, warmup=1)
        r["latency_ms"][name] = med * 1e3
    for name, m in runners.items():
        r["peak_mb"][name] = peak_memory(lambda m=m: task.evaluate(m, "test")) / 2**20
    return r


def rec_report(rows, command) -> str:
    lines = ["## Packed export of LightGCN embedding tables (ml-100k)", "",
             "GNAQ: per-node b-bit codes + 2^b float32 levels per node; QAT: per-tensor b-bit grid (scale and "
             "zero-point inline in the JSON header). Each quantized checkpoint is fine-tuned from the FP32 "
             "LightGCN of `benchmarks/recsys.py ml100k` (3 layers, d = 64; up to 300 epochs, patience 30, the "
             "best of 3 seeds on validation) "
             "with that script's recipe (15 epochs, patience 5, lr 5e-3), one seed, cached under "
             "runs/export-bench/. Metrics: full ranking on the test split, training and validation items "
             "excluded. Latency: one full-ranking test pass (propagation + scoring + top-K of the 943 users), "
             "median; the runtime's load (read, validate, decode the table) separately.", "",
             f"Command: `{command}` (CPU, one thread, a shared 2-core machine: latencies are noisy; "
             f"{time.strftime('%Y-%m-%d')}).", "",
             "| method | bits | file B (FP32 ckpt B, ratio) | table B (FP32 table B, ratio) | "
             "quantized training ckpt B | "
             "R@20 FP32 / fake-quant / runtime | N@20 FP32 / fake-quant / runtime | identical (ego, embeddings, "
             "metrics; users with a different top-20) | full-ranking ms FP32 / FQ / runtime (load) | "
             "peak MB FP32 / FQ / runtime |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, m, p, t, pk = r["size"], r["metrics"], r["parity"], r["latency_ms"], r["peak_mb"]
        yes = lambda v: "yes" if v else "NO"  # noqa: E731
        lines.append(
            f"| {r['method']} | {r['bits']} | {s['file_bytes']:,} ({s['fp32_checkpoint_bytes']:,}, "
            f"{s['file_ratio']:.2f}x) | {s['table_bytes']:,} ({s['fp32_table_bytes']:,}, {s['table_ratio']:.2f}x) | "
            f"{s['quant_checkpoint_bytes']:,} | "
            + " / ".join(f"{m[k]['recall@20']:.4f}" for k in ("fp32", "fake_quant", "runtime")) + " | "
            + " / ".join(f"{m[k]['ndcg@20']:.4f}" for k in ("fp32", "fake_quant", "runtime")) + " | "
            f"{yes(p['ego_identical'])}, {yes(p['embeddings_identical'])}, {yes(p['metrics_identical'])}; "
            f"{p['users_top20_differ']} of {p['users']} | "
            f"{t['fp32']:.1f} / {t['fake_quant']:.1f} / {t['runtime']:.1f} ({t['runtime_load']:.1f}) | "
            f"{pk['fp32']:.1f} / {pk['fake_quant']:.1f} / {pk['runtime']:.1f} |")
    lines += ["", "File ratio: the whole export file (JSON header included) against the FP32 LightGCN checkpoint "
              "(its 2625 x 64 float32 table + header). Table: the stored codes + levels (GNAQ) or codes + scale "
              "and zero-point (QAT) against 4 bytes per entry. The quantized *training* checkpoints keep FP32 "
              "training state (GNAQ: E⁰, Δ, codes and levels; QAT: the FP32 table), hence their size. The "
              "runtime decodes the table to float32 once at load and propagates it with LightGCN's own "
              "propagation (qgnn.models.lightgcn.NormAdj), so at inference it costs what the FP32 model costs; "
              "the saving is storage."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def report(models, agg, args, commands):
    cmds = "; ".join(f"`{c}`" for c in commands)
    lines = ["## Packed export and the integer runtime", "",
             "Targets: predictions identical to the fake-quant model; file >= 7x smaller than FP32 at 4 bits and "
             ">= 3.5x at 8 bits; integer aggregation on >= 1M edges >= 2x faster than FP32 PyG with >= 3x lower "
             "peak memory. The file ratio counts the whole file (JSON header, scales, float BatchNorm and "
             "biases included); the weights ratio counts the weight matrices alone.", "",
             f"Command(s): {cmds} (CPU, one thread, a shared 2-core machine: latencies are noisy; "
             f"{time.strftime('%Y-%m-%d')}).", ""]
    if models:
        lines += ["**Models** (one seed / fold; QAT, export, integer runtime; parity over every node or graph)",
                  "",
                  "| dataset | model | method | bits | compared | pred. differ (vs fake-quant / vs integer-aggr.) | "
                  "max rel. logit diff | test acc FP32 / FQ / int | file B (ratio vs FP32 ckpt) | payload ratio | "
                  "weights ratio | "
                  "latency ms FP32 / FQ / int / int(_int_mm) | peak MB FP32 / FQ / int |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in models:
            p, a, s, t, m = r["parity"], r["accuracy"], r["size"], r["latency_ms"], r["peak_mb"]
            lines.append(
                f"| {r['dataset']} | {r['model']} | {r['method']} | {r['bits']} | {p['compared']} | "
                f"{p['pred_differ']} / "
                f"{p['pred_differ_vs_integer_aggr']} | {p['max_rel_logit_diff']:.1e} / "
                f"{p['max_rel_logit_diff_vs_integer_aggr']:.1e} | {a['fp32']:.3f} / {a['fake_quant']:.3f} / "
                f"{a['integer']:.3f} | {s['file_bytes']:,} ({s['file_ratio']:.2f}x) | {s['payload_ratio']:.2f}x | "
                f"{s.get('weight_ratio', float('nan')):.2f}x | "
                f"{t['fp32_pyg']:.1f} / {t['fake_quant']:.1f} / {t['integer']:.1f} / {t['integer_int_mm']:.1f} | "
                f"{m['fp32_pyg']:.1f} / {m['fake_quant']:.1f} / {m['integer']:.1f} |")
        lines.append("")
    if agg:
        lines += [f"**Aggregation** Σ_j e_ij x_j on a random graph, {args.nodes:,} nodes, {args.edges:,} edges "
                  f"(median of {args.repeats}; peak = RSS growth above the inputs, fresh process per variant)", "",
                  "| C | weighted | variant | ms | peak MB | speed-up vs FP32 PyG | memory vs FP32 PyG |",
                  "|---|---|---|---|---|---|---|"]
        for r in agg:
            base = next(b for b in agg if b["variant"] == "fp32_pyg" and b["channels"] == r["channels"]
                        and b["weighted"] == r["weighted"])
            lines.append(f"| {r['channels']} | {'yes' if r['weighted'] else 'no'} | {r['variant']} | "
                         f"{1e3 * r['seconds']:.1f} | {r['peak_mb']:.1f} | {base['seconds'] / r['seconds']:.2f}x | "
                         f"{base['peak_mb'] / max(r['peak_mb'], 1e-3):.2f}x lower |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["models", "agg", "rec", "none"], default=None)
    p.add_argument("--cases", type=int, nargs="*", default=None, help="indices into CASES")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--edges", type=int, default=1_000_000)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 64])
    p.add_argument("--weighted", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rewrite the section from the last JSON")
    p.add_argument("--merge", action="store_true", help="merge into benchmarks/results/export.json (re-run cases)")
    p.add_argument("--_agg-child", dest="agg_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.agg_child:
        print(json.dumps(agg_child(args.agg_child, args.nodes, args.edges, args.channels[0], args.weighted,
                                   args.repeats)))
        return
    RUNS.mkdir(parents=True, exist_ok=True)
    models, agg = [], []
    if args.report_only:
        args.only = "none"
    if args.only in (None, "rec"):  # LightGCN embedding tables: their own JSON and section (export-rec)
        rows = [rec_case(method, bits, args) for method, bits in REC_CASES]
        for r in rows:
            print(json.dumps(r), flush=True)
        write_json("export-rec", {"command": command_line(), "rows": rows})
        update_section("export-rec", rec_report(rows, command_line()))
        if args.only == "rec":
            return
    if args.only in (None, "models"):
        for i, (ds, model, bits, over) in enumerate(CASES):
            if args.cases is not None and i not in args.cases:
                continue
            r = model_case(ds, model, bits, over, args)
            print(json.dumps(r), flush=True)
            models.append(r)
    if args.only in (None, "agg"):
        agg = agg_bench(args)
    name = "export"
    if args.report_only:
        from _report import RESULTS_DIR

        old = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        models, agg = old["models"], old["aggregation"]
        commands = old.get("commands", [old["command"]])
    elif args.merge:  # re-measure some cases (or one part) and keep the others from the last full run
        from _report import RESULTS_DIR

        old = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        key = ("dataset", "model", "method", "bits")
        done = {tuple(r[k] for k in key) for r in models}
        models = [*models, *(r for r in old["models"] if tuple(r.get(k, "qat") for k in key) not in done)]
        models.sort(key=lambda r: next((i for i, c in enumerate(CASES) if (c[0], c[1], c[3].get("method", "qat"),
                                                                          c[2]) == tuple(r[k] for k in key)), 99))
        agg = agg or old["aggregation"]
        commands = sorted({*old.get("commands", [old["command"]]), command_line()})
    else:
        commands = [command_line()]
    for r in models:
        f = RUNS / f"{r['dataset'].lower()}-{r['model']}-{r.get('method', 'qat')}{r['bits']}.qgnn.safetensors"
        if f.exists():
            wb, wf = weight_bytes(f)
            r["size"].update(weight_bytes=wb, fp32_weight_bytes=wf, weight_ratio=wf / wb)
    write_json(name, {"commands": commands, "command": command_line(), "models": models, "aggregation": agg})
    update_section(name, report(models, agg, args, commands))


if __name__ == "__main__":
    main()
