"""Dense models: a fully convolutional network maps a window to probability maps; figures are its peaks.

A window's core is covered by square tiles of the model's input size that
overlap by twice its context (the pixels at a tile's edge whose output lacks
context are cut away), so every output pixel of the core was computed with
full context and exactly once. The stitched core map gives points by
`find_peaks`; peaks only from the core, so a seam never doubles a figure, and
the slide-wide suppression merges what lies closer than the minimum distance
across a seam, as it does for candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mitoqp.patches import PAD_VALUE
from mitoqp.peaks import find_peaks


BATCH_PIXELS = 8 * 1024 * 1024  # input pixels per forward pass: a pyramid's activations on 1024-px tiles are large


def tiles_per_batch(tile: int, batch_size: int) -> int:
    """How many tiles go through the model at once: `batch_size`, but no more than BATCH_PIXELS of input."""
    return max(1, min(batch_size, BATCH_PIXELS // (tile * tile)))


@dataclass(frozen=True)
class DenseSpec:
    """What model.json says about a dense model."""

    tile: int  # input size (px at the model's resolution)
    stride: int  # input pixels per output pixel
    context: int  # input pixels at each tile edge whose output is cut away
    min_distance_um: float  # peaks closer than this are one figure
    floor: float  # peaks below this score are not kept at all (the threshold is applied later)

    @staticmethod
    def from_config(cfg: dict) -> "DenseSpec":
        d = cfg.get("dense", {})
        spec = DenseSpec(int(cfg["input_size"]), int(d.get("output_stride", 1)), int(d.get("context_px", 0)),
                         float(d.get("min_distance_um", cfg.get("nms_um", 8.0))), float(d.get("peak_floor", 0.05)))
        if spec.tile % spec.stride or spec.context % spec.stride or spec.tile <= 2 * spec.context:
            raise ValueError(f"bad dense model settings: tile {spec.tile}, stride {spec.stride}, context {spec.context}")
        return spec


def tile_origins(x0: int, x1: int, spec: DenseSpec) -> list[int]:
    """Tile starts along one axis so that the tiles' valid parts cover [x0, x1) with no gap."""
    step = spec.tile - 2 * spec.context
    return list(range(x0 - spec.context, x1 - spec.context, step)) or [x0 - spec.context]


def cut_tiles(rgb: np.ndarray, core: tuple[int, int, int, int], spec: DenseSpec) -> tuple[np.ndarray, list]:
    """(N, tile, tile, 3) uint8 tiles over the core (glass-white past the window) and their origins."""
    x0, y0, x1, y1 = core
    h, w = rgb.shape[:2]
    origins = [(tx, ty) for ty in tile_origins(y0, y1, spec) for tx in tile_origins(x0, x1, spec)]
    tiles = np.full((len(origins), spec.tile, spec.tile, 3), PAD_VALUE, np.uint8)
    for i, (tx, ty) in enumerate(origins):
        sx0, sy0, sx1, sy1 = max(tx, 0), max(ty, 0), min(tx + spec.tile, w), min(ty + spec.tile, h)
        if sx1 > sx0 and sy1 > sy0:
            tiles[i, sy0 - ty:sy1 - ty, sx0 - tx:sx1 - tx] = rgb[sy0:sy1, sx0:sx1, :3]
    return tiles, origins


def stitch(maps: np.ndarray, origins: list, core: tuple[int, int, int, int], spec: DenseSpec) -> np.ndarray:
    """(K, h, w) map of the core at output resolution from each tile's valid part."""
    x0, y0, x1, y1 = core
    s, c = spec.stride, spec.context
    out = np.zeros((maps.shape[1], -(-(y1 - y0) // s), -(-(x1 - x0) // s)), np.float32)
    v = (spec.tile - 2 * c) // s  # valid output pixels per tile side
    for m, (tx, ty) in zip(maps, origins):
        ox, oy = (tx + c - x0) // s, (ty + c - y0) // s
        part = m[:, c // s:c // s + v, c // s:c // s + v]
        hh, ww = min(v, out.shape[1] - oy), min(v, out.shape[2] - ox)
        out[:, oy:oy + hh, ox:ox + ww] = part[:, :hh, :ww]
    return out


def window_peaks(maps: np.ndarray, core: tuple[int, int, int, int], spec: DenseSpec,
                 mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of the stitched core map: (N, 2) window-pixel centres and (N, K) the maps' values there."""
    x0, y0 = core[:2]
    s = spec.stride
    xy, _ = find_peaks(maps[0], spec.floor, spec.min_distance_um / (mpp * s))
    ix, iy = xy[:, 0].astype(int), xy[:, 1].astype(int)
    values = maps[:, iy, ix].T.astype(np.float32)
    centres = np.stack([x0 + xy[:, 0] * s + (s - 1) / 2, y0 + xy[:, 1] * s + (s - 1) / 2], axis=1)
    return centres, values
