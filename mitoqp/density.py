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

import uuid
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
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": TILE_CLASS[0], "color": TILE_CLASS[1]},
                "measurements": {"Mitotic figures": n, "Tissue area mm2": round(a, 6),
                                 "Figures per mm2": round(n / a, 3)},
            },
        }
