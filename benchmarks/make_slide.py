"""Generate a large pyramidal, JPEG-tiled, SVS-like TIFF from real tissue (AMi-Br patches).

    python benchmarks/make_slide.py OUT.svs --megapixels 1000 [--tile 256] [--mpp 0.25] [--patches FILE.npz]

`--patches`: lay these patches instead (an .npz that `bench_gpu.py --save-patches` writes), for a machine
that has not got the data folder.

The slide is written tile by tile (bounded memory), with MPP in its Aperio
description so readers find the resolution, and a 3-level pyramid.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import real_patches
from mitoqp.synthetic_slide import mosaic_source, write_svs_like


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--megapixels", type=float, default=1000.0, help="level-0 size (square slide)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--patches", type=Path, default=None, help="an .npz of patches (default: the AMi-Br patches)")
    args = ap.parse_args()
    side = int((args.megapixels * 1e6) ** 0.5) // args.tile * args.tile
    t = time.perf_counter()
    patches = list(np.load(args.patches)["patches"]) if args.patches else real_patches()
    write_svs_like(args.out, mosaic_source(patches), side, side, args.mpp, args.tile, levels=3, quality=args.quality)
    size = args.out.stat().st_size / 1e6
    print(f"{args.out}: {side}x{side} px ({side * side / 1e6:.0f} MP), {size:.0f} MB, {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
