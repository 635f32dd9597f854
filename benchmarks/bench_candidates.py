"""Candidates: the numba kernels against the scipy path they replaced, and against deconvolution.

Same data (a mosaic of real H&E patches, hematoxylin density at 0.25 um/px),
same run; prints megapixels per second and ratios. Target: the candidate stage
at >= 200 MP/s. Both paths give the same blobs (checked here and in the tests).

    python benchmarks/bench_candidates.py [--size 4096]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from common import best_of, machine, tissue_image
from mitoqp.blob_kernels import blob_stats, dense_blobs, dense_mask, reference_blobs
from mitoqp.candidates import CandidateParams, find_candidates
from mitoqp.stain import hematoxylin

MPP = 0.25


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="square image side in pixels")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    img = tissue_image(args.size)
    h = hematoxylin(img)
    mp = h.size / 1e6
    p = CandidateParams()
    weighted = replace(p, centre_power=2.0)
    peaks = replace(weighted, peak_area_um2=150.0, peak_um=8.0)  # the default's settings since mitoqp-v4.1
    sigma = p.sigma_um / MPP
    ours, ref = dense_blobs(h, sigma, p.threshold), reference_blobs(h, sigma, p.threshold)
    mask = dense_mask(h, sigma, p.threshold)[0]
    same = all(np.array_equal(a, b) for a, b in zip(ours, ref))
    rows = [
        ("deconvolution (numba, for scale)", best_of(lambda: hematoxylin(img), args.repeat)),
        ("smoothing + threshold (numba)", best_of(lambda: dense_mask(h, sigma, p.threshold), args.repeat)),
        ("blob statistics from row runs (numba)", best_of(lambda: blob_stats(mask), args.repeat)),
        ("candidate stage, mitoqp (find_candidates)", best_of(lambda: find_candidates(h, MPP, p), args.repeat)),
        ("candidate stage, scipy reference (filter, label, bincount)", best_of(lambda: reference_blobs(h, sigma, p.threshold), 2)),
        ("candidate stage, density-weighted centres (centre_power=2)",
         best_of(lambda: find_candidates(h, MPP, weighted), args.repeat)),
        ("candidate stage, + density peaks of blobs over 150 um^2 (the default)",
         best_of(lambda: find_candidates(h, MPP, peaks), args.repeat)),
    ]
    print(f"machine: {machine()}")
    print(f"image: {args.size}x{args.size} hematoxylin density of real H&E ({mp:.1f} MP), {len(ours[0])} blobs, "
          f"same blobs as scipy: {same}")
    print("| what | MP/s |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {mp / t:.0f} |")
    print(f"candidate stage / scipy reference: {rows[4][1] / rows[3][1]:.1f}x; "
          f"candidate stage / deconvolution: {rows[0][1] / rows[3][1]:.2f}x (target >= 200 MP/s); "
          f"density-weighted centres / plain: {rows[5][1] / rows[3][1]:.2f}x the time; "
          f"with peaks / weighted: {rows[6][1] / rows[5][1]:.2f}x the time "
          f"({len(find_candidates(h, MPP, peaks))} candidates against {len(find_candidates(h, MPP, weighted))})")


if __name__ == "__main__":
    main()
