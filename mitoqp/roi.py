"""Regions of interest from a QuPath GeoJSON export (level-0 pixels), checked before a slide is touched.

A ROI file is input from outside, so every way it can be wrong ends in a
one-line ValueError: not JSON, not GeoJSON, a geometry shapely cannot build,
coordinates that are not finite or lie beyond any slide, a file too large to
hold, and self-intersections that would take minutes to repair (repair cost
grows with the square of the crossings; a hand-drawn outline has a few, a
hostile one millions).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import shapely
import shapely.geometry

MAX_FILE_BYTES = 512 * 2**20  # about 10 million vertices as QuPath writes them
MAX_COORDINATE = 1e9  # level-0 pixels; the largest slides are under 1e6 px a side
MAX_REPAIR_VERTICES = 2000  # a self-intersecting polygon larger than this is refused, not repaired


def read_roi(path: Path) -> shapely.Geometry:
    """Union of the polygons and multipolygons in a QuPath GeoJSON export (other geometries are ignored)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{size / 2**20:.0f} MB, more than the {MAX_FILE_BYTES / 2**20:.0f} MB a ROI may be")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot read ROI {path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    polys = []
    for i, feature in enumerate(features_of(doc, path)):
        if not isinstance(feature, dict) or "geometry" not in feature:
            raise ValueError(f"ROI {path.name}: feature {i} is not a GeoJSON feature (no geometry)")
        geometry = feature["geometry"]
        if geometry is None:  # an unlocated feature: valid GeoJSON, nothing to analyse
            continue
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            if isinstance(geometry, dict) and isinstance(geometry.get("type"), str):
                continue  # points and lines (a QuPath point annotation) bound no area
            raise ValueError(f"ROI {path.name}: feature {i} has no geometry type")
        polys.extend(polygon_parts(geometry, f"ROI {path.name}: feature {i}"))
    if not polys:
        raise ValueError(f"ROI {path.name} holds no polygon with an area")
    roi = shapely.union_all(polys)
    shapely.prepare(roi)
    return roi


def features_of(doc, path: Path) -> list:
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
        return doc["features"]
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    if isinstance(doc, list):  # QuPath's "export as array"
        return doc
    raise ValueError(f"ROI {path.name} is not GeoJSON (no feature collection, feature or list of features)")


def polygon_parts(geometry: dict, where: str) -> list:
    """The valid polygons of one GeoJSON (multi)polygon, or a ValueError saying what is wrong with it."""
    try:
        with warnings.catch_warnings():  # NaN coordinates warn before they are refused below
            warnings.simplefilter("ignore", RuntimeWarning)
            geom = shapely.geometry.shape(geometry)
    except Exception as exc:  # shapely raises many kinds (GEOSException, TypeError, IndexError...) for bad coordinates
        first = str(exc).splitlines()
        raise ValueError(f"{where} has bad coordinates ({first[0] if first else type(exc).__name__})") from None
    xy = shapely.get_coordinates(geom)
    if not np.isfinite(xy).all():
        raise ValueError(f"{where} has a coordinate that is not a finite number")
    if len(xy) and np.abs(xy).max() > MAX_COORDINATE:
        raise ValueError(f"{where} has coordinates beyond {MAX_COORDINATE:.0e} px: not level-0 pixels of a slide")
    if not geom.is_valid:
        if len(xy) > MAX_REPAIR_VERTICES:
            raise ValueError(f"{where} crosses itself and has {len(xy)} vertices, too many to repair here; "
                             f"fix it in QuPath (Objects > Annotations > Simplify shape, or redraw)")
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and p.area > 0]
