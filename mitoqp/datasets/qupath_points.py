"""A lab's own annotations: QuPath GeoJSON with points of a mitotic-figure class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely.geometry

FIGURE_NAMES = {"mitotic figure", "mitosis", "mitotic figures"}


def _class_name(props: dict) -> str:
    cls = props.get("classification") or props.get("class") or ""
    if isinstance(cls, dict):
        cls = cls.get("name", "")
    return str(cls).strip().lower()


def read_qupath_points(path: Path, names: set[str] = FIGURE_NAMES) -> np.ndarray:
    """(N, 2) level-0 centres of points or small polygons whose class is a mitotic figure."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"not a GeoJSON file: {path}: {exc}") from None
    features = doc.get("features", []) if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else doc
    if isinstance(features, dict):
        features = [features]
    if not isinstance(features, list):
        raise ValueError(f"no GeoJSON features in {path}")
    points = []
    for feat in features:
        if not isinstance(feat, dict) or "geometry" not in feat:
            raise ValueError(f"malformed GeoJSON feature in {path}")
        if _class_name(feat.get("properties") or {}) not in names:
            continue
        try:
            geom = shapely.geometry.shape(feat["geometry"])
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"bad geometry in {path}: {exc}") from None
        parts = getattr(geom, "geoms", [geom]) if geom.geom_type == "MultiPoint" else [geom]
        points.extend((p.centroid.x, p.centroid.y) for p in parts)
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)
