#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one call (CI never has a GPU; these skip there). From the repository root:
#
#     OUT=runs/gpu-checks bash scripts/gpu_checks.sh          # or under the device tool: $OUT is set for you
#
# What it runs, each step's output in $OUT (a step that fails is reported and the next still runs):
#   env.txt        python, torch, CUDA device, and which of qgnn's dependencies import here
#   pytest.txt     the tests that exercise CUDA / Triton (the LoRAP kernel's parity and gradients, CUDA RNG
#                  state in resume, device placement), the rest of those files beside them
#   lorap.txt      benchmarks/lorap_kernel.py: the fused Triton kernel against the plain-torch reference
#                  (parity first, then forward + backward latency); lorap-kernel.json
#   parity.json    CUDA against CPU training on the seeded synthetic graphs (no data files, no network):
#                  test accuracy of fp32 / qat 8 / dq 4 GCN and GIN, same seeds, and the gap
# torchrun with nccl needs two GPUs (one rank per device); a one-GPU machine cannot check it, and this script
# says so rather than trying.
set -u
OUT=${OUT:-runs/gpu-checks}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} QGNN_OFFLINE=1
export QGNN_CACHE=${QGNN_CACHE:-$PWD/runs/gpu-cache}

step() {  # step NAME LOG CMD...: run, keep its output, say how it ended
    local name=$1 log=$2
    shift 2
    local t0=$SECONDS
    if "$@" >"$log" 2>&1; then echo "ok    $name ($((SECONDS - t0)) s)"; else echo "FAIL  $name ($((SECONDS - t0)) s): see $log"; fi
}

step env "$OUT/env.txt" "$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none", "count",
      torch.cuda.device_count())
for m in ("torch_geometric", "triton", "safetensors", "tqdm", "numpy", "scipy", "qgnn"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # a missing dependency is a finding, not a crash
        print(m, "MISSING", type(e).__name__, e)
sys.exit(0 if torch.cuda.is_available() else 1)
EOF

step pytest "$OUT/pytest.txt" "$PY" -m pytest -q -rs -p no:cacheprovider tests/kernels/test_kernels_lorap.py \
    tests/train/test_resume_methods.py tests/train/test_config_types.py

step lorap "$OUT/lorap.txt" "$PY" benchmarks/lorap_kernel.py
cp benchmarks/results/lorap-kernel*.json "$OUT/" 2>/dev/null || true

step parity "$OUT/parity.txt" "$PY" - "$OUT/parity.json" <<'EOF'
import json, sys
import torch
from qgnn.train import TrainConfig, run_experiment

if not torch.cuda.is_available():
    sys.exit("no CUDA device: nothing to compare")
rows = []
for dataset, model, extra in (("synthetic-node", "gcn", {"epochs": 60}), ("synthetic-graph", "gin",
                                                                          {"epochs": 20, "folds": 2})):
    for method, bits in (("fp32", 32), ("qat", 8), ("dq", 4)):
        accs = {}
        for device in ("cpu", "cuda"):
            cfg = TrainConfig(dataset=dataset, model=model, method=method, bits=bits, seeds=2, device=device,
                              **extra)
            r = run_experiment(cfg, progress=False)
            accs[device] = r["metrics"]["test_acc"]["mean"]
        rows.append({"dataset": dataset, "model": model, "method": method, "bits": bits, **accs,
                     "gap_points": 100 * (accs["cuda"] - accs["cpu"])})
        print(rows[-1], flush=True)
json.dump({"rows": rows, "device": torch.cuda.get_device_name(0)}, open(sys.argv[1], "w"), indent=1)
EOF

if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)" -ge 2 ]; then
    step torchrun-nccl "$OUT/torchrun.txt" "$PY" -m torch.distributed.run --nproc_per_node 2 -m qgnn train \
        --dataset synthetic-node --model gcn --method qat --bits 8 --seeds 1 --epochs 5 --device cuda \
        --out "$OUT/torchrun.json"
else
    echo "skip  torchrun-nccl: needs two GPUs (one rank per device), this machine has fewer"
fi
