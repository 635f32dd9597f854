"""Tissue mask on a low-resolution thumbnail, streamed tile by tile.

Tissue is stained (saturation or optical density above glass), not black
padding; small specks are dropped and small holes filled. The mask decides
which windows are read at full resolution and gives the tissue area.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mitoqp.slide import Slide
from mitoqp.stain import OD_TABLE

THUMB_MPP = 8.0  # micrometres per thumbnail pixel
THUMB_MAX_PIXELS = 64e6  # a whole 76 x 26 mm glass slide at 8 um is 31 MP; larger headers get a coarser thumbnail
ROWS_PER_PASS = 256


@dataclass
class TissueMask:
    mask: np.ndarray  # (h, w) bool
    thumb: np.ndarray  # (h, w, 3) uint8
    scale: float  # level-0 pixels per thumbnail pixel
    mpp: float  # level-0 micrometres per pixel

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * (self.scale * self.mpp / 1000) ** 2

    def any_in(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether tissue lies in the level-0 box [x0, x1) x [y0, y1)."""
        s = self.scale
        a, b = int(max(x0 // s, 0)), int(np.ceil(x1 / s))
        c, d = int(max(y0 // s, 0)), int(np.ceil(y1 / s))
        return bool(self.mask[c:d, a:b].any())

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Per level-0 point, whether its thumbnail pixel is tissue."""
        ij = np.floor(np.asarray(xy) / self.scale).astype(int)
        h, w = self.mask.shape
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
        out = np.zeros(len(ij), bool)
        out[ok] = self.mask[ij[ok, 1], ij[ok, 0]]
        return out


def thumbnail(slide: Slide, mpp: float, target_mpp: float = THUMB_MPP) -> tuple[np.ndarray, float]:
    """(thumbnail, level-0 px per thumbnail px), built from the coarsest useful level one tile at a time."""
    info = slide.info
    want = target_mpp / mpp  # level-0 pixels per thumbnail pixel
    level = max((i for i, d in enumerate(info.level_downsamples) if d <= want), default=0)
    factor = want / info.level_downsamples[level]  # level pixels per thumbnail pixel (>= 1)
    lw, lh = info.level_dimensions[level]
    tw, th = info.tile_sizes[level]
    out_w, out_h = max(1, int(round(lw / factor))), max(1, int(round(lh / factor)))
    thumb = np.full((out_h, out_w, 3), 255, np.uint8)
    ntx, nty = slide.tile_grid(level)
    for ty in range(nty):
        for tx in range(ntx):
            tile = slide.read_tile(level, tx, ty)
            x0, y0 = int(round(tx * tw / factor)), int(round(ty * th / factor))
            x1 = int(round((tx * tw + tile.shape[1]) / factor))
            y1 = int(round((ty * th + tile.shape[0]) / factor))
            if x1 > x0 and y1 > y0:
                small = np.asarray(Image.fromarray(tile).resize((x1 - x0, y1 - y0), Image.Resampling.BOX))
                thumb[y0:y1, x0:x1] = small[: out_h - y0, : out_w - x0]
    return thumb, lw * info.level_downsamples[level] / out_w


def tissue_from_thumb(thumb: np.ndarray, px_um: float, min_object_um2: float = 5000.0, max_hole_um2: float = 20000.0,
                      min_saturation: float = 0.07, min_od: float = 0.1) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail whose pixels are `px_um` micrometres wide."""
    mask = np.empty(thumb.shape[:2], bool)
    for r in range(0, len(thumb), ROWS_PER_PASS):  # a few MB at a time: a huge slide's thumbnail is large
        part = thumb[r:r + ROWS_PER_PASS]
        hi, lo = part.max(axis=2).astype(np.float32), part.min(axis=2).astype(np.float32)
        saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0)
        od = OD_TABLE[part[..., 0]] + OD_TABLE[part[..., 1]] + OD_TABLE[part[..., 2]]
        mask[r:r + ROWS_PER_PASS] = ((saturation > min_saturation) | (od > min_od)) & (hi > 30) & (lo < 235)
    mask = ndimage.binary_opening(mask, iterations=1) if min(mask.shape) > 8 else mask
    px_area = px_um * px_um
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes * px_area >= min_object_um2
        keep[0] = False
        mask = keep[labels]
    holes, n = ndimage.label(~mask)
    if n:
        sizes = np.bincount(holes.ravel())
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        fill = sizes * px_area <= max_hole_um2
        fill[0] = False
        fill[border] = False
        mask = mask | fill[holes]
    return mask


def detect_tissue(slide: Slide, mpp: float) -> TissueMask:
    """Tissue of a slide or field; small images (fields) get a finer thumbnail and smaller minimum sizes."""
    w, h = slide.info.dimensions
    extent_um = max(w, h) * mpp
    target = min(THUMB_MPP, max(extent_um / 512, mpp))
    target = max(target, mpp * (w * h / THUMB_MAX_PIXELS) ** 0.5)  # bounded memory whatever the header claims
    thumb, scale = thumbnail(slide, mpp, target)
    area_um2 = w * h * mpp * mpp
    mask = tissue_from_thumb(thumb, scale * mpp, min_object_um2=min(5000.0, 0.02 * area_um2),
                             max_hole_um2=min(20000.0, 0.05 * area_um2))
    return TissueMask(mask, thumb, scale, mpp)


def save_qc(tm: TissueMask, path: Path, points: np.ndarray | None = None, skipped: list | None = None) -> None:
    """A small PNG: thumbnail, tissue outline in green, detections in red, skipped (unreadable) tiles crossed
    out in blue."""
    from mitoqp.io_utils import atomic_path

    img = tm.thumb.copy()
    edge = tm.mask ^ ndimage.binary_erosion(tm.mask)
    img[edge] = (0, 200, 0)
    qc = Image.fromarray(img)
    if points is not None and len(points):
        draw = ImageDraw.Draw(qc)
        for x, y in np.asarray(points) / tm.scale:
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=(255, 0, 0), width=2)
    if skipped:
        draw = ImageDraw.Draw(qc)
        for x0, y0, x1, y1 in np.asarray(skipped, float) / tm.scale:
            draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 255), width=2)
            draw.line((x0, y0, x1, y1), fill=(0, 0, 255), width=2)
            draw.line((x0, y1, x1, y0), fill=(0, 0, 255), width=2)
    with atomic_path(path) as tmp:
        qc.save(tmp, format="PNG")


def tissue_geometry(tm: TissueMask, simplify_px: float = 1.0):
    """The tissue mask as a shapely (Multi)Polygon in level-0 pixels: runs of tissue pixels per row, merged.

    The outline follows the mask's pixel edges, simplified by `simplify_px` mask pixels.
    """
    import shapely
    from shapely.geometry import box

    boxes = []
    for y, row in enumerate(tm.mask):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        boxes += [box(a, y, b, y + 1) for a, b in zip(edges[::2], edges[1::2])]
    if not boxes:
        return None
    geom = shapely.union_all(boxes).simplify(simplify_px, preserve_topology=True)
    return shapely.affinity.scale(geom, tm.scale, tm.scale, origin=(0, 0))
