"""Write pyramidal, JPEG-tiled, SVS-like TIFFs from a tile source (for benchmarks and tests).

Tiles are produced and written one at a time, so a slide of any size is
written in bounded memory. Levels halve the resolution; each level is built
from a tile function too (the caller's source is sampled with a stride).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tifffile

TileFn = Callable[[int, int, int, int], np.ndarray]  # (x, y, w, h) at level 0 -> (h, w, 3) uint8


def _tiles(fn: TileFn, width: int, height: int, tile: int, step: int) -> Iterator[np.ndarray]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            w, h = min(tile, width - x), min(tile, height - y)
            src = fn(x * step, y * step, w * step, h * step)
            block[:h, :w] = src[::step, ::step][:h, :w]
            yield block


def write_svs_like(path: Path, fn: TileFn, width: int, height: int, mpp: float | None = 0.25,
                   tile: int = 256, levels: int = 3, quality: int = 85, compression: str = "jpeg") -> Path:
    """An Aperio-style pyramid (description with MPP) at `path`; `mpp=None` leaves resolution out."""
    desc = f"Aperio Image Library mitoqp synthetic\r\n{width}x{height} ({tile}x{tile}) JPEG/RGB Q={quality}"
    if mpp is not None:
        desc += f"|AppMag = {round(10 / mpp)}|MPP = {mpp}"
    comp = ("jpeg", {"level": quality}) if compression == "jpeg" else (compression if compression != "none" else None)
    kw = {"compression": comp[0], "compressionargs": comp[1]} if isinstance(comp, tuple) else {"compression": comp}
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif:
        for level in range(levels):
            step = 2**level
            w, h = max(1, width // step), max(1, height // step)
            if level and min(w, h) < tile:
                break
            tif.write(_tiles(fn, w, h, tile, step), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                      photometric="rgb", description=desc if level == 0 else None, metadata=None, **kw)
            if level == 0 and levels > 1:  # Aperio's second page: a small stripped thumbnail
                ts = max(1, max(width, height) // 512)
                thumb = next(_tiles(fn, width // ts, height // ts, max(width, height) // ts + 1, ts))
                tif.write(thumb[: height // ts, : width // ts], photometric="rgb", metadata=None, **kw)
    return Path(path)


def mosaic_source(patches: list[np.ndarray], seed: int = 0) -> TileFn:
    """Tile function laying real patches edge to edge, each placement picked by a hash of its cell."""
    size = patches[0].shape[0]
    n = len(patches)

    def fn(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        for cy in range(y // size, (y + h - 1) // size + 1):
            for cx in range(x // size, (x + w - 1) // size + 1):
                p = patches[(cx * 73856093 ^ cy * 19349663 ^ seed) % n]
                ox, oy = cx * size - x, cy * size - y
                sx0, sy0 = max(0, -ox), max(0, -oy)
                dx0, dy0 = max(0, ox), max(0, oy)
                cw, ch = min(size - sx0, w - dx0), min(size - sy0, h - dy0)
                out[dy0:dy0 + ch, dx0:dx0 + cw] = p[sy0:sy0 + ch, sx0:sx0 + cw]
        return out

    return fn


def write_header_only_svs(path: Path, side: int, tissue_box: tuple[float, float, float, float],
                          mpp: float = 0.25, tile: int = 256, overview_step: int = 32) -> Path:
    """A slide whose level 0 claims side x side px but holds no tile data (every byte count 0), plus an
    overview level (`overview_step` x smaller) with stained tissue in `tissue_box` (fractions x0, y0, x1, y1).

    A few MB on disk for a 200,000 x 200,000 px header: the test of a slide far larger than memory.
    Readers take zero-byte tiles as glass, so the run walks every tissue tile of level 0.
    """
    n = -(-side // tile)
    desc = (f"Aperio Image Library mitoqp header-only\r\n{side}x{side} ({tile}x{tile}) JPEG/RGB Q=85"
            f"|AppMag = {round(10 / mpp)}|MPP = {mpp}")
    small = side // overview_step
    rng = np.random.default_rng(0)
    overview = np.full((small, small, 3), 238, np.uint8)
    x0, y0, x1, y1 = (int(f * small) for f in tissue_box)
    stain = np.array([170, 95, 175], np.int16) + rng.integers(-25, 25, (y1 - y0, x1 - x0, 3), dtype=np.int16)
    overview[y0:y1, x0:x1] = np.clip(stain, 0, 255).astype(np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write((b"" for _ in range(n * n)), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                  compression="jpeg", photometric="rgb", description=desc, metadata=None)
        tif.write(overview[::8, ::8].copy(), compression="jpeg", photometric="rgb", metadata=None)  # thumbnail page
        tif.write(overview, tile=(tile, tile), compression="jpeg", photometric="rgb", metadata=None)
    return Path(path)
