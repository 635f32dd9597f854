"""Stream a slide in windows aligned to its native tile grid, each with a halo.

Each window is a block of native tiles plus a halo, so a blob or a patch at
the window's edge is whole. Every native tile is decoded once: the tiles a
window's halo shares with the next window row stay in a cache that holds at
most two tile rows of the slide (memory grows with the width, never the
area). A background thread decodes ahead into a bounded queue.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from mitoqp.background import in_background
from mitoqp.slide import Slide, paste


@dataclass
class Window:
    """RGB of core + halo at working resolution, and where it sits on level 0."""

    rgb: np.ndarray  # (H, W, 3) uint8
    core: tuple[int, int, int, int]  # x0, y0, x1, y1 of the core inside `rgb` (working px)
    origin: tuple[float, float]  # level-0 coordinates of rgb[0, 0]
    scale: float  # level-0 pixels per working pixel
    read_seconds: float = 0.0

    def to_level0(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy) * self.scale + np.asarray(self.origin)


@dataclass(frozen=True)
class Plan:
    level: int
    resample: float  # working pixels per level pixel
    tiles_per_window: int
    halo: int  # level pixels
    windows: list[tuple[int, int]] = field(default_factory=list)  # (window col, window row) in raster order


def choose_level(slide: Slide, mpp: float, target_mpp: float, tolerance: float = 0.05) -> tuple[int, float]:
    """The coarsest level no coarser than the model needs, and its resampling factor to `target_mpp`."""
    best = 0
    for i, ds in enumerate(slide.info.level_downsamples):
        if mpp * ds <= target_mpp * (1 + tolerance):
            best = i
    level_mpp = mpp * slide.info.level_downsamples[best]
    factor = level_mpp / target_mpp
    return best, (1.0 if abs(factor - 1) <= tolerance else factor)


def plan_windows(slide: Slide, level: int, resample: float, halo_work: int, window_px: int = 2048,
                 keep: Callable[[float, float, float, float], bool] | None = None) -> Plan:
    """Windows of about `window_px` level pixels; `keep(x0, y0, x1, y1)` (level-0 box) filters them."""
    tw, th = slide.info.tile_sizes[level]
    k = max(1, window_px // max(tw, th))
    halo = int(np.ceil(halo_work / resample))
    ntx, nty = slide.tile_grid(level)
    ds = slide.info.level_downsamples[level]
    windows = []
    for wy in range(-(-nty // k)):
        for wx in range(-(-ntx // k)):
            x0, y0 = wx * k * tw, wy * k * th
            if keep is None or keep(x0 * ds, y0 * ds, (x0 + k * tw) * ds, (y0 + k * th) * ds):
                windows.append((wx, wy))
    return Plan(level, resample, k, halo, windows)


class TileCache:
    """Decoded native tiles of one level, each decoded once, kept only while a later window needs them."""

    def __init__(self, slide: Slide, level: int, pool: ThreadPoolExecutor):
        self.slide, self.level, self.pool = slide, level, pool
        self.tiles: dict[tuple[int, int], np.ndarray] = {}
        self.decoded = 0
        self.peak = 0  # most tiles held at once

    def fetch(self, keys: list[tuple[int, int]]) -> None:
        missing = [k for k in keys if k not in self.tiles]
        for key, tile in zip(missing, self.pool.map(lambda k: self.slide.read_tile(self.level, *k), missing)):
            self.tiles[key] = tile
        self.decoded += len(missing)
        self.peak = max(self.peak, len(self.tiles))

    def evict(self, keep: Callable[[int, int], bool]) -> None:
        for key in [k for k in self.tiles if not keep(*k)]:
            del self.tiles[key]


def assemble(slide: Slide, plan: Plan, cache: TileCache, wx: int, wy: int, next_row_ty0: int) -> Window:
    t0 = time.perf_counter()
    level, k, halo = plan.level, plan.tiles_per_window, plan.halo
    (lw, lh), (tw, th) = slide.info.level_dimensions[level], slide.info.tile_sizes[level]
    ntx, nty = slide.tile_grid(level)
    cx0, cy0 = wx * k * tw, wy * k * th
    cx1, cy1 = min(cx0 + k * tw, lw), min(cy0 + k * th, lh)
    rx0, ry0, rx1, ry1 = cx0 - halo, cy0 - halo, cx1 + halo, cy1 + halo
    tx0, ty0 = max(rx0 // tw, 0), max(ry0 // th, 0)
    tx1, ty1 = min((rx1 - 1) // tw, ntx - 1), min((ry1 - 1) // th, nty - 1)
    keys = [(tx, ty) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
    cache.fetch(keys)
    region = np.full((ry1 - ry0, rx1 - rx0, 3), 255, np.uint8)
    for tx, ty in keys:
        paste(region, cache.tiles[(tx, ty)], tx * tw - rx0, ty * th - ry0)
    # keep what the next window in this row or the next window row will read again
    next_tx0 = max(((wx + 1) * k * tw - halo) // tw, 0)
    cache.evict(lambda tx, ty: ty >= next_row_ty0 or tx >= next_tx0)
    core = (halo, halo, halo + cx1 - cx0, halo + cy1 - cy0)
    s = plan.resample
    if s != 1.0:
        size = (max(1, int(round(region.shape[1] * s))), max(1, int(round(region.shape[0] * s))))
        region = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR))
        core = tuple(int(round(v * s)) for v in core)
    ds = slide.info.level_downsamples[level]
    return Window(region, core, (rx0 * ds, ry0 * ds), ds / s, time.perf_counter() - t0)


def stream_windows(slide: Slide, plan: Plan, workers: int = 2, prefetch: int = 2) -> Iterator[Window]:
    """Windows of `plan` in raster order, decoded ahead by a background thread into a bounded queue."""
    th = slide.info.tile_sizes[plan.level][1]
    k = plan.tiles_per_window

    def windows() -> Iterator[Window]:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            cache = TileCache(slide, plan.level, pool)
            for i, (wx, wy) in enumerate(plan.windows):
                nxt = plan.windows[i + 1] if i + 1 < len(plan.windows) else None
                # first tile row that the next window row reads (its halo reaches up into this one)
                next_row = nxt[1] if nxt is not None and nxt[1] != wy else wy + 1
                next_row_ty0 = max((next_row * k * th - plan.halo) // th, 0)
                yield assemble(slide, plan, cache, wx, wy, next_row_ty0)
                if nxt is not None and nxt[1] != wy:
                    cache.evict(lambda tx, ty: ty >= next_row_ty0)

    return in_background(windows(), prefetch)
