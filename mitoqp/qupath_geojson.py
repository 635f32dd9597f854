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
FEATURE_CHUNK = 4096  # detections turned into features at once
FIGURE_AREA_UM2 = 50.0  # drawn size of a detection without a measured blob (a dense model's peak)


def circle(x: float, y: float, r: float, n: int = CIRCLE_VERTICES) -> list[list[float]]:
    """A closed ring of n vertices (level-0 px, two decimals)."""
    return circles(np.array([[x, y]], float), np.array([r], float), n)[0].tolist()


def circles(xy: np.ndarray, r: np.ndarray, n: int = CIRCLE_VERTICES) -> np.ndarray:
    """(N, n + 1, 2) closed rings around each centre, rounded to two decimals."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.round(np.stack([xy[:, :1] + r[:, None] * np.cos(a), xy[:, 1:] + r[:, None] * np.sin(a)], -1), 2)
    return np.concatenate([ring, ring[:, :1]], 1)


def detection_features(xy: np.ndarray, scores: np.ndarray, area_um2: np.ndarray, mpp: float,
                       shape: str = "circle", atypical: np.ndarray | None = None,
                       atypical_threshold: float = 0.5) -> Iterator[dict]:
    """One Feature per detection, lazily; `shape` is "circle" (extent of the blob) or "point".

    With `atypical` scores each figure is classed atypical or normal at `atypical_threshold`
    and carries an `atypical_score` measurement. Circles are made a chunk at a time in numpy:
    rounding 33 vertices one by one took most of a crowded slide's write stage.
    """
    xy = np.asarray(xy, float).reshape(-1, 2)
    scores, area_um2 = np.asarray(scores, float), np.asarray(area_um2, float)
    subtype = np.full(len(scores), np.nan) if atypical is None else np.asarray(atypical, float)
    for lo in range(0, len(xy), FEATURE_CHUNK):
        hi = min(lo + FEATURE_CHUNK, len(xy))
        if shape == "point":
            geoms = [{"type": "Point", "coordinates": p} for p in np.round(xy[lo:hi], 2).tolist()]
        else:  # a dense model's peaks have no blob: a circle of a typical figure's size
            a = area_um2[lo:hi]
            r_px = np.maximum(np.sqrt(np.where(np.isfinite(a), a, FIGURE_AREA_UM2) / np.pi) / mpp, 2.0)
            geoms = [{"type": "Polygon", "coordinates": [ring]} for ring in circles(xy[lo:hi], r_px).tolist()]
        for geom, s, a, at in zip(geoms, scores[lo:hi].tolist(), area_um2[lo:hi].tolist(), subtype[lo:hi].tolist()):
            name, color = CLASS_NAME, CLASS_COLOR
            measurements = {"score": round(s, 5)}
            if np.isfinite(a):
                measurements["area_um2"] = round(a, 3)
            if not np.isnan(at):
                name, color = ATYPICAL_CLASS if at >= atypical_threshold else NORMAL_CLASS
                measurements["atypical_score"] = round(at, 5)
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
