"""Detections as GeoJSON that QuPath imports as detection objects.

QuPath reads `objectType` only from inside `properties`, needs a colour with
every classification name, wants UUID ids and a flat dict of numeric
measurements (../shared/docs/facts.md).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from mitoqp.io_utils import atomic_path

if TYPE_CHECKING:
    from mitoqp.hotspot import Hotspot

CLASS_NAME = "Mitotic figure"
CLASS_COLOR = [255, 0, 0]
# with a subtype head every figure is one of these two
ATYPICAL_CLASS = ("Mitotic figure (atypical)", [255, 0, 255])
NORMAL_CLASS = ("Mitotic figure (normal)", [255, 128, 0])
CIRCLE_VERTICES = 32
FIGURE_AREA_UM2 = 50.0  # drawn size of a detection without a measured blob (a dense model's peak)


def circle(x: float, y: float, r: float, n: int = CIRCLE_VERTICES) -> list[list[float]]:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = [[round(float(x + r * np.cos(t)), 2), round(float(y + r * np.sin(t)), 2)] for t in a]
    return ring + [ring[0]]


def detection_features(xy: np.ndarray, scores: np.ndarray, area_um2: np.ndarray, mpp: float,
                       shape: str = "circle", atypical: np.ndarray | None = None,
                       atypical_threshold: float = 0.5) -> Iterator[dict]:
    """One Feature per detection, lazily; `shape` is "circle" (extent of the blob) or "point".

    With `atypical` scores each figure is classed atypical or normal at `atypical_threshold`
    and carries an `atypical_score` measurement.
    """
    subtype = np.full(len(scores), np.nan) if atypical is None else np.asarray(atypical, float)
    for (x, y), s, a, at in zip(np.asarray(xy, float), np.asarray(scores, float), np.asarray(area_um2, float), subtype):
        if shape == "point":
            geom = {"type": "Point", "coordinates": [round(float(x), 2), round(float(y), 2)]}
        else:  # a dense model's peaks have no blob: a circle of a typical figure's size
            r_px = max(np.sqrt((a if np.isfinite(a) else FIGURE_AREA_UM2) / np.pi) / mpp, 2.0)
            geom = {"type": "Polygon", "coordinates": [circle(x, y, r_px)]}
        name, color = CLASS_NAME, CLASS_COLOR
        measurements = {"score": round(float(s), 5)}
        if np.isfinite(a):
            measurements["area_um2"] = round(float(a), 3)
        if not np.isnan(at):
            name, color = ATYPICAL_CLASS if at >= atypical_threshold else NORMAL_CLASS
            measurements["atypical_score"] = round(float(at), 5)
        yield {
            "type": "Feature",
            "geometry": geom,
            "properties": {
                "objectType": "detection",
                "classification": {"name": name, "color": color},
                "measurements": measurements,
            },
        }


ID_NAMESPACE = uuid.UUID("5d0c4f3e-8a51-4c2b-9a57-6d3f0e2b7c11")  # mitoqp's, for name-based object ids


def object_id(file_name: str, index: int) -> str:
    """A UUID (what QuPath wants) from the output file's name and the feature's place in it: a re-run, a run
    resumed after a crash and a run on another machine write the same ids, so their files are byte-identical."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{file_name}/{index}"))


def write_detections(path: Path, features: Iterable[dict]) -> None:
    """A FeatureCollection written one feature at a time (memory does not grow with the count); each feature
    gets its id here (`object_id`)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for i, feat in enumerate(features):
            feat = {"type": feat["type"], "id": object_id(path.name, i), **feat}
            f.write((",\n" if i else "\n") + json.dumps(feat))
        f.write("\n]}\n")


HOTSPOT_CLASS = ("Mitotic hotspot", [0, 0, 0])
TISSUE_CLASS = ("Tissue (mitoqp)", [0, 160, 0])


def tissue_feature(geom, area_mm2: float) -> dict:
    """The analysed tissue (level-0 shapely geometry) as a QuPath annotation with its area."""
    from shapely.geometry import mapping

    shape = mapping(geom)
    return {
        "type": "Feature",
        "geometry": json.loads(json.dumps(shape)),
        "properties": {
            "objectType": "annotation",
            "name": "Analysed tissue",
            "classification": {"name": TISSUE_CLASS[0], "color": TISSUE_CLASS[1]},
            "measurements": {"Tissue area mm2": round(float(area_mm2), 6)},
        },
    }


def hotspot_feature(spot: "Hotspot", score: int | None = None) -> dict:
    """The hotspot window as a QuPath annotation (a 128-gon or a square) with its count, density and score."""
    x, y = spot.centre
    if spot.shape == "circle":
        ring = circle(x, y, spot.size_px, 128)
    else:
        h = spot.size_px / 2
        ring = [[round(float(a), 2), round(float(b), 2)] for a, b in
                ((x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h), (x - h, y - h))]
    measurements = {"Mitotic figures": spot.count, "Window area mm2": round(spot.area_mm2, 6),
                    "Figures per mm2": round(spot.count / spot.area_mm2, 4)}
    if score is not None:
        measurements["Nottingham mitotic score"] = score
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "name": f"Hotspot: {spot.count} in {spot.area_mm2:g} mm2",
            "classification": {"name": HOTSPOT_CLASS[0], "color": HOTSPOT_CLASS[1]},
            "measurements": measurements,
        },
    }
