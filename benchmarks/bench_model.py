"""Model time per patch for the inference options, as ratios to the FP32 detector in the same run.

    python benchmarks/bench_model.py [--model DIR] [--extra NAME=DIR ...] [--batch 256]

Times the bundled (or given) model folder as it runs by default, its detector
alone (model.onnx, FP32), its FP16 and INT8 graphs (made here in a temporary
folder by the export's own functions, kept or not, so that the cost of a
precision the export refused is measured too, with the decisions it flips),
the torch backend, and test-time augmentation with 2, 4 and 8 views; each extra
folder (an ensemble, another recipe) is timed too. Real patches around the
candidates of the validation fields (as the export checks them), best of 3.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common import SHARED, machine, per_patch_ms
from mitoqp.export.onnx_export import check_patches
from mitoqp.export.precision import convert_fp16, quantize_int8
from mitoqp.runtime.backend import DihedralTTA
from mitoqp.runtime.model import default_model_dir, load_model
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=default_model_dir())
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=DIR")
    ap.add_argument("--patches", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    model = load_model(args.model)
    # the export's own patches: candidates of the validation fields, half to calibrate INT8, half to check
    patches, _ = check_patches(SHARED / "ami-br", SHARED / "annotations" / "midog2021.json", model.patch,
                               model.config.get("candidates", {}), limit=args.patches)
    calibration, check = patches[: len(patches) // 2], patches[len(patches) // 2:]
    tmp = Path(tempfile.mkdtemp())
    try:
        convert_fp16(args.model / "model.onnx", tmp / "fp16.onnx")
        quantize_int8(args.model / "model.onnx", tmp / "int8.onnx", calibration)
        fp32 = OnnxRuntimeBackend(args.model / "model.onnx")
        rows = [("detector alone, FP32 (model.onnx)", fp32),
                ("detector, FP16 graph (onnxconverter-common)", OnnxRuntimeBackend(tmp / "fp16.onnx")),
                ("detector, INT8 QDQ graph (static, percentile calibration)", OnnxRuntimeBackend(tmp / "int8.onnx"))]
        if (args.model / "model.pt").exists() and importlib.util.find_spec("torch"):
            rows.append(("detector, torch backend (CPU, FP32)", load_model(args.model, backend="torch").backend))
        rows += [(f"model folder as shipped ({model.backend.name})", model.backend)]
        rows += [(f"model folder, TTA {v} views", DihedralTTA(model.backend, v)) for v in (2, 4, 8)]
        rows += [(name, load_model(Path(d)).backend) for name, _, d in (e.partition("=") for e in args.extra)]
        reference = fp32.predict(check)[:, 0]
        t = model.threshold
        print(f"machine: {machine()}")
        print(f"{len(patches)} real patches of {model.patch} px, batches of {args.batch}, best of 3; decisions compared "
              f"with FP32 at the threshold {t:.4f} on {len(check)} patches ({int((reference >= t).sum())} positive)")
        print("| what | ms per patch | patches/s | speed vs FP32 detector | decisions flipped | max score gap |")
        print("|---|---|---|---|---|---|")
        base = None
        for name, backend in rows:
            ms = per_patch_ms(backend, patches, args.batch)
            base = base or ms
            score = backend.predict(check)[:, 0]
            flips = int(((score >= t) != (reference >= t)).sum())
            print(f"| {name} | {ms:.3f} | {1000 / ms:.0f} | {base / ms:.2f}x | {flips} | {np.abs(score - reference).max():.4f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
