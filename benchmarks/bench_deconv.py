"""Colour deconvolution: the fused numba pass against skimage.color.rgb2hed and a plain copy.

Same data (a mosaic of real H&E patches), same run; prints megapixels per
second and the ratios. Targets: at least 300x skimage, at least 0.8x a copy.

    python benchmarks/bench_deconv.py [--size 4096]
"""

from __future__ import annotations

import argparse

import numpy as np

from common import best_of, machine, tissue_image
from mitoqp.stain import deconvolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="square image side in pixels")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    from skimage.color import rgb2hed

    img = tissue_image(args.size)
    mp = img.shape[0] * img.shape[1] / 1e6
    out = np.empty(img.shape[:2] + (1,), np.float32)
    deconvolve(img, out=out)  # compile
    dst = np.empty_like(img)
    t_numba = best_of(lambda: deconvolve(img, out=out), args.repeat)
    t_copy = best_of(lambda: np.copyto(dst, img), args.repeat)
    small = img[:2048, :2048]  # 4 MP: large enough not to sit in cache
    t_sk = best_of(lambda: rgb2hed(small), 2) * (mp / (small.shape[0] * small.shape[1] / 1e6))
    print(f"machine: {machine()}")
    print(f"image: {img.shape[1]}x{img.shape[0]} real H&E mosaic ({mp:.1f} MP)")
    print(f"numba deconvolution : {mp / t_numba:8.1f} MP/s")
    print(f"plain copy (copyto) : {mp / t_copy:8.1f} MP/s")
    print(f"skimage rgb2hed     : {mp / t_sk:8.1f} MP/s (timed on 2048x2048, scaled)")
    print(f"ratio vs skimage    : {t_sk / t_numba:8.1f}x  (target >= 300x)")
    print(f"ratio vs copy       : {t_copy / t_numba:8.2f}x  (target >= 0.8x)")


if __name__ == "__main__":
    main()
