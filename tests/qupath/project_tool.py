"""Look into (or add a lab's own annotation to) a QuPath project through paquo, in a process of its own.

    PAQUO_QUPATH_DIR=... python project_tool.py describe PROJECT
    PAQUO_QUPATH_DIR=... python project_tool.py annotate PROJECT   # a "Tumor" square on every entry
"""

import json
import sys
from collections import Counter

from paquo.classes import QuPathPathClass
from paquo.projects import QuPathProject
from shapely.geometry import box


def describe(path: str) -> dict:
    with QuPathProject(path, mode="r") as qp:
        entries = {}
        for e in qp.images:
            h = e.hierarchy
            entries[e.image_name] = {
                "detections": dict(Counter(d.path_class.name if d.path_class else None for d in h.detections)),
                "annotations": dict(Counter(a.path_class.name if a.path_class else None for a in h.annotations)),
                "tiles": len(h.tiles),
                "metadata": dict(e.metadata),
                "measurements": sorted({k for d in h.detections for k in d.measurements.keys()}),
                "figure_centroids": [[d.roi.centroid.x, d.roi.centroid.y] for d in h.detections
                                     if d.path_class is not None and d.path_class.name.startswith("Mitotic figure")],
            }
        classes = {c.name: list(c.color.to_rgb()) for c in qp.path_classes}
    return {"entries": entries, "classes": classes}


def annotate(path: str) -> None:
    with QuPathProject(path, mode="r+") as qp:
        tumor = QuPathPathClass("Tumor", color=(200, 0, 0))
        qp.path_classes = [*qp.path_classes, tumor]
        for e in qp.images:
            e.hierarchy.add_annotation(roi=box(0, 0, 128, 256), path_class=tumor)  # the left half of the top fields


if __name__ == "__main__":
    cmd, project = sys.argv[1], sys.argv[2]
    if cmd == "describe":
        print("PROJECT-JSON " + json.dumps(describe(project)))
    else:
        annotate(project)
