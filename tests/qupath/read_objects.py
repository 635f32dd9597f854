"""Read GeoJSON files with QuPath's own reader (PathIO.readObjects) and print what QuPath sees, as JSON.

Run in its own process (QuPath's JVM starts once per process):
    PAQUO_QUPATH_DIR=... python read_objects.py FILE...
"""

import json
import sys

from paquo.projects import QuPathProject  # noqa: F401  (starts QuPath's JVM on the classes in PAQUO_QUPATH_DIR)
import jpype


def describe(obj) -> dict:
    cls = obj.getPathClass()
    roi = obj.getROI()
    ml = obj.getMeasurementList()
    color = int(cls.getColor()) if cls is not None and cls.getColor() is not None else None
    return {
        "detection": bool(obj.isDetection()),
        "tile": bool(obj.isTile()),
        "annotation": bool(obj.isAnnotation()),
        "name": None if obj.getName() is None else str(obj.getName()),
        "area": float(roi.getArea()),
        "class": str(cls.toString()) if cls is not None else None,
        "rgb": None if color is None else [(color >> 16) & 255, (color >> 8) & 255, color & 255],
        "measurements": {str(k): float(ml.get(k)) for k in ml.getNames()},
        "roi": str(roi.getRoiName()),
        "centroid": [float(roi.getCentroidX()), float(roi.getCentroidY())],
        "vertices": int(roi.getNumPoints()),
    }


def main() -> None:
    PathIO = jpype.JClass("qupath.lib.io.PathIO")
    File = jpype.JClass("java.io.File")
    out = {path: [describe(o) for o in PathIO.readObjects(File(path))] for path in sys.argv[1:]}
    print("QUPATH-JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
