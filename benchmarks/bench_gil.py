"""How much a busy thread beside it slows one model call, per backend: the GIL question of a GPU run.

    python benchmarks/bench_gil.py SLIDE [--batch 16] [--calls 60]

A run scores patches on the main thread while the front end of the next batches runs on another
(`--serial` off). ONNX Runtime lets go of Python's GIL once a call; PyTorch lets go and takes it back
around every operation, and while another thread wants the GIL each taking back can wait up to Python's
switch interval. Each backend's median call time is measured alone, beside the real front end
(streaming SLIDE's candidate patches), beside a thread of pure Python (the worst case), and beside the
deconvolution kernel run in a loop compiled with and without `nogil` (the front end's kernel holds no
GIL since this was measured), at Python's default switch interval (5 ms) and at 0.5 ms. On a GPU the
CUDA rows are added (eager and compiled).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

import numba

from common import machine
from mitoqp.candidates import CandidateParams
from mitoqp.pipeline import Options, halo_for, patch_batches, prepare
from mitoqp.runtime.model import load_model
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend
from mitoqp.runtime.torch_backend import TorchBackend
from mitoqp.slide import open_slide
from mitoqp.stain import BACKGROUND_BITS, RUIFROK_STAIN_FROM_OD, weighted_tables


def deconvolution_loops(stop: threading.Event) -> dict:
    """The front end's deconvolution (one thread, a 2304 px window) in a loop, with and without the GIL."""
    def kernel(flat, t_r, t_g, t_b, bits, out):
        for i in range(flat.shape[0] // 3):
            r, g, b = flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]
            out[i] = (t_r[r] + t_g[g] + t_b[b]) * np.float32((bits[r] & bits[g] & bits[b]) == 0)

    rgb = np.random.default_rng(0).integers(60, 250, 2304 * 2304 * 3, dtype=np.uint8)
    t = weighted_tables(RUIFROK_STAIN_FROM_OD, (0,))[0]
    out = np.empty(2304 * 2304, np.float32)
    loops = {}
    for name, flags in (("a kernel holding the GIL", {}), ("the kernel without it", {"nogil": True})):
        fn = numba.njit(boundscheck=False, **flags)(kernel)
        fn(rgb, t[0], t[1], t[2], BACKGROUND_BITS, out)  # compiled before any timing

        def loop(fn=fn) -> None:
            while not stop.is_set():
                fn(rgb, t[0], t[1], t[2], BACKGROUND_BITS, out)

        loops[name] = loop
    return loops


def backends(folder: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    rows = {"ONNX Runtime CPU": OnnxRuntimeBackend(folder / "model.onnx", threads=1),
            "torch CPU eager": TorchBackend(folder / "model.pt", device="cpu", threads=1)}
    if torch.cuda.is_available():
        rows["torch CUDA eager"] = TorchBackend(folder / "model.pt", device="cuda", compile_model=False)
        rows["torch CUDA compiled"] = TorchBackend(folder / "model.pt", device="cuda", compile_model=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("slide", type=Path, help="a slide to stream candidates from (benchmarks/make_slide.py)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calls", type=int, default=60)
    args = ap.parse_args()
    model = load_model(None)
    params = CandidateParams(**model.config["candidates"])
    stop = threading.Event()

    def front_end() -> None:
        while not stop.is_set():
            with open_slide(args.slide) as slide:
                prep = prepare(slide, model.mpp, halo_for(model.patch, params), Options(workers=1))
                for _ in patch_batches(slide, prep, params, model.patch, 256, 1):
                    if stop.is_set():
                        return

    def pure_python() -> None:
        while not stop.is_set():
            sum(i * i for i in range(10_000))

    with open_slide(args.slide) as slide:  # the patches the model is timed on: the slide's first candidates
        prep = prepare(slide, model.mpp, halo_for(model.patch, params), Options(workers=1))
        patches = next(iter(patch_batches(slide, prep, params, model.patch, args.batch, 1)))[2][: args.batch]
    rows = backends(model.directory)
    kernels = deconvolution_loops(stop)
    for b in rows.values():  # compiled here, before any timing
        for n in (args.batch, 7, args.batch):
            b.predict(patches[:n])
    print(f"machine: {machine()}; {len(patches)} patches a call, median of {args.calls} calls")
    print("| switch interval | beside | " + " | ".join(f"{k} ms (x alone)" for k in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    default = sys.getswitchinterval()
    try:
        for interval in (0.005, 0.0005):
            sys.setswitchinterval(interval)
            alone = {}
            besides = [("nothing", None), ("the front end", front_end), ("pure Python", pure_python)]
            for beside, work in besides + list(kernels.items()):
                stop.clear()
                thread = threading.Thread(target=work, daemon=True) if work else None
                if thread:
                    thread.start()
                    time.sleep(1.0)
                cells = []
                for name, b in rows.items():
                    times = []
                    for _ in range(args.calls):
                        t = time.perf_counter()
                        b.predict(patches)
                        times.append(time.perf_counter() - t)
                    ms = 1000 * float(np.median(times))
                    alone.setdefault(name, ms)
                    cells.append(f"{ms:.2f} ({ms / alone[name]:.1f}x)")
                stop.set()
                if thread:
                    thread.join()
                print(f"| {1000 * interval:.1f} ms | {beside} | " + " | ".join(cells) + " |", flush=True)
    finally:
        sys.setswitchinterval(default)


if __name__ == "__main__":
    main()
