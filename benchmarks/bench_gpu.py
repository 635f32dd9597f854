"""Model time per patch on a CUDA GPU (the torch backend) against ONNX Runtime on the CPU, in the same run.

    python benchmarks/bench_gpu.py [--model DIR] [--patches FILE.npz] [--batches 256,1024,4096]
    python benchmarks/bench_gpu.py --save-patches FILE.npz   # the export's check patches, for a machine without the data

Each ONNX file of the model folder (the detector, the subtype model) is scored on every patch by ONNX Runtime
(FP32, all the CPU's cores: the reference) and by the torch backend on the GPU: FP32 and FP16 eager, and FP16
compiled (`torch.compile`: the backend's default on CUDA; the compile is in "first batches s"). Per row: ms per
patch at each batch size (best of 3, host-to-device copies and results back included), the speed against the
reference, and how many decisions (detector threshold, atypical threshold) differ from it, with the largest
score gap. Real patches around the candidates of the validation fields, as the export checks them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import SHARED, machine, per_patch_ms
from mitoqp.export.onnx_export import check_patches
from mitoqp.runtime.model import default_model_dir, load_model
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend


def gpu_backends(what: str, weights: Path) -> list[tuple[str, object, float]]:
    """(name, backend, when its building started) for each CUDA variant that loads."""
    from mitoqp.runtime.torch_backend import TorchBackend

    rows = []
    for precision, compiled in (("fp32", False), ("fp16", False), ("fp16", True)):  # the last: the CUDA default
        name = f"torch CUDA {precision.upper()}" + (", compiled" if compiled else ", eager")
        t = time.perf_counter()
        try:
            rows.append((name, TorchBackend(weights, device="cuda", precision=precision, compile_model=compiled), t))
        except Exception as exc:  # a variant that does not load is a finding, not the end of the run
            print(f"| {what} | {name} | failed: {str(exc).splitlines()[0][:160]} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=default_model_dir())
    ap.add_argument("--patches", type=Path, default=None, help="an .npz of patches (else the export's check patches)")
    ap.add_argument("--save-patches", type=Path, default=None, help="write the check patches to this .npz and stop")
    ap.add_argument("--count", type=int, default=4096, help="patches per timing (the real ones repeated)")
    ap.add_argument("--batches", default="256,1024,4096")
    args = ap.parse_args()
    model = load_model(args.model, backend="onnxruntime")
    if args.patches is None:
        real, _ = check_patches(SHARED / "ami-br", SHARED / "annotations" / "midog2021.json", model.patch,
                                model.config.get("candidates", {}), limit=1024)
    else:
        real = np.load(args.patches)["patches"]
    if args.save_patches is not None:
        np.savez_compressed(args.save_patches, patches=real)
        print(f"{args.save_patches}: {len(real)} patches of {real.shape[1]} px")
        return
    batches = [int(b) for b in args.batches.split(",")]
    timed = np.concatenate([real] * -(-args.count // len(real)))[: args.count]
    files = [("detector", "model.onnx", model.threshold, 0)]
    sub = model.config.get("subtype_model")
    if sub and "members" not in sub:
        files.append(("subtype", sub["file"], float(model.config["atypical_threshold"]), int(sub.get("output", 1))))
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        gpu = None
    print(f"machine: {machine()}; GPU: {gpu or 'none'}")
    print(f"{len(real)} real patches of {model.patch} px (timed on {len(timed)}: the real ones repeated), best of 3; "
          "decisions compared with ONNX Runtime FP32 on the CPU, on the real patches")
    print("| model file | backend | first batches s | " + " | ".join(f"ms/patch @{b}" for b in batches)
          + f" | patches/s @{batches[-1]} | speed vs CPU | decisions differ | max score gap |")
    print("|---" * (7 + len(batches)) + "|")
    for what, onnx_file, threshold, column in files:
        cpu = OnnxRuntimeBackend(args.model / onnx_file)
        reference = cpu.predict(real)[:, column]
        rows = [("ONNX Runtime CPU FP32", cpu, None)]
        if gpu:
            for name, backend, t in gpu_backends(what, (args.model / onnx_file).with_suffix(".pt")):
                try:
                    for n in (256, 7, 256):  # compiles here (the sizes a slide sends: full batches and a remainder)
                        backend.predict(real[:n])
                except Exception as exc:
                    print(f"| {what} | {name} | failed: {str(exc).splitlines()[0][:160]} |")
                    continue
                rows.append((name, backend, time.perf_counter() - t))
        base = None
        for name, backend, first in rows:
            ms = [per_patch_ms(backend, timed, b) for b in batches]
            base = base or ms[-1]
            score = backend.predict(real)[:, column]
            flips = int(((score >= threshold) != (reference >= threshold)).sum())
            print(f"| {what} | {name} | {'-' if first is None else f'{first:.1f}'} | "
                  + " | ".join(f"{m:.4f}" for m in ms)
                  + f" | {1000 / ms[-1]:.0f} | {base / ms[-1]:.1f}x | {flips} of {len(real)} | "
                  f"{np.abs(score - reference).max():.4f} |", flush=True)


if __name__ == "__main__":
    main()
