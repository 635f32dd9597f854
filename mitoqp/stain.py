"""Colour deconvolution: uint8 RGB -> hematoxylin (and eosin) optical density.

One fused numba pass per window: each byte goes through a 256-entry optical
density table, then one row of the inverse stain matrix. Glass (near-white),
black padding and fully saturated pixels are background and get density 0, so
they can never become candidates.
"""

from __future__ import annotations

import numba
import numpy as np

# Ruifrok & Johnston (2001) stain vectors, rows: hematoxylin, eosin, DAB.
RUIFROK_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)

WHITE_LEVEL = 245  # all channels at or above: glass or blown-out highlight
BLACK_LEVEL = 8  # all channels at or below: padding or scanner black


def normalise_rows(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def stain_matrix(he_vectors: np.ndarray | None = None) -> np.ndarray:
    """3x3 RGB-from-stain matrix: H and E rows given (or Ruifrok), third = their cross product."""
    if he_vectors is None:
        return normalise_rows(RUIFROK_RGB_FROM_HED)
    he = normalise_rows(np.asarray(he_vectors)[:2])
    third = np.cross(he[0], he[1])
    return normalise_rows(np.vstack([he, third]))


def inverse_stain_matrix(rgb_from_stain: np.ndarray) -> np.ndarray:
    """Stain-from-OD matrix: OD (row vector) @ result = stain concentrations."""
    return np.linalg.inv(rgb_from_stain).astype(np.float32)


def od_table() -> np.ndarray:
    """Optical density (log10) of each 8-bit intensity; 0 maps like 1 to stay finite."""
    v = np.maximum(np.arange(256, dtype=np.float64), 1.0)
    return (-np.log10(v / 255.0)).astype(np.float32)


OD_TABLE = od_table()


# background flags per 8-bit value: a pixel is background when all three channels share a flag
_GLASS, _BLACK = 1, 2
BACKGROUND_BITS = np.zeros(256, np.uint8)
BACKGROUND_BITS[WHITE_LEVEL:] |= _GLASS
BACKGROUND_BITS[: BLACK_LEVEL + 1] |= _BLACK

CHUNK = 1 << 16  # pixels per parallel task


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True, boundscheck=False)
def _deconvolve(flat, t_r, t_g, t_b, bits, out):
    """One stain: out[i] = t_r[r] + t_g[g] + t_b[b] for pixel i, or 0 on background.

    Without the GIL: it runs on the front end's thread beside the model, and a PyTorch model takes the GIL
    back around every operation (a kernel holding it made a torch call 123x slower: benchmarks/RESULTS.md).
    """
    n = flat.shape[0] // 3
    for chunk in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            r = flat[3 * i]
            g = flat[3 * i + 1]
            b = flat[3 * i + 2]
            keep = np.float32((bits[r] & bits[g] & bits[b]) == 0)
            out[i] = (t_r[r] + t_g[g] + t_b[b]) * keep


def weighted_tables(stain_from_od: np.ndarray, channels: tuple[int, ...]) -> np.ndarray:
    """(len(channels), 3, 256) float32: the OD table pre-multiplied by each matrix coefficient."""
    coeffs = np.asarray(stain_from_od, dtype=np.float64)[:, list(channels)]  # (3 rgb, nout)
    return np.ascontiguousarray((coeffs.T[:, :, None] * OD_TABLE[None, None, :]).astype(np.float32))


def deconvolve(
    rgb: np.ndarray,
    stain_from_od: np.ndarray | None = None,
    channels: tuple[int, ...] = (0,),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Stain densities of an (H, W, 3) uint8 image, shape (H, W, len(channels)), float32.

    Channel 0 is hematoxylin, 1 eosin, 2 the residual. Background pixels are 0.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    tables = weighted_tables(RUIFROK_STAIN_FROM_OD if stain_from_od is None else stain_from_od, channels)
    if out is None:
        out = np.empty(rgb.shape[:2] + (len(channels),), dtype=np.float32)
    flat = np.ascontiguousarray(rgb).reshape(-1)
    if len(channels) == 1:  # the usual case: hematoxylin straight into the output
        _deconvolve(flat, *tables[0], BACKGROUND_BITS, out.reshape(-1))
        return out
    plane = np.empty(rgb.shape[0] * rgb.shape[1], np.float32)
    for k, t in enumerate(tables):
        _deconvolve(flat, *t, BACKGROUND_BITS, plane)
        out[..., k] = plane.reshape(rgb.shape[:2])
    return out


def hematoxylin(rgb: np.ndarray, stain_from_od: np.ndarray | None = None) -> np.ndarray:
    """Hematoxylin optical density, (H, W) float32."""
    return deconvolve(rgb, stain_from_od, (0,))[..., 0]


RUIFROK_STAIN_FROM_OD = inverse_stain_matrix(stain_matrix())


def macenko_vectors(
    rgb: np.ndarray, od_min: float = 0.15, alpha: float = 1.0, max_pixels: int = 200_000
) -> np.ndarray:
    """Per-slide H and E stain vectors by Macenko et al. (2009), rows H then E.

    Projects tissue optical densities on the plane of their two main
    directions and takes the robust extreme angles as the two stains.
    """
    px = rgb.reshape(-1, rgb.shape[-1])[:, :3]
    lo, hi = px.min(axis=1), px.max(axis=1)
    px = px[(lo < WHITE_LEVEL) & (hi > BLACK_LEVEL)]
    od = OD_TABLE[px].astype(np.float64)
    od = od[np.all(od > od_min, axis=1)]
    if len(od) < 100:
        raise ValueError("too little stained tissue to estimate stain vectors")
    if len(od) > max_pixels:
        od = od[np.random.default_rng(0).choice(len(od), max_pixels, replace=False)]
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]
    proj = od @ plane
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    a_lo, a_hi = np.percentile(angles, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(a_lo), np.sin(a_lo)])
    v2 = plane @ np.array([np.cos(a_hi), np.sin(a_hi)])
    v1, v2 = np.abs(v1), np.abs(v2)
    # hematoxylin absorbs most in red: the vector with the larger red share is H
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    return normalise_rows(np.vstack([h, e]))
