#!/usr/bin/env bash
# Training on a lent GPU against the same machine's CPU cores: `mitoqp train` with train.device = "cuda", again
# with train.prefetch = true (the augmentation on a worker thread), then "cpu" on all its cores; the default's
# recipe (mitoqp-v6's) on a packed subset of AMi-Br. Run from the project root:
#
#     python benchmarks/pack_fields.py .dev-train/fields --train 600 && mkdir -p .dev-train/whl && cp SHAPELY.whl .dev-train/whl/
#     bash benchmarks/gpu_train.sh OUT .dev-train        # the device tool: carry [".dev-train"], 60 MiB with the tree
#
# Without the real slides' negatives (tiffslide and its codecs would not fit beside the fields): an epoch costs
# the same (epoch_samples fixed), so seconds per epoch compare; the model is not the default's.
# GPU_EPOCHS (default 12) on the GPU (each of the two runs), CPU_EPOCHS (default 2) on the CPU, within GPU_LIMIT
# and CPU_LIMIT seconds each. Logs, metrics and the GPU run's best.pt to OUT (8 files, what a call brings back).
set -u
OUT=${1:?usage: gpu_train.sh OUT DEV}
DEV=${2:?usage: gpu_train.sh OUT DEV}
GPU_EPOCHS=${GPU_EPOCHS:-12}
CPU_EPOCHS=${CPU_EPOCHS:-2}
GPU_LIMIT=${GPU_LIMIT:-420}  # seconds each training step may take
CPU_LIMIT=${CPU_LIMIT:-240}
# shellcheck source=benchmarks/gpu_env.sh
. benchmarks/gpu_env.sh
step environment 60 python3 -c 'import torch, os; print("torch", torch.__version__, "cuda", torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", os.cpu_count(), "cores")'
RECIPE=(--set model.se=true --set 'train.select="mean_recall"' --set 'model.input_norm="patch"'
        --set train.scale_jitter=0.15 --set train.seed=0 --set train.threads="$(nproc)"
        --set "data.amibr=\"$DEV/fields\"" --set "data.midog_json=\"$DEV/fields/midog2021.json\"" --set 'data.slides=[]')
rm -rf /tmp/train_gpu /tmp/train_gpu_prefetch /tmp/train_cpu "$OUT"/metrics_*.jsonl  # no figure of an earlier run
step train-gpu "$GPU_LIMIT" mitoqp train configs/baseline.toml -o /tmp/train_gpu "${RECIPE[@]}" --set 'train.device="cuda"' \
    --set train.epochs="$GPU_EPOCHS"
step train-gpu_prefetch "$GPU_LIMIT" mitoqp train configs/baseline.toml -o /tmp/train_gpu_prefetch "${RECIPE[@]}" \
    --set 'train.device="cuda"' --set train.epochs="$GPU_EPOCHS" --set train.prefetch=true
step train-cpu "$CPU_LIMIT" mitoqp train configs/baseline.toml -o /tmp/train_cpu "${RECIPE[@]}" --set 'train.device="cpu"' \
    --set train.epochs="$CPU_EPOCHS"
for d in gpu gpu_prefetch cpu; do
    cp "/tmp/train_$d/train.log" "$OUT/train_$d.log" 2>/dev/null
    cp "/tmp/train_$d/metrics.jsonl" "$OUT/metrics_$d.jsonl" 2>/dev/null
done
cp /tmp/train_gpu/best.pt "$OUT/gpu_best.pt" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
sec = {}
for d in ("gpu", "gpu_prefetch", "cpu"):
    f = out / f"metrics_{d}.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []
    sec[d] = [r["seconds"] for r in rows[1:]] or [r["seconds"] for r in rows]  # the first epoch warms up
    print(f"{d}: {len(rows)} epochs, seconds per epoch {statistics.median(sec[d]) if sec[d] else float('nan'):.1f} (median"
          f" after the first), last mean recall {rows[-1]['mean_recall'] if rows else float('nan'):.3f}")
for d in ("gpu", "gpu_prefetch"):
    if sec[d] and sec["cpu"]:
        print(f"{d} epoch {statistics.median(sec['cpu']) / statistics.median(sec[d]):.1f}x faster than the CPU's")
PY
echo "== done"
