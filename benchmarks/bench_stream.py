"""Reading a slide: aligned streaming against naive 512-px read_region and decoding each tile once.

    python benchmarks/bench_stream.py SLIDE.svs [--workers 2]

All three read the whole of level 0. Target: streaming at least 0.8x of
decode-once (the floor: every native tile decoded exactly once).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import machine
from mitoqp.slide import open_slide
from mitoqp.stream import plan_windows, stream_windows


def decode_once(path: Path, workers: int) -> int:
    """Every native tile of level 0 decoded once with tifffile (the floor)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].keyframe
        fd = os.open(path, os.O_RDONLY)

        def one(i: int) -> int:
            data = os.pread(fd, page.databytecounts[i], page.dataoffsets[i])
            return page.decode(data, i, jpegtables=page.jpegtables)[0].size

        with ThreadPoolExecutor(workers) as pool:
            n = sum(pool.map(one, range(len(page.dataoffsets))))
        os.close(fd)
    return n


def naive_read_region(path: Path, size: int = 512) -> int:
    import tiffslide

    ts = tiffslide.TiffSlide(path)
    w, h = ts.dimensions
    n = 0
    for y in range(0, h, size):
        for x in range(0, w, size):
            n += np.asarray(ts.read_region((x, y), 0, (min(size, w - x), min(size, h - y)))).size
    return n


def aligned_stream(path: Path, workers: int) -> int:
    with open_slide(path) as slide:
        plan = plan_windows(slide, 0, 1.0, halo_work=88)
        return sum(w.rgb.size for w in stream_windows(slide, plan, workers))


def timed(fn, *a) -> float:
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with open_slide(args.slide) as s:
        w, h = s.info.dimensions
    mp = w * h / 1e6
    aligned_stream(args.slide, args.workers)  # warm the page cache
    t_once1 = timed(decode_once, args.slide, 1)
    t_once = timed(decode_once, args.slide, args.workers)
    t_stream = timed(aligned_stream, args.slide, args.workers)
    t_naive = timed(naive_read_region, args.slide)
    print(f"machine: {machine()}")
    print(f"slide: {args.slide.name} {w}x{h} ({mp:.0f} MP), workers {args.workers}")
    print(f"decode once, 1 thread       : {mp / t_once1:7.1f} MP/s")
    print(f"decode once, {args.workers} threads      : {mp / t_once:7.1f} MP/s")
    print(f"aligned streaming (mitoqp)  : {mp / t_stream:7.1f} MP/s")
    print(f"naive 512-px read_region    : {mp / t_naive:7.1f} MP/s")
    print(f"streaming / decode-once ({args.workers} threads): {t_once / t_stream:.2f}x (target >= 0.8x)")
    print(f"streaming / decode-once (1 thread) : {t_once1 / t_stream:.2f}x")
    print(f"streaming / naive read_region      : {t_naive / t_stream:.2f}x")


if __name__ == "__main__":
    main()
