"""Regions of interest from a QuPath GeoJSON export (level-0 pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import shapely
import shapely.geometry


def read_roi(path: Path) -> shapely.Geometry:
    """Union of the polygons and multipolygons in a QuPath GeoJSON export."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read ROI {path}: {exc}") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features", [])
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise ValueError(f"ROI {path} is not GeoJSON (no features)")
    polys = []
    for f in feats:
        try:
            geom = shapely.geometry.shape(f["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"ROI {path} has a bad geometry: {exc}") from None
        if geom.geom_type in ("Polygon", "MultiPolygon"):
            polys.append(shapely.make_valid(geom))
    if not polys:
        raise ValueError(f"ROI {path} holds no polygon")
    roi = shapely.union_all(polys)
    shapely.prepare(roi)
    return roi
