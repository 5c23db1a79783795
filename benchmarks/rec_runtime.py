"""LightGCN from the packed table: table bytes held and full-ranking latency against FP32 (issue 25, Build 3).

For each dataset (ml-100k, and gowalla when its files are under $QGNN_DATA) and each quantized table
(GNAQ per-node levels, QAT per-tensor grid; 8, 4 and 2 bits):

* the table is exported (``export_rec_model``: the file qgnn export writes) and loaded as the runtime does
  (:class:`qgnn.export.rec.RecIntModel`);
* bytes held by the runtime after load: its table tensors (packed codes + GNAQ levels / QAT scale and
  zero-point; ``held_tensors`` is also checked to hold no float32 [N, d] table) against FP32's 4 N d;
* full-ranking pass, the test protocol (every user with a test item ranked against all items, training and
  validation items excluded, top 20), median of ``--repeats`` passes after one warm-up, one process, one
  thread, the same user chunk (``--chunk``) everywhere:
  - ``fp32``: an FP32 LightGCN (the FP32 checkpoint): propagation, then per chunk a float32 GEMM and
    ``torch.topk`` (qgnn's evaluation, ``rec_rank.topk_reference``);
  - ``fp32_grouped``: the same with the runtime's candidate selection (group maxima, then ``topk``) on the
    float32 block, so that the table shows which part of the gain is the selection and which the int8 GEMM;
  - ``runtime``: ``RecIntModel.rank`` (decode the packed table, propagate, int8 GEMM, exact re-ranking);
* parity: the runtime's top-20 against the fake-quant model's (float final embeddings, float GEMM + topk):
  same set, same order, the largest score difference, and whether every order difference is a near-tie
  (scores within 1e-5 of the larger); Recall / NDCG @20 of both;
* peak RSS growth of one pass (in this process, after all timings; indicative only), and that plus the table
  held (FP32's table is resident before the pass; the runtime decodes its table inside the pass).

The quantized tables are, by default, the post-training initialisation of each method from the FP32
checkpoint (GNAQ's node-aware levels, QAT's min / max grid), not fine-tuned: timing and bytes do not depend on
the model's quality, and fine-tuning GNAQ on gowalla takes minutes per epoch here. ``--checkpoint PATH``
(repeatable) takes trained quantized checkpoints (``qgnn train --method gnaq|qat|lsq --save``) instead. The
FP32 checkpoint comes from ``--fp32-checkpoint DATASET=PATH``, else ``runs/rec-runtime/<dataset>-fp32.ckpt``,
else it is trained here with a small recipe (ml-100k: 60 epochs, gowalla: 2 epochs; lr 5e-3, one seed) and
cached there. The JSON records which checkpoints were used.

    OMP_NUM_THREADS=1 QGNN_DATA=/path/to/data python benchmarks/rec_runtime.py
    OMP_NUM_THREADS=1 python benchmarks/rec_runtime.py --datasets ml-100k --repeats 3

Writes benchmarks/results/rec-runtime.json and the section ``export-rec-runtime`` (docs/notes/export.md;
``--render`` rewrites the section from the JSON alone).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, command_line, update_section, write_json  # noqa: E402

RUNS = ROOT / "runs" / "rec-runtime"
SMALL_RECIPE = {"ml-100k": 60, "gowalla": 2}  # FP32 epochs when no checkpoint exists
DATASET_FILES = {"gowalla": ("recsys/gowalla/train.txt", "recsys/gowalla/test.txt")}
NEAR_TIE = 1e-5


def available(name: str) -> bool:
    """ml-100k is always attempted; gowalla only when its files are under $QGNN_DATA."""
    import os

    root = os.environ.get("QGNN_DATA")
    files = DATASET_FILES.get(name)
    return files is None or (root is not None and all((Path(root) / f).exists() for f in files))


def fp32_checkpoint(name: str, given: dict[str, str]) -> tuple[Path, str]:
    """(path, how it was obtained) of the FP32 LightGCN checkpoint of ``name``."""
    import json

    from qgnn.train import TrainConfig, run_experiment

    if name in given:
        return Path(given[name]), f"{given[name]} (--fp32-checkpoint)"
    path = RUNS / f"{name}-fp32.ckpt"
    note = path.with_suffix(".json")  # how the cached checkpoint was made
    if path.exists():
        how = json.loads(note.read_text())["how"] if note.exists() else "no record of its recipe"
        return path, f"{path.relative_to(ROOT)}, cached ({how})"
    RUNS.mkdir(parents=True, exist_ok=True)
    epochs = SMALL_RECIPE.get(name, 10)
    cfg = TrainConfig(dataset=name, model="lightgcn", epochs=epochs, seeds=1, lr=5e-3, eval_every=epochs)
    print(f"{name}: training FP32 LightGCN, {epochs} epochs (small recipe) -> {path}", flush=True)
    res = run_experiment(cfg, save=path, progress=False)
    how = (f"small recipe: {epochs} epochs, lr 5e-3, one seed; test Recall@20 "
           f"{res['metrics']['recall@20']['mean']:.4f}")
    note.write_text(json.dumps({"how": how}) + "\n")
    return path, f"{path.relative_to(ROOT)}, trained here ({how})"


def ptq_model(name: str, ds, task, method: str, bits: int, fp32: Path):
    """A quantized LightGCN initialised from the FP32 table (no fine-tuning), in eval mode with its graph."""
    from qgnn.train import TrainConfig
    from qgnn.train.rec import build_rec_model, load_pretrained, resolve_config

    cfg = resolve_config(TrainConfig(dataset=name, model="lightgcn", method=method, bits=bits,
                                     quant={"pretrained": str(fp32)}))
    m = build_rec_model(cfg, ds)
    load_pretrained(fp32, m, ds)
    m.set_graph(task.edge_index)
    m.train()
    with torch.no_grad():
        m.ego()  # QAT's observer / LSQ's step take their range from the table, as the first training step
    return m.eval(), {"dataset": name, "model": "lightgcn", "method": method, "bits": bits}


def grouped_float_topk(ue, ie, users, exclude, k, chunk):
    """FP32 GEMM per chunk into a reused buffer, excluded pairs −inf, the runtime's group-maximum selection."""
    from qgnn.export.rec_rank import GROUP, mask_pairs

    ni = ie.size(0)
    pad = (-ni) % GROUP
    ie_p = torch.cat([ie, ie.new_zeros(pad, ie.size(1))]) if pad else ie
    buf = torch.empty(min(chunk, len(users)), ni + pad)
    ids, vals = [], []
    for s in range(0, len(users), chunk):
        u = users[s:s + chunk]
        block = torch.matmul(ue.index_select(0, u), ie_p.T, out=buf[: len(u)])
        block[:, ni:] = -math.inf
        mask_pairs(block, u, exclude, -math.inf)
        b, m = block.size(0), block.size(1) // GROUP
        g = torch.topk(block.view(b, GROUP, m).amax(1), k, dim=1).indices
        items = (g.unsqueeze(2) + m * torch.arange(GROUP)).view(b, -1)
        v, p = torch.topk(block.gather(1, items), k, dim=1)
        ids.append(items.gather(1, p))
        vals.append(v)
    return torch.cat(ids), torch.cat(vals)


def parity(a_ids, a_vals, b_ids, b_vals) -> dict:
    """Runtime lists (a) against the fake-quant model's (b)."""
    same_set = torch.tensor([set(x.tolist()) == set(y.tolist()) for x, y in zip(a_ids, b_ids, strict=True)])
    same_order = (a_ids == b_ids).all(1)
    fin = torch.isfinite(a_vals) & torch.isfinite(b_vals)
    diff = (a_vals - b_vals).abs().masked_fill(~fin, 0)
    # an order difference is a near-tie when the two lists' scores agree position by position within tolerance
    scale = torch.maximum(a_vals.abs(), b_vals.abs()).masked_fill(~fin, 1).clamp(min=1e-30)
    ties_only = bool(((diff / scale) <= NEAR_TIE)[~same_order].all()) if (~same_order).any() else True
    n = len(a_ids)
    return {"users": n, "same_set": int(same_set.sum()), "same_order": int(same_order.sum()),
            "same_set_frac": float(same_set.float().mean()), "same_order_frac": float(same_order.float().mean()),
            "order_differences_are_near_ties": ties_only, "max_abs_score_diff": float(diff.max()) if n else 0.0}


def float_nd_tensors(model) -> list[str]:
    """Names of held float32 tensors with N · d or more elements (should be none)."""
    n = model.num_nodes * model.hidden
    return [k for k, v in model.held_tensors().items() if v.is_floating_point() and v.numel() >= n]


def bench_dataset(name: str, args) -> dict:
    from qgnn.data import load_dataset
    from qgnn.export.format import read_file, write_file
    from qgnn.export.measure import median_latency, peak_memory
    from qgnn.export.rec import RecIntModel
    from qgnn.export.rec_export import export_rec_model
    from qgnn.export.rec_rank import metrics_from_topk, topk_reference
    from qgnn.train import load_model

    torch.manual_seed(0)
    ds = load_dataset(name)
    from qgnn.train.rec import RecTask

    task = RecTask(ds)
    excl = [task.train_idx, task.val_idx]
    users = torch.nonzero(task.test_idx.counts > 0).flatten()
    k, chunk = 20, args.chunk
    fp32_path, fp32_how = fp32_checkpoint(name, args.fp32)
    fp, _ = load_model(fp32_path)
    fp.set_graph(task.edge_index)
    n, d = fp.num_nodes, fp.hidden
    out = {"dataset": name, "users": ds.num_users, "items": ds.num_items, "ranked_users": int(users.numel()),
           "nodes": n, "hidden": d, "num_layers": fp.num_layers, "fp32_table_bytes": 4 * n * d, "k": k,
           "chunk": chunk, "repeats": args.repeats, "fp32_checkpoint": str(fp32_path), "fp32_how": fp32_how}

    def fp32_pass():
        with torch.no_grad():
            ue, ie = fp()
            return topk_reference(ue, ie, users, excl, k, chunk)

    def fp32_grouped_pass():
        with torch.no_grad():
            ue, ie = fp()
            return grouped_float_topk(ue, ie, users, excl, k, chunk)

    lat = {}
    for key, fn in (("fp32", fp32_pass), ("fp32_grouped", fp32_grouped_pass)):
        med, runs = median_latency(fn, repeats=args.repeats, warmup=1)
        lat[key] = {"median_ms": med * 1e3, "runs_ms": [t * 1e3 for t in runs]}
        print(f"{name} {key}: {med:.3f} s", flush=True)
    out["latency"] = lat
    with torch.no_grad():
        ue, ie = fp()
    out["fp32_metrics"] = metrics_from_topk(users, *topk_reference(ue, ie, users, excl, k, chunk), task.test_idx)
    del ue, ie

    cases = []
    sources = [(m, b, None) for m in args.methods for b in args.bits] if not args.checkpoint else \
        [(None, None, Path(c)) for c in args.checkpoint]
    files = RUNS / "files"
    files.mkdir(parents=True, exist_ok=True)
    models = {}
    for method, bits, ckpt in sources:
        if ckpt is None:
            fq, cfg = ptq_model(name, ds, task, method, bits, fp32_path)
            source = "post-training initialisation from the FP32 checkpoint (not fine-tuned)"
        else:
            fq, meta = load_model(ckpt)
            if getattr(fq, "num_users", None) != ds.num_users:
                continue  # another dataset's checkpoint
            fq.set_graph(task.edge_index)
            cfg = meta.get("config") or {}
            method, bits, source = cfg.get("method"), cfg.get("bits"), f"checkpoint {ckpt}"
        tensors, desc = export_rec_model(fq, cfg)
        path = write_file(files / f"{name}-{method}{bits}.qgnn.safetensors", tensors, desc)
        im = RecIntModel(*read_file(path)).set_graph(task.edge_index)
        with torch.no_grad():
            fue, fie = fq()
        ref_ids, ref_vals = topk_reference(fue, fie, users, excl, k, chunk)
        del fue, fie
        stats: dict = {}
        ids, vals = im.rank(users, excl, k, chunk=chunk, stats=stats)
        t = im.table
        row = {"method": method, "bits": bits, "source": source, "file": str(path.relative_to(ROOT)),
               "file_bytes": path.stat().st_size, "table_bytes": im.table_bytes,
               "code_bytes": t.codes.numel(), "level_bytes": im.table_bytes - t.codes.numel(),
               "held_float_nd_tensors": float_nd_tensors(im), "proof": stats,
               "parity": parity(ids, vals, ref_ids, ref_vals),
               "metrics": {"fake_quant": metrics_from_topk(users, ref_ids, ref_vals, task.test_idx),
                           "runtime": metrics_from_topk(users, ids, vals, task.test_idx)}}
        row["code_ratio"] = out["fp32_table_bytes"] / row["code_bytes"]
        row["table_ratio"] = out["fp32_table_bytes"] / row["table_bytes"]
        med, runs = median_latency(lambda im=im: im.rank(users, excl, k, chunk=chunk), repeats=args.repeats,
                                   warmup=1)
        row["latency"] = {"median_ms": med * 1e3, "runs_ms": [x * 1e3 for x in runs]}
        row["speedup_vs_fp32"] = lat["fp32"]["median_ms"] / row["latency"]["median_ms"]
        row["speedup_vs_fp32_grouped"] = lat["fp32_grouped"]["median_ms"] / row["latency"]["median_ms"]
        prop, _ = median_latency(lambda im=im: im(), repeats=args.repeats, warmup=0)
        row["decode_propagate_ms"] = prop * 1e3
        print(f"{name} {method}{bits}: {med:.3f} s ({row['speedup_vs_fp32']:.2f}x fp32), table "
              f"{row['table_bytes']:,} B ({row['table_ratio']:.2f}x smaller; codes {row['code_ratio']:.1f}x), "
              f"proof {stats}, same top-20 {row['parity']['same_set_frac']:.4%}", flush=True)
        cases.append(row)
        models[(method, bits)] = im
        del fq
    # peak RSS growth of one pass, after every timing (peak_memory changes malloc settings)
    out["fp32_peak_bytes"] = peak_memory(fp32_pass)
    for row in cases:
        im = models[(row["method"], row["bits"])]
        row["peak_bytes"] = peak_memory(lambda im=im: im.rank(users, excl, k, chunk=chunk))
    out["cases"] = cases
    return out


def _secs(ms: float) -> str:
    return f"{ms / 1e3:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def _smaller(ratio: float) -> str:
    return f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"


def report(results: list[dict], command: str) -> str:
    lines = ["## LightGCN from the packed table: bytes held and full-ranking latency", "",
             "Test protocol (every user with a test item ranked against all items, training and validation items "
             "excluded, top 20), median of the passes, one process, `OMP_NUM_THREADS=1`, on a 2-core machine "
             "shared with other work (indicative figures). A pass is propagation + ranking for FP32 and decode + "
             "propagation + ranking for the runtime (`RecIntModel.rank`: int8 GEMM, group-maximum candidates, "
             "exact float re-ranking with a per-user proof). `fp32 grouped` is FP32 with the runtime's "
             "candidate selection. Table bytes: what the runtime holds after load (packed codes, plus GNAQ's "
             "float32 levels [N, 2^b] or QAT's scale and zero-point) against FP32's 4·N·d. Same top-20: the "
             "runtime's lists against the fake-quant model's float ranking.", ""]
    for r in results:
        f = r["latency"]
        lines += [f"**{r['dataset']}** ({r['users']:,} users, {r['items']:,} items, d = {r['hidden']}, "
                  f"L = {r['num_layers']}, chunk {r['chunk']} users; FP32 checkpoint {r['fp32_how']}): "
                  f"FP32 pass {_secs(f['fp32']['median_ms'])}, FP32 grouped {_secs(f['fp32_grouped']['median_ms'])}"
                  f", FP32 table {r['fp32_table_bytes']:,} B, peak RSS growth of a pass "
                  f"{r['fp32_peak_bytes'] / 2**20:.0f} MiB "
                  f"({(r['fp32_peak_bytes'] + r['fp32_table_bytes']) / 2**20:.0f} MiB with the table).", "",
                  "| table | pass | vs FP32 | vs FP32 grouped | decode + propagate | table bytes held | codes vs "
                  "FP32 | with levels / scale | users proved first / retried / fallback | same top-20 set / order | "
                  "Recall@20 fake-quant / runtime | peak growth / with table (MiB) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in r["cases"]:
            p, pr, m = c["parity"], c["proof"], c["metrics"]
            lines.append(
                f"| {c['method']} {c['bits']}-bit | {_secs(c['latency']['median_ms'])} | "
                f"{c['speedup_vs_fp32']:.2f}x | {c['speedup_vs_fp32_grouped']:.2f}x | "
                f"{_secs(c['decode_propagate_ms'])} | {c['table_bytes']:,} | {_smaller(c['code_ratio'])} | "
                f"{_smaller(c['table_ratio'])} | {pr['proved']} / {pr['retried']} / {pr['fallback']} | "
                f"{100 * p['same_set_frac']:.2f} % / {100 * p['same_order_frac']:.2f} %"
                f"{'' if p['order_differences_are_near_ties'] else ' (not ties!)'} | "
                f"{m['fake_quant']['recall@20']:.4f} / {m['runtime']['recall@20']:.4f} | "
                f"{c['peak_bytes'] / 2**20:.0f} / {(c['peak_bytes'] + c['table_bytes']) / 2**20:.0f} |")
        lines.append("")
    lines += ["Quantized tables: " + "; ".join(sorted({c["source"] for r in results for c in r["cases"]})) + ".",
              "", "```", command, "```"]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="ml-100k,gowalla")
    p.add_argument("--methods", default="gnaq,qat")
    p.add_argument("--bits", default="8,4,2")
    p.add_argument("--chunk", type=int, default=256, help="users per ranking chunk (every path)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fp32-checkpoint", action="append", default=[], metavar="DATASET=PATH")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="a trained quantized LightGCN checkpoint (repeatable); replaces --methods / --bits")
    p.add_argument("--no-docs", action="store_true", help="write the JSON only")
    p.add_argument("--render", action="store_true", help="rewrite the docs section from the JSON, run nothing")
    args = p.parse_args(argv)
    if args.render:
        import json

        from _report import RESULTS_DIR

        saved = json.loads((RESULTS_DIR / "rec-runtime.json").read_text())
        print(f"updated {update_section('export-rec-runtime', report(saved['results'], saved['command']))}")
        return
    args.methods = [m for m in args.methods.split(",") if m]
    args.bits = [int(b) for b in args.bits.split(",") if b]
    args.fp32 = dict(a.split("=", 1) for a in args.fp32_checkpoint)
    torch.set_num_threads(1)
    results = []
    for name in [x for x in args.datasets.split(",") if x]:
        if not available(name):
            print(f"{name}: files not under $QGNN_DATA, skipped", flush=True)
            continue
        results.append(bench_dataset(name, args))
    command = command_line()
    path = write_json("rec-runtime", {"command": command, "results": results})
    print(f"wrote {path}")
    if not args.no_docs:
        print(f"updated {update_section('export-rec-runtime', report(results, command))}")


if __name__ == "__main__":
    main()
