#!/usr/bin/env bash
# The bundled dense models (issue 9's comparison: UTS, RDLM, MiNuGAN) on a lent GPU against ONNX Runtime on
# the same machine's CPU cores, for benchmarks/METHODS.md's GPU seconds. Run from the project root after
# (or instead of) gpu_run.sh, with the same DEV folder:
#
#     bash benchmarks/gpu_methods.sh OUT [DEV]
#
# Per model: the two real slides (GPU and CPU, median of REPEAT, default 2; tables in the log) and a generated
# MP-megapixel slide (default 100; GPU and CPU, one run each, JSON). The log and 6 JSON reports go to OUT.
set -u
OUT=${1:?usage: gpu_methods.sh OUT [DEV]}
DEV=${2:-.dev}
MP=${MP:-100}
REPEAT=${REPEAT:-2}  # timed runs on the real slides
GPU=${GPU:---backend torch --precision fp16}
# shellcheck source=benchmarks/gpu_env.sh
. benchmarks/gpu_env.sh
cd benchmarks || exit 1
step make-slide 60 python3 make_slide.py /tmp/methods.svs --megapixels "$MP" --patches "../$DEV/patches.npz"
for m in uts rdlm minugan; do
    # shellcheck disable=SC2086
    step "$m-real-gpu" 90 mitoqp bench "../$DEV"/slides/*.svs --model "$m" --mpp 0.5 --repeat "$REPEAT" $GPU
    step "$m-real-cpu" 90 mitoqp bench "../$DEV"/slides/*.svs --model "$m" --mpp 0.5 --repeat "$REPEAT" --backend onnxruntime
    # shellcheck disable=SC2086
    step "$m-slide-gpu" 120 mitoqp bench /tmp/methods.svs --model "$m" --repeat 1 $GPU --json "$OUT/${m}_gpu.json"
    step "$m-slide-cpu" 120 mitoqp bench /tmp/methods.svs --model "$m" --repeat 1 --backend onnxruntime \
        --json "$OUT/${m}_cpu.json"
done
echo "== done"
