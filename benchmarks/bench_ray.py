"""Batch throughput of the Ray executor against the local one, on the same slides in the same run.

    python benchmarks/bench_ray.py [--slides 8] [--megapixels 40] [--model DIR] [--repeat 1]

Generates SLIDES JPEG-tiled slides of real tissue (benchmarks/make_slide.py's
kind), then times whole `mitoqp run` commands on them: the local executor
(one slide at a time, inference on all cores), Ray with one task at a time
holding every core (`--ray-cpus-per-slide` = cores), and Ray with one task per
core. Prints slides per minute and the ratio to local. Ray's own start and
stop (a local instance) is timed apart, since it is paid once per batch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, real_patches
from mitoqp.synthetic_slide import mosaic_source, write_svs_like


def make_slides(folder: Path, n: int, megapixels: float) -> list[Path]:
    patches = real_patches()
    side = int((megapixels * 1e6) ** 0.5) // 256 * 256
    paths = []
    for i in range(n):
        path = folder / f"slide{i:03d}.svs"
        write_svs_like(path, mosaic_source(patches, seed=i), side, side, 0.25, 256, levels=3, quality=85)
        paths.append(path)
    return paths


def timed_run(slides: list[Path], out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "mitoqp.cli", "run", "-q", *map(str, slides), "-o", str(out), *extra]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(extra) or 'local'} failed: {r.stderr[-1000:]}")
    return wall


def ray_start_stop() -> float:
    code = ("import ray, time; t = time.perf_counter(); ray.init(include_dashboard=False, log_to_driver=False); "
            "ray.shutdown(); print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--megapixels", type=float, default=40.0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeat", type=int, default=1, help="rounds; each round runs every mode once, interleaved")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    model = ["--model", args.model] if args.model else []
    modes = {
        "local": [],
        f"ray, 1 task x {cores} CPUs": ["--executor", "ray", "--ray-cpus-per-slide", str(cores)],
        f"ray, {cores} tasks x 1 CPU": ["--executor", "ray", "--ray-cpus-per-slide", "1"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        slides = make_slides(Path(tmp), args.slides, args.megapixels)
        print(f"machine: {machine()}")
        print(f"{len(slides)} slides of {args.megapixels:.0f} MP generated in {time.perf_counter() - t:.0f} s")
        walls: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.repeat):
            for mode, extra in modes.items():
                walls[mode].append(timed_run(slides, Path(tmp) / f"out-{r}-{len(walls[mode])}-{extra[-1:]}",
                                             [*model, *extra]))
        start_stop = ray_start_stop()
    local = min(walls["local"])
    print(f"local Ray start + stop: {start_stop:.1f} s (once per batch)")
    print("| executor | wall s (best of rounds) | slides/min | throughput vs local |")
    print("|---|---|---|---|")
    for mode, w in walls.items():
        best = min(w)
        print(f"| {mode} | {best:.1f} | {60 * len(slides) / best:.2f} | {local / best:.2f} |")


if __name__ == "__main__":
    main()
