"""Square patches around points, padded with glass-white past the image edge.

Training and runtime cut patches with this one function, so a model sees the
same geometry and padding in both.
"""

from __future__ import annotations

import numpy as np

PAD_VALUE = 255  # glass: what lies beyond a slide's edge


def extract_patches(rgb: np.ndarray, xy: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """(N, size, size, 3) uint8 patches whose centre pixel is round(xy)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if out is None:
        out = np.empty((len(xy), size, size, 3), dtype=np.uint8)
    h, w = rgb.shape[:2]
    half = size // 2
    for i, (x, y) in enumerate(np.rint(xy).astype(np.int64)):
        x0, y0 = x - half, y - half
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + size, w), min(y0 + size, h)
        if sx0 == x0 and sy0 == y0 and sx1 == x0 + size and sy1 == y0 + size:
            out[i] = rgb[y0:y0 + size, x0:x0 + size, :3]
            continue
        out[i] = PAD_VALUE
        if sx1 > sx0 and sy1 > sy0:
            out[i, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1, :3]
    return out


def inside_boxes(xy: np.ndarray, size: int, width: int, height: int) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 of the part of each patch that lies inside a width x height image.

    Everything outside that box is padding.
    """
    c = np.rint(np.asarray(xy, dtype=np.float64).reshape(-1, 2)).astype(int) - size // 2
    return np.stack([np.clip(-c[:, 0], 0, size), np.clip(-c[:, 1], 0, size),
                     np.clip(width - c[:, 0], 0, size), np.clip(height - c[:, 1], 0, size)], axis=1)
