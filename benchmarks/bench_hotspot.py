"""Hotspot search: the exact circle and square searches against the circles-centred-on-a-detection search they
replaced (a KD-tree count per detection: fast, but it misses windows not centred on a figure).

50,000 detections on an 80,000 x 60,000 px slide (20 x 15 mm at 0.25 um/px), 2 mm^2 windows; three layouts:
uniform, uniform with one dense cluster, and an extreme cluster (1,700 figures in the best 2 mm^2); and a
fourth like the 991 MP benchmark slide's (`make_slide.py` tiles one field): one field's 320 detections
repeated 16 x 16 times over 32,000 px, 81,920 in all, 1,300 per mm^2. Prints seconds, the ratio to the
reference and the counts (exact >= centred). Target: under 2 s on 50,000.

    python benchmarks/bench_hotspot.py [--n 50000]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.spatial import cKDTree

from common import best_of, machine
from mitoqp.hotspot import find_hotspot

MPP, AREA = 0.25, 2.0


def centred(xy: np.ndarray) -> int:
    r = np.sqrt(AREA / np.pi) * 1000 / MPP
    return int(cKDTree(xy).query_ball_point(xy, r, return_length=True).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    span = [80000, 60000]
    layouts = {
        "uniform": rng.uniform([0, 0], span, (n, 2)),
        "one cluster": np.concatenate([rng.uniform([0, 0], span, (n - n // 20, 2)),
                                       rng.normal([30000, 20000], 2000, (n // 20, 2))]),
        "extreme cluster": np.concatenate([rng.uniform([0, 0], span, (n - n // 10, 2)),
                                           rng.normal([30000, 20000], 4000, (n // 10, 2))]),
        "tiled field": (rng.uniform(0, 1968, (320, 1, 1, 2))
                        + 1968 * np.stack(np.meshgrid(np.arange(16), np.arange(16)), -1)[None]).reshape(-1, 2),
    }
    find_hotspot(layouts["uniform"][:200], AREA, MPP, "circle")  # compile
    find_hotspot(layouts["uniform"][:200], AREA, MPP, "square")
    print(machine())
    print("| layout | centred-circle s | exact circle s (ratio) | exact square s (ratio) | counts centred / circle / square |")
    print("|---|---|---|---|---|")
    for name, xy in layouts.items():
        t_ref = best_of(lambda: centred(xy), args.repeat)
        t_c = best_of(lambda: find_hotspot(xy, AREA, MPP, "circle"), args.repeat)
        t_s = best_of(lambda: find_hotspot(xy, AREA, MPP, "square"), args.repeat)
        counts = (centred(xy), find_hotspot(xy, AREA, MPP, "circle").count, find_hotspot(xy, AREA, MPP, "square").count)
        print(f"| {name} | {t_ref:.3f} | {t_c:.3f} ({t_c / t_ref:.2f}x) | {t_s:.3f} ({t_s / t_ref:.2f}x) | "
              f"{counts[0]} / {counts[1]} / {counts[2]} |")


if __name__ == "__main__":
    main()
