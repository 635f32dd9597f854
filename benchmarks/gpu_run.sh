#!/usr/bin/env bash
# The GPU benchmark in one go, for a lent GPU machine that has PyTorch with CUDA but not the data folder
# (benchmarks/RESULTS.md, "On a GPU"). Run from the project root:
#
#     bash benchmarks/gpu_run.sh OUT [DEV]
#
# DEV (default .dev) holds what the machine lacks: whl/ (tiffslide and its needs as wheels), site/ (an
# imagecodecs cut down to its JPEG, JPEG 2000 and zlib codecs), slides/ (the two real slides) and
# patches.npz (`python benchmarks/bench_gpu.py --save-patches`). Logs and JSON reports go to OUT.
# MP (default 1000) sizes the generated slide; GPU (default "--backend torch --precision fp16") is the
# GPU run's backend; each step has its own time limit, so one that hangs leaves the rest to run.
set -u
OUT=${1:?usage: gpu_run.sh OUT [DEV]}
DEV=${2:-.dev}
MP=${MP:-1000}
GPU=${GPU:---backend torch --precision fp16}
# shellcheck source=benchmarks/gpu_env.sh
. benchmarks/gpu_env.sh
cd benchmarks || exit 1

step environment 60 python3 -c '
import os, platform, numpy, numba, onnxruntime, tiffslide, imagecodecs, torch
print(platform.python_version(), "numpy", numpy.__version__, "numba", numba.__version__, "onnxruntime",
      onnxruntime.__version__, onnxruntime.get_available_providers(), "tiffslide", tiffslide.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available()
      else "no GPU", os.cpu_count(), "cores")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step per-patch 240 python3 bench_gpu.py --patches "../$DEV/patches.npz" | tee "$OUT/per_patch.md"
step make-slide 120 python3 make_slide.py /tmp/bench.svs --megapixels "$MP" --patches "../$DEV/patches.npz"
# shellcheck disable=SC2086
step slide-gpu 150 mitoqp bench /tmp/bench.svs --repeat 2 $GPU --json "$OUT/slide_gpu.json"
step slide-cpu 150 mitoqp bench /tmp/bench.svs --repeat 1 --backend onnxruntime --json "$OUT/slide_cpu.json"
# shellcheck disable=SC2086
step real-gpu 90 mitoqp bench "../$DEV"/slides/*.svs --mpp 0.5 --repeat 3 $GPU --json "$OUT/real_gpu.json"
step real-cpu 90 mitoqp bench "../$DEV"/slides/*.svs --mpp 0.5 --repeat 3 --backend onnxruntime --json "$OUT/real_cpu.json"
# shellcheck disable=SC2086
step slide-gpu-wide 90 mitoqp bench /tmp/bench.svs --repeat 1 $GPU --batch-size 1024 --workers 6 \
    --json "$OUT/slide_gpu_b1024_w6.json"
# 20 calls a cell: beside a pure-Python thread a CUDA call waits on the GIL, and 60 took past 160 s (RESULTS.md)
step gil 240 python3 bench_gil.py /tmp/bench.svs --calls 20 | tee "$OUT/gil.md"
echo "== done"
