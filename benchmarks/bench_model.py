"""Model time per patch for the inference options, as ratios to the detector alone in the same run.

    python benchmarks/bench_model.py [--model DIR] [--extra NAME=DIR ...]

Times the bundled (or given) model folder as it runs by default, its detector
alone (model.onnx), and test-time augmentation with 2, 4 and 8 views; each extra
folder (an ensemble, another recipe) is timed too. Real 96-px patches cut from
AMi-Br, batches of 256, best of 3.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import real_patches
from mitoqp.runtime.backend import DihedralTTA
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend
from mitoqp.runtime.model import default_model_dir, load_model


def per_patch_ms(backend, patches: np.ndarray, reps: int = 3) -> float:
    backend.predict(patches[:256])
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        for i in range(0, len(patches), 256):
            backend.predict(patches[i:i + 256])
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(patches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=default_model_dir())
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=DIR")
    ap.add_argument("--patches", type=int, default=2048)
    args = ap.parse_args()
    model = load_model(args.model)
    o = (128 - model.patch) // 2
    patches = np.ascontiguousarray(np.stack(real_patches(args.patches))[:, o:o + model.patch, o:o + model.patch])
    detector = OnnxRuntimeBackend(args.model / "model.onnx")
    rows = [("detector alone (model.onnx)", detector), (f"model folder as shipped ({model.backend.name})", model.backend)]
    rows += [(f"TTA {v} views", DihedralTTA(model.backend, v)) for v in (2, 4, 8)]
    rows += [(name, load_model(Path(d)).backend) for name, _, d in (e.partition("=") for e in args.extra)]
    base = None
    print(f"{len(patches)} real patches of {model.patch} px, batches of 256, best of 3")
    print("| what | ms per patch | patches/s | ratio to the detector alone |\n|---|---|---|---|")
    for name, backend in rows:
        ms = per_patch_ms(backend, patches)
        base = base or ms
        print(f"| {name} | {ms:.3f} | {1000 / ms:.0f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
