"""`mitoqp bench SLIDE...`: latency per slide, as a scanning centre measures it.

Each slide is run end to end (outputs written to a temporary folder) `repeat`
times after a warm-up that is not timed: the numba kernels compile (the front
end's and the hotspot search's) and the backend runs its first batches (a TensorRT engine is built or loaded, torch
compiles) before the clock starts. Reported per slide: wall time (min and
median), seconds and share of each stage, megapixels and patches per second,
peak memory, and what it ran on.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mitoqp.batch import RunConfig, expand_inputs, output_name, process_slide, versions
from mitoqp.candidates import find_candidates
from mitoqp.dense import tiles_per_batch
from mitoqp.hotspot import SHAPES, find_hotspot
from mitoqp.io_utils import write_json_atomic
from mitoqp.pipeline import HOTSPOT_MM2, Options
from mitoqp.runtime.model import Model
from mitoqp.slide import SlideError, open_slide
from mitoqp.stain import hematoxylin

STAGES = ("tissue", "read", "deconvolve", "candidates", "patches", "model", "merge", "write")


def backend_parts(backend) -> list:
    """The backend and every backend inside it (a subtype join's two models, a cascade's prefilter and full model,
    TTA's and an ensemble's inner ones): a join sends its subtype model only the detections, so warming the
    outer backend alone can leave the subtype model to compile inside the first timed run (it did on a GPU:
    benchmarks/RESULTS.md, "On a GPU")."""
    inner = [getattr(backend, a) for a in ("detector", "subtype", "prefilter", "inner") if hasattr(backend, a)]
    inner += list(getattr(backend, "members", []))
    return [backend] + [p for b in inner for p in backend_parts(b)]


def warm_up(model: Model, batch: int) -> float:
    """Compile the kernels and run the first batches of every backend the model holds; returns the seconds."""
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    rgb = rng.integers(60, 250, (512, 512, 3), dtype=np.uint8)
    find_candidates(hematoxylin(rgb), model.mpp, model.candidates)
    # the hotspot search runs in the write stage of the first slide with detections: compiled there, with a
    # cold numba cache, it put 9-12 s into that stage (benchmarks/RESULTS.md, "The dense models on the GPU")
    for shape in SHAPES:
        find_hotspot(rng.uniform(0, 8000, (64, 2)), HOTSPOT_MM2, model.mpp, shape)
    if model.kind == "dense":  # a run sends a dense model only as many tiles as fit BATCH_PIXELS at once
        batch = tiles_per_batch(model.patch, batch)
    patches = rng.integers(0, 256, (batch, model.patch, model.patch, 3), dtype=np.uint8)
    for part in backend_parts(model.backend):
        for n in (batch, min(7, batch), batch):
            part.predict(patches[:n])
    return time.perf_counter() - t


def reset_peak_memory() -> bool:
    """Start VmHWM afresh for the next slide (Linux: clear_refs 5); False where that is not possible."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float | None:
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def device_name(backend_name: str) -> str:
    if "cuda" in backend_name or backend_name.startswith("tensorrt"):
        try:
            import torch

            return torch.cuda.get_device_name()
        except Exception:
            return "CUDA GPU"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def bench_slide(path: Path, model: Model, opts: Options, repeat: int, reader: str) -> dict:
    row: dict = {"slide": str(path), "name": output_name(path)}
    try:
        with open_slide(path, reader) as slide:
            w, h = slide.info.dimensions
    except (SlideError, ValueError, OSError) as exc:
        return {**row, "status": "error", "error": str(exc).splitlines()[0]}
    walls, timings, memory, passed = [], [], [], []
    cascade = model.backend if hasattr(model.backend, "passed") else None  # a prefilter cascade counts what it passes
    for _ in range(repeat):
        reset_peak_memory()
        before = (cascade.seen, cascade.passed) if cascade is not None else (0, 0)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            rec = process_slide(path, row["name"], model, RunConfig(Path(out), opts, overwrite=True, reader=reader))
            walls.append(time.perf_counter() - t)
        if cascade is not None and cascade.seen > before[0]:
            passed.append((cascade.passed - before[1]) / (cascade.seen - before[0]))
        if rec["status"] != "ok":
            return {**row, "status": "error", "error": rec["error"]}
        timings.append(rec["timings"])
        memory.append(peak_memory_mb())
    wall = statistics.median(walls)
    stages = {s: statistics.median(t.get(s, 0.0) for t in timings) for s in STAGES}
    waits = {s: statistics.median(t.get(s, 0.0) for t in timings) for s in ("read_wait", "model_wait")}
    return {
        **row, "status": "ok", "megapixels": round(w * h / 1e6, 1), "tissue_mm2": rec["tissue_area_mm2"],
        "patches": rec["candidates"], "detections": rec["mitotic_count"], "runs": repeat,
        "wall_min_s": round(min(walls), 3), "wall_median_s": round(wall, 3),
        "megapixels_per_s": round(w * h / 1e6 / wall, 3), "patches_per_s": round(rec["candidates"] / wall, 1),
        "stages_s": {s: round(v, 3) for s, v in stages.items()},
        "stage_share": {s: round(v / wall, 3) for s, v in stages.items()},
        "waits_s": {s: round(v, 3) for s, v in waits.items()},
        "peak_memory_mb": round(max(m for m in memory if m is not None), 0) if any(memory) else None,
        "prefilter_passed_share": round(statistics.median(passed), 4) if passed else None,
    }


def format_table(report: dict) -> str:
    lines = [f"backend {report['backend']} ({report['precision']}) on {report['device']}; model {report['model']}; "
             f"warm-up {report['warm_up_s']} s, not timed; median of {report['repeat']} run(s)",
             "stages run at once where they overlap (front end beside the model, decoding ahead), "
             "so their shares can add up to more than 100%"]
    head = ["slide", "MP", "wall s (min)", "MP/s", "patches/s", "peak MB"] + list(STAGES) + ["prefilter passed"]
    lines.append(" | ".join(head))
    for r in report["slides"]:
        if r["status"] != "ok":
            lines.append(f"{r['name']} | error: {r['error']}")
            continue
        cells = [r["name"], f"{r['megapixels']:.0f}", f"{r['wall_median_s']:.2f} ({r['wall_min_s']:.2f})",
                 f"{r['megapixels_per_s']:.1f}", f"{r['patches_per_s']:.0f}", f"{r['peak_memory_mb'] or '-'}"]
        cells += [f"{r['stages_s'][s]:.2f} ({100 * r['stage_share'][s]:.0f}%)" for s in STAGES]
        share = r.get("prefilter_passed_share")
        cells.append("-" if share is None else f"{100 * share:.0f}%")
        lines.append(" | ".join(cells))
    return "\n".join(lines) + "\n"


def bench_main(inputs: list[str], model: Model, opts: Options, repeat: int = 3, reader: str = "auto",
               precision: str = "fp32", json_path: Path | None = None) -> dict:
    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError("no slides found in the inputs")
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}")
    warm = warm_up(model, opts.batch_size)
    libs = versions()
    libs.update({m: sys.modules[m].__version__ for m in ("numba", "torch", "tensorrt") if m in sys.modules})
    report = {
        "backend": model.backend.name, "precision": precision, "device": device_name(model.backend.name),
        "model": model.id, "model_sha256": model.sha256, "versions": libs, "repeat": repeat,
        "warm_up_s": round(warm, 2), "overlap": opts.overlap, "batch_size": opts.batch_size, "workers": opts.workers,
        "slides": [bench_slide(p, model, opts, repeat, reader) for p in paths],
    }
    if json_path is not None:
        write_json_atomic(json_path, report)
    return report
