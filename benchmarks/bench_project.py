"""Writing detections into a QuPath project entry (paquo, QuPath 0.6.0 classes): the goal is 50,000 in under 30 s.

Times `ProjectWriter.write` (mitoqp's path: the slide's GeoJSON through QuPath's reader, bulk, no autoflush, then
the entry saved) against paquo's one-by-one `add_detection` with autoflush off, on the same points, in the same run.
Needs QuPath's classes: PAQUO_QUPATH_DIR=$(python ../shared/qupath/make_qupath_dir.py).

    python benchmarks/bench_project.py [--n 50000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import machine
from mitoqp.qupath_geojson import detection_features, write_detections
from mitoqp.qupath_project import ProjectWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = tmp / "field.png"
        Image.fromarray(np.full((2048, 2048, 3), 220, np.uint8)).save(image)
        xy = rng.uniform(0, 2048, (args.n, 2))
        write_detections(tmp / "field.geojson", detection_features(xy, rng.uniform(0.5, 1, args.n).astype(np.float32),
                                                                   np.full(args.n, 40.0), 0.25))
        writer = ProjectWriter(tmp / "proj")
        t = time.perf_counter()
        got = writer.write(image, tmp, "field", {"model_id": "bench", "mitotic_count": args.n})
        t_ours = time.perf_counter() - t

        from paquo.classes import QuPathPathClass
        from shapely.geometry import Point

        entry = writer.entry_for(image)
        cls = QuPathPathClass("Mitotic figure")
        t = time.perf_counter()
        with entry.hierarchy.no_autoflush():
            for x, y in xy:
                entry.hierarchy.add_detection(roi=Point(float(x), float(y)).buffer(3.6, 8), path_class=cls,
                                              measurements={"score": 0.9})
        entry.save()
        t_ref = time.perf_counter() - t
    print(machine())
    print("| detections | mitoqp write (GeoJSON, bulk) s | paquo add_detection loop s | ratio |")
    print("|---|---|---|---|")
    print(f"| {got['objects']} | {t_ours:.1f} | {t_ref:.1f} | {t_ours / t_ref:.2f}x |")


if __name__ == "__main__":
    main()
