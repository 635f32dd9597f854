"""Mitotic density per ~250-um square of tissue, as QuPath tiles with measurements.

A count per slide hides where the figures are; a heat map at about a
quarter of a millimetre shows it. Each square of the grid that holds tissue
becomes a QuPath tile object with the measurements "Mitotic figures",
"Tissue area mm2" and "Figures per mm2" (per mm^2 of its tissue), so QuPath
colours the slide by density (Measure > Show measurement maps) on the slide
itself, without an image that would need registering. The squares follow the
tissue mask's grid, so a square's tissue area is exact on that mask.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from mitoqp.tissue import TissueMask

CELL_UM = 250.0
TILE_CLASS = ("Mitotic density", [230, 150, 40])


def density_grid(tissue: TissueMask, xy: np.ndarray, cell_um: float = CELL_UM) -> tuple[np.ndarray, np.ndarray, float]:
    """(figures per cell, tissue mm^2 per cell, cell side in level-0 px) on a grid of whole mask pixels."""
    px_um = tissue.scale * tissue.mpp  # micrometres per mask pixel
    k = max(1, int(round(cell_um / px_um)))
    h, w = tissue.mask.shape
    gh, gw = -(-h // k), -(-w // k)
    padded = np.zeros((gh * k, gw * k), bool)
    padded[:h, :w] = tissue.mask
    area = padded.reshape(gh, k, gw, k).sum(axis=(1, 3)) * (px_um / 1000) ** 2
    side = k * tissue.scale
    counts = np.zeros((gh, gw), np.int64)
    if len(xy):
        ij = np.floor(np.asarray(xy, float) / side).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < gw) & (ij[:, 1] >= 0) & (ij[:, 1] < gh)
        np.add.at(counts, (ij[ok, 1], ij[ok, 0]), 1)
    return counts, area, side


def density_features(tissue: TissueMask, xy: np.ndarray, cell_um: float = CELL_UM) -> Iterator[dict]:
    """One QuPath tile per grid square with tissue, its figures, tissue area and figures per mm^2 of tissue."""
    counts, area, side = density_grid(tissue, xy, cell_um)
    for gy, gx in zip(*np.nonzero(area > 0)):
        x0, y0 = gx * side, gy * side
        ring = [[round(float(x), 2), round(float(y), 2)] for x, y in
                ((x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side), (x0, y0))]
        n, a = int(counts[gy, gx]), float(area[gy, gx])
        yield {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": TILE_CLASS[0], "color": TILE_CLASS[1]},
                "measurements": {"Mitotic figures": n, "Tissue area mm2": round(a, 6),
                                 "Figures per mm2": round(n / a, 3)},
            },
        }


def activity_index(tissue: TissueMask, xy: np.ndarray, field_mm2: float, min_tissue: float = 0.5) -> tuple[float, int]:
    """UTS's slide-level mitotic activity index: the mean number of figures per field-sized square of tissue.

    Fernandez-Martin et al. (../shared/docs/papers/uts-teacher-student.txt, Sec. 3) average the detections
    over every tumour patch of the slide; without a tumour segmentation here, a square counts when at least
    `min_tissue` of it is tissue. Returns (figures per field, fields counted). It is diluted by quiet tumour,
    unlike the hotspot, which is what a pathologist's count mimics.
    """
    counts, area, side = density_grid(tissue, xy, np.sqrt(field_mm2) * 1000)
    full = (side * tissue.mpp / 1000) ** 2
    kept = area >= min_tissue * full
    return (float(counts[kept].mean()) if kept.any() else 0.0), int(kept.sum())


def tissue_fraction(tissue: TissueMask, centre: tuple[float, float], size_px: float, shape: str) -> float:
    """The share of a hotspot window (level-0 centre and radius or side) that is tissue, on the mask's pixels.

    Only the part of the window over the mask is rasterised; the window's own pixel count is summed row by
    row, so a 2 mm2 window over a small field (a fine mask) costs what the field costs.
    """
    h, w = tissue.mask.shape
    cx, cy = centre[0] / tissue.scale, centre[1] / tissue.scale
    s = size_px / tissue.scale
    half = s if shape == "circle" else s / 2
    x0, x1 = int(np.floor(cx - half)), int(np.ceil(cx + half))
    y0, y1 = int(np.floor(cy - half)), int(np.ceil(cy + half))

    def row_extent(yc: np.ndarray) -> np.ndarray:  # half-width of the window on rows through yc (NaN: none)
        if shape == "circle":
            d2 = s * s - (yc - cy) ** 2
            return np.where(d2 >= 0, np.sqrt(np.maximum(d2, 0)), np.nan)
        return np.where(np.abs(yc - cy) <= half, half, np.nan)

    rows = np.arange(y0, y1) + 0.5
    reach = row_extent(rows)
    ok = ~np.isnan(reach)
    lo = np.maximum(np.ceil(cx - reach[ok] - 0.5), x0)
    hi = np.minimum(np.floor(cx + reach[ok] - 0.5), x1 - 1)
    total = float(np.maximum(hi - lo + 1, 0).sum())
    ys0, ys1, xs0, xs1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if total == 0 or ys0 >= ys1 or xs0 >= xs1:
        return 0.0
    yy, xx = np.mgrid[ys0:ys1, xs0:xs1] + 0.5
    inside = (np.hypot(xx - cx, yy - cy) <= s) if shape == "circle" else ((np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half))
    return float((inside & tissue.mask[ys0:ys1, xs0:xs1]).sum() / total)
