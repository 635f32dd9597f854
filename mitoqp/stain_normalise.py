"""Macenko stain normalisation of patches to the training data's reference (`--stain-normalise`).

Each slide's H and E vectors and 99th-percentile densities are estimated from
full-resolution tissue tiles; each patch's densities are rescaled to the
reference's and recomposed with the reference vectors (Macenko et al. 2009).
Only the patches the model sees are normalised: candidates stay on the raw
hematoxylin, whose threshold is absolute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mitoqp.stain import OD_TABLE, inverse_stain_matrix, macenko_vectors, stain_matrix

PERCENTILE = 99.0


def stain_densities(pixels: np.ndarray, rgb_from_stain: np.ndarray) -> np.ndarray:
    """(N, 3) stain densities (H, E, residual) of uint8 (N, 3) pixels."""
    return OD_TABLE[pixels.reshape(-1, 3)].astype(np.float64) @ inverse_stain_matrix(rgb_from_stain).astype(np.float64)


def estimate(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H and E vectors (2, 3), 99th-percentile H and E densities (2,)) of some tissue pixels."""
    he = macenko_vectors(pixels.reshape(-1, 1, 3))
    px = pixels.reshape(-1, 3)
    tissue = px[(px.min(axis=1) < 245) & (px.max(axis=1) > 8)]
    dens = stain_densities(tissue, stain_matrix(he))
    return he, np.maximum(np.percentile(dens[:, :2], PERCENTILE, axis=0), 1e-3)


def reference_from_images(images: list[np.ndarray]) -> dict:
    """The reference of a set of images (the training fields), as stored in a model's config."""
    he, max_conc = estimate(np.concatenate([im.reshape(-1, 3) for im in images]))
    return {"he": he.round(6).tolist(), "max_conc": max_conc.round(6).tolist()}


@dataclass
class StainNormaliser:
    """Maps a slide's stain appearance onto the reference's, patch by patch."""

    source: np.ndarray  # 3x3 rgb-from-stain of the slide
    target: np.ndarray  # 3x3 rgb-from-stain of the reference
    scale: np.ndarray  # (3,) density scale per stain (residual unscaled)

    @classmethod
    def fit(cls, pixels: np.ndarray, reference: dict) -> "StainNormaliser":
        he, max_conc = estimate(pixels)
        ref_max = np.asarray(reference["max_conc"], float)
        return cls(stain_matrix(he), stain_matrix(np.asarray(reference["he"], float)),
                   np.array([ref_max[0] / max_conc[0], ref_max[1] / max_conc[1], 1.0]))

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """(N, P, P, 3) uint8 -> normalised (N, P, P, 3) uint8; glass stays glass."""
        if len(patches) == 0:
            return patches
        dens = stain_densities(patches, self.source) * self.scale
        od = dens @ self.target
        rgb = np.clip(255.0 * np.power(10.0, -od), 0, 255)
        return np.rint(rgb).astype(np.uint8).reshape(patches.shape)


def tissue_pixels(slide, level: int, tissue=None, tiles: int = 16) -> np.ndarray:
    """Full-resolution pixels from up to `tiles` native tiles of `level` that hold tissue, spread over the slide."""
    nx, ny = slide.tile_grid(level)
    tw, th = slide.info.tile_sizes[level]
    down = slide.info.level_downsamples[level]
    keys = [(tx, ty) for ty in range(ny) for tx in range(nx)
            if tissue is None or tissue.any_in(tx * tw * down, ty * th * down, (tx + 1) * tw * down, (ty + 1) * th * down)]
    if not keys:
        raise ValueError("no tissue to estimate stain vectors from")
    pick = np.unique(np.linspace(0, len(keys) - 1, min(tiles, len(keys))).round().astype(int))
    return np.concatenate([slide.read_tile(level, *keys[i]).reshape(-1, 3) for i in pick])
