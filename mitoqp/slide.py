"""Slides behind one small interface: levels, microns per pixel, native tiles.

Pyramidal TIFF-family slides (SVS, generic tiled TIFF, OME-TIFF, NDPI) open
through tiffslide for their metadata, and their native tiles are decoded once
each straight from the file with tifffile (positional reads, so decoding runs
in parallel threads). OpenSlide is used when installed and asked for. Plain
fields (PNG, JPEG, untiled TIFF) are one tile holding the whole image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIELD_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
OPENSLIDE_ONLY = {".mrxs", ".vms", ".vmu"}  # not TIFF-based: OpenSlide alone reads them
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide"} | OPENSLIDE_ONLY


class SlideError(ValueError):
    """A slide that cannot be read; the message is one line for the run summary."""


@dataclass(frozen=True)
class SlideInfo:
    path: str
    format: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    tile_sizes: tuple[tuple[int, int], ...]
    mpp: float | None

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]


class Slide:
    """Base: subclasses fill `info` and implement `read_tile`."""

    info: SlideInfo

    def read_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        """The native tile (tx, ty) of `level` as (h, w, 3) uint8, cropped at the level's edge."""
        raise NotImplementedError

    def tile_grid(self, level: int) -> tuple[int, int]:
        (w, h), (tw, th) = self.info.level_dimensions[level], self.info.tile_sizes[level]
        return -(-w // tw), -(-h // th)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 of `level` from its pixel (x, y), assembled from native tiles; white outside."""
        out = np.full((h, w, 3), 255, np.uint8)
        lw, lh = self.info.level_dimensions[level]
        tw, th = self.info.tile_sizes[level]
        for ty in range(max(y, 0) // th, min(y + h, lh) // th + 1):
            for tx in range(max(x, 0) // tw, min(x + w, lw) // tw + 1):
                if tx * tw >= lw or ty * th >= lh:
                    continue
                paste(out, self.read_tile(level, tx, ty), tx * tw - x, ty * th - y)
        return out

    def close(self) -> None:
        pass

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def paste(dst: np.ndarray, src: np.ndarray, x: int, y: int) -> None:
    """Copy `src` into `dst` with its top-left at (x, y), clipped to `dst`."""
    h, w = dst.shape[:2]
    sx0, sy0 = max(0, -x), max(0, -y)
    dx0, dy0 = max(0, x), max(0, y)
    cw = min(src.shape[1] - sx0, w - dx0)
    ch = min(src.shape[0] - sy0, h - dy0)
    if cw > 0 and ch > 0:
        dst[dy0:dy0 + ch, dx0:dx0 + cw] = src[sy0:sy0 + ch, sx0:sx0 + cw, :3]


def as_rgb(a: np.ndarray) -> np.ndarray:
    """uint8 RGB from grey, RGBA or 16-bit tiles."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(a * 255, 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = a.astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


class SkippingSlide(Slide):
    """A slide whose undecodable tiles read as glass, each one recorded (`--on-tile-error skip`).

    A scanner's corrupt tile in the middle of a slide costs that tile, not the
    slide; the record counts the skipped tiles and the QC image marks them.
    """

    def __init__(self, inner: Slide):
        self.inner, self.info = inner, inner.info
        self.skipped: list[tuple[int, int, int]] = []  # (level, tx, ty); appended from decoding threads
        self.first_error = ""

    def read_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        try:
            return self.inner.read_tile(level, tx, ty)
        except SlideError as exc:
            if not self.skipped:
                self.first_error = str(exc)
            self.skipped.append((level, tx, ty))
            (w, h), (tw, th) = self.info.level_dimensions[level], self.info.tile_sizes[level]
            return np.full((min(th, h - ty * th), min(tw, w - tx * tw), 3), 255, np.uint8)

    def skipped_boxes(self) -> list[list[float]]:
        """Level-0 boxes (x0, y0, x1, y1) of the skipped tiles, each once."""
        out = []
        for level, tx, ty in sorted(set(self.skipped)):
            (tw, th), ds = self.info.tile_sizes[level], self.info.level_downsamples[level]
            out.append([tx * tw * ds, ty * th * ds, (tx + 1) * tw * ds, (ty + 1) * th * ds])
        return out

    def close(self) -> None:
        self.inner.close()


class TiffSlide(Slide):
    """Pyramidal TIFF through tiffslide (metadata) and tifffile (tile decoding)."""

    def __init__(self, path: Path):
        import tiffslide

        try:
            self._ts = tiffslide.TiffSlide(str(path))
            series = self._ts.ts_tifffile.series[self._ts.properties.get("tiffslide.series-index", 0) or 0]
            self._pages = [lvl.keyframe for lvl in series.levels]
        except Exception as exc:  # tiffslide raises many kinds for broken files
            raise SlideError(f"cannot open {Path(path).name} as a slide: {_one_line(exc)}") from None
        props = self._ts.properties
        dims = tuple(tuple(int(v) for v in d) for d in self._ts.level_dimensions)
        tiles = tuple(
            (p.tilewidth, p.tilelength) if p.is_tiled else (dims[i][0], p.rowsperstrip or dims[i][1])
            for i, p in enumerate(self._pages)
        )
        mpp = props.get("tiffslide.mpp-x") or fallback_mpp(self._ts.ts_tifffile)
        vendor = props.get("tiffslide.vendor") or ("ome" if self._ts.ts_tifffile.is_ome else "generic")
        self.info = SlideInfo(
            str(path), "tiff", str(vendor), dims, tuple(float(d) for d in self._ts.level_downsamples), tiles,
            float(mpp) if mpp and float(mpp) > 0 else None,
        )
        self._fd = os.open(str(path), os.O_RDONLY)
        self._tiled = [p.is_tiled for p in self._pages]

    def read_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        page = self._pages[level]
        (w, h), (tw, th) = self.info.level_dimensions[level], self.info.tile_sizes[level]
        ntx = -(-w // tw)
        index = ty * ntx + tx if self._tiled[level] else ty
        if page.databytecounts[index] == 0:  # a sparse tile: scanners leave glass out of the file
            return np.full((min(th, h - ty * th), min(tw, w - tx * tw), 3), 255, np.uint8)
        try:
            data = os.pread(self._fd, page.databytecounts[index], page.dataoffsets[index])
            tile = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as exc:
            raise SlideError(f"cannot decode tile ({tx}, {ty}) of level {level} of {Path(self.info.path).name}: {_one_line(exc)}") from None
        if tile is None:
            raise SlideError(f"tile ({tx}, {ty}) of level {level} of {Path(self.info.path).name} is missing")
        tile = as_rgb(tile.reshape(tile.shape[-3:]))
        return tile[: min(th, h - ty * th), : min(tw, w - tx * tw)]

    def close(self) -> None:
        os.close(self._fd)
        self._ts.close()


class OpenSlideSlide(Slide):
    """Any format OpenSlide reads; tiles are a virtual 512-px grid of read_region calls."""

    TILE = 512

    def __init__(self, path: Path):
        try:
            import openslide
        except ImportError:
            raise SlideError("openslide is not installed: pip install 'mitoqp[openslide]'") from None
        try:
            self._os = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise SlideError(f"OpenSlide cannot open {Path(path).name}: {_one_line(exc)}") from None
        props = self._os.properties
        mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        self.info = SlideInfo(
            str(path), "openslide", str(props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")),
            tuple(tuple(d) for d in self._os.level_dimensions), tuple(self._os.level_downsamples),
            tuple((self.TILE, self.TILE) for _ in self._os.level_dimensions),
            float(mpp) if mpp else None,
        )

    def read_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        (w, h), ds = self.info.level_dimensions[level], self.info.level_downsamples[level]
        tw, th = min(self.TILE, w - tx * self.TILE), min(self.TILE, h - ty * self.TILE)
        img = self._os.read_region((int(tx * self.TILE * ds), int(ty * self.TILE * ds)), level, (tw, th))
        rgba = np.asarray(img)
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255  # transparent (outside scanned area) is glass
        return rgb

    def close(self) -> None:
        self._os.close()


class ImageField(Slide):
    """A plain image (PNG, JPEG, untiled TIFF), e.g. a 40x high-power field: one tile."""

    def __init__(self, path: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                fmt = im.format or "image"
                self._rgb = as_rgb(np.asarray(im.convert("RGB")))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise SlideError(f"cannot read {Path(path).name} as an image: {_one_line(exc)}") from None
        if self._rgb.size == 0:
            raise SlideError(f"{Path(path).name} is an empty image")
        h, w = self._rgb.shape[:2]
        self.info = SlideInfo(str(path), fmt.lower(), "none", ((w, h),), (1.0,), ((w, h),), None)

    def read_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        return self._rgb


UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def fallback_mpp(tf) -> float | None:
    """Microns per pixel where tiffslide finds none: OME-XML PhysicalSizeX, or centimetre resolution tags."""
    import xml.etree.ElementTree as ET

    if tf.is_ome and tf.ome_metadata:
        try:
            for el in ET.fromstring(tf.ome_metadata).iter():
                if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
                    return float(el.get("PhysicalSizeX")) * UM_PER_UNIT.get(el.get("PhysicalSizeXUnit", "µm"), 1.0)
        except (ET.ParseError, ValueError):
            return None
    page = tf.pages.first
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags and int(tags["ResolutionUnit"].value) == 3:  # centimetre
        num, den = tags["XResolution"].value
        if num > 0 and den > 0:
            return 1e4 * den / num
    return None


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _is_pyramid_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            return bool(page.is_tiled) or len(tf.series[0].levels) > 1 or tf.is_ndpi or tf.is_svs
    except Exception as exc:
        raise SlideError(f"cannot open {path.name}: {_one_line(exc)}") from None


def open_slide(path: Path | str, backend: str = "auto") -> Slide:
    """Open a slide or field; `backend` is auto, tiffslide, openslide or image.

    auto and tiffslide read plain images (PNG, JPEG, untiled TIFF) as fields;
    auto also sends MIRAX and VMS, which are not TIFF-based, to OpenSlide.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path} does not exist")
    if path.is_dir():
        raise SlideError(f"{path} is a folder, not a slide")
    if path.stat().st_size == 0:
        raise SlideError(f"{path.name} is an empty file")
    if backend == "openslide" or (backend == "auto" and path.suffix.lower() in OPENSLIDE_ONLY):
        return OpenSlideSlide(path)
    if backend == "image":
        return ImageField(path)
    suffix = path.suffix.lower()
    if suffix in FIELD_SUFFIXES:
        return ImageField(path)
    if suffix in {".tif", ".tiff"} and not _is_pyramid_tiff(path):
        return ImageField(path)
    if backend in ("auto", "tiffslide"):
        return TiffSlide(path)
    raise SlideError(f"unknown slide backend {backend!r}")
