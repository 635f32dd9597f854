"""A whole `mitoqp run` on one slide: seconds per stage, throughput, peak memory, candidates per mm^2.

    python benchmarks/bench_run.py SLIDE.svs [--model DIR] [--workers 2]

Memory is the process's peak resident set (VmHWM), which must stay flat
whatever the slide size (target: under 2 GB).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import machine, peak_rss_mb
from mitoqp.batch import RunConfig, run_batch
from mitoqp.pipeline import Options
from mitoqp.runtime.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    model = load_model(args.model, threads=args.threads)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        rec = run_batch([str(args.slide)], model, RunConfig(Path(out), Options(workers=args.workers)), progress=False)[0]
        wall = time.perf_counter() - t
    if rec["status"] != "ok":
        raise SystemExit(rec["error"])
    from mitoqp.slide import open_slide

    with open_slide(args.slide) as s:
        w, h = s.info.dimensions
    print(f"machine: {machine()}")
    print(f"slide: {args.slide.name} {w}x{h} ({w * h / 1e6:.0f} MP), tissue {rec['tissue_area_mm2']} mm2, {rec['windows']} windows")
    print(f"wall: {wall:.1f} s, {w * h / 1e6 / wall:.1f} MP/s of slide, peak memory {peak_rss_mb():.0f} MB")
    print(f"candidates: {rec['candidates']} ({rec['candidates_per_mm2']}/mm2), detections {rec['mitotic_count']}")
    print("seconds per stage: " + json.dumps(rec["timings"]))


if __name__ == "__main__":
    main()
