"""One slide, end to end: tissue, windows, stain, candidates, patches, model, merge.

This is the only inference path: `mitoqp run` and `mitoqp evaluate` both call
`analyse_slide`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import shapely

from mitoqp.background import in_background
from mitoqp.candidates import CandidateParams, Candidates, find_candidates
from mitoqp.dense import DenseSpec, cut_tiles, stitch, tiles_per_batch, window_peaks
from mitoqp.hotspot import Hotspot, find_hotspot
from mitoqp.patches import extract_patches
from mitoqp.peaks import suppress_duplicates
from mitoqp.runtime.model import Model
from mitoqp.slide import Slide, SlideError
from mitoqp.stain import hematoxylin, inverse_stain_matrix, macenko_vectors, stain_matrix
from mitoqp.stain_normalise import StainNormaliser, tissue_pixels
from mitoqp.stream import Plan, Window, choose_level, plan_windows, stream_windows
from mitoqp.tissue import TissueMask, detect_tissue

HOTSPOT_MM2 = 2.0  # area of the usual ten high-power fields
Tick = Callable[[], None] | None  # called once per window done
OVERLAP_DEPTH = 4  # patch batches the front end may run ahead of the model (4 x 256 x 27 kB at 96 px)


@dataclass
class Options:
    mpp: float | None = None  # overrides the slide's metadata
    threshold: float | None = None  # overrides the model's
    batch_size: int = 256
    workers: int = 2
    window_px: int = 2048
    stain: str = "ruifrok"  # or "macenko": per-slide vectors
    roi: shapely.Geometry | None = None
    use_tissue_mask: bool = True
    stain_normalise: bool = False  # Macenko-normalise patches to the model's training reference
    overlap: bool = True  # front end and model on separate threads (False: one after the other, for comparison)
    keep_scored: bool = False  # also return every scored candidate's centre (evaluation: the front end's own sensitivity)


@dataclass
class SlideResult:
    xy: np.ndarray  # (N, 2) level-0 centres of all scored candidates after merging
    scores: np.ndarray  # (N,)
    area_um2: np.ndarray  # (N,)
    threshold: float
    mpp: float
    tissue: TissueMask | None
    analysed_area_mm2: float
    candidates: int
    windows: int
    timings: dict = field(default_factory=dict)
    atypical: np.ndarray | None = None  # (N,) probability that the figure is atypical; None without a subtype head
    scored_xy: np.ndarray | None = None  # (candidates, 2) every scored centre before merging; with Options.keep_scored

    @property
    def detected(self) -> np.ndarray:
        return self.scores >= self.threshold

    @property
    def count(self) -> int:
        return int(self.detected.sum())

    def atypical_count(self, threshold: float) -> int | None:
        """Detected figures whose atypical score reaches `threshold`; None without a subtype head."""
        if self.atypical is None:
            return None
        return int((self.detected & (self.atypical >= threshold)).sum())

    def hotspot(self, area_mm2: float = HOTSPOT_MM2, shape: str = "circle") -> Hotspot:
        """The window of `area_mm2` (circle or square) anywhere on the slide that holds the most detections."""
        return find_hotspot(self.xy[self.detected], area_mm2, self.mpp, shape)

    def hotspot_count(self, area_mm2: float = HOTSPOT_MM2, shape: str = "circle") -> int:
        return self.hotspot(area_mm2, shape).count


def resolve_mpp(slide: Slide, override: float | None) -> float:
    if override is not None:
        if not override > 0:
            raise SlideError(f"--mpp must be positive, got {override}")
        return float(override)
    if slide.info.mpp is None:
        raise SlideError(f"{slide.info.path} has no microns-per-pixel in its metadata: give it with --mpp")
    return slide.info.mpp


@dataclass
class Prepared:
    """What a slide's analysis needs before its windows are read."""

    mpp: float
    work_mpp: float
    tissue: TissueMask | None
    analysed_mm2: float
    plan: Plan
    stain_from_od: np.ndarray | None
    timings: dict
    normaliser: StainNormaliser | None = None


def prepare(slide: Slide, model_mpp: float, halo: int, opts: Options, stain_reference: dict | None = None) -> Prepared:
    """Resolution, tissue mask (with the ROI), stain vectors, the normaliser and the window plan of a slide."""
    timings: dict[str, float] = defaultdict(float)
    t = time.perf_counter()
    mpp = resolve_mpp(slide, opts.mpp)
    w0, h0 = slide.info.dimensions
    tissue = detect_tissue(slide, mpp) if opts.use_tissue_mask else None
    if opts.roi is not None:
        if not opts.roi.intersects(shapely.box(0, 0, w0, h0)):
            raise SlideError(f"the ROI lies outside {slide.info.path} ({w0}x{h0} px)")
        if tissue is not None:
            s = tissue.scale
            jj, ii = np.mgrid[: tissue.mask.shape[0], : tissue.mask.shape[1]]
            tissue.mask &= shapely.contains_xy(opts.roi, (ii + 0.5) * s, (jj + 0.5) * s)
    timings["tissue"] = time.perf_counter() - t
    analysed = tissue.area_mm2 if tissue is not None else w0 * h0 * (mpp / 1000) ** 2
    if opts.roi is not None and tissue is None:
        analysed = opts.roi.intersection(shapely.box(0, 0, w0, h0)).area * (mpp / 1000) ** 2

    stain_from_od = None
    if opts.stain == "macenko":
        t = time.perf_counter()
        pixels = tissue.thumb[tissue.mask] if tissue is not None and tissue.mask.any() else coarsest_tile(slide)
        stain_from_od = inverse_stain_matrix(stain_matrix(macenko_vectors(pixels.reshape(-1, 1, 3))))
        timings["stain_vectors"] = time.perf_counter() - t

    level, resample = choose_level(slide, mpp, model_mpp)
    work_mpp = mpp * slide.info.level_downsamples[level] / resample
    keep = tissue.any_in if tissue is not None else None
    plan = plan_windows(slide, level, resample, halo, opts.window_px, keep)
    normaliser = None
    if opts.stain_normalise:
        if not stain_reference:
            raise ValueError("this model has no stain reference for --stain-normalise (export it with this version)")
        t = time.perf_counter()
        try:
            normaliser = StainNormaliser.fit(tissue_pixels(slide, level, tissue), stain_reference)
        except ValueError as exc:
            raise SlideError(f"cannot normalise the stain of {slide.info.path}: {exc}") from None
        timings["stain_normalise"] = time.perf_counter() - t
    return Prepared(mpp, work_mpp, tissue, analysed, plan, stain_from_od, timings, normaliser)


def coarsest_tile(slide: Slide) -> np.ndarray:
    """Some pixels of the slide when there is no tissue mask to take them from."""
    return slide.read_tile(len(slide.info.level_dimensions) - 1, 0, 0)


def counted(windows: Iterator[Window], tick: Tick) -> Iterator[Window]:
    """The windows, calling `tick` after each has been used (for a progress bar with a time estimate)."""
    for win in windows:
        yield win
        if tick is not None:
            tick()


def window_candidates(slide: Slide, prep: Prepared, params: CandidateParams, workers: int,
                      tick: Tick = None) -> Iterator[tuple[Window, Candidates]]:
    """Each window with its candidates: those whose centre lies in the window's core and on tissue."""
    timings = prep.timings
    t_wait = time.perf_counter()
    for win in counted(stream_windows(slide, prep.plan, workers), tick):
        timings["read"] += win.read_seconds
        timings["read_wait"] += time.perf_counter() - t_wait
        t = time.perf_counter()
        h = hematoxylin(win.rgb, prep.stain_from_od)
        t2 = time.perf_counter()
        timings["deconvolve"] += t2 - t
        cands = find_candidates(h, prep.work_mpp, params)
        x0, y0, x1, y1 = win.core
        inside = (cands.xy[:, 0] >= x0) & (cands.xy[:, 0] < x1) & (cands.xy[:, 1] >= y0) & (cands.xy[:, 1] < y1)
        cands = cands.select(inside)
        if prep.tissue is not None and len(cands):
            cands = cands.select(prep.tissue.contains(win.to_level0(cands.xy)))
        timings["candidates"] += time.perf_counter() - t2
        yield win, cands
        t_wait = time.perf_counter()


def halo_for(patch: int, params: CandidateParams, work_mpp_guess: float = 0.25) -> int:
    """Working pixels around a window's core: half a patch plus a merged blob group's reach."""
    return patch // 2 + int(np.ceil(params.merge_um / work_mpp_guess)) + 8


def patch_batches(slide: Slide, prep: Prepared, params: CandidateParams, patch: int, batch: int,
                  workers: int, tick: Tick = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Level-0 centres, areas (um^2) and patches of the candidates, `batch` at a time, window after window."""
    timings = prep.timings
    for win, cands in window_candidates(slide, prep, params, workers, tick):
        xy0 = win.to_level0(cands.xy)
        if not len(cands):  # still one (empty) item per window, so a stop request is seen window by window
            yield xy0, cands.area_um2, np.zeros((0, patch, patch, 3), np.uint8)
        for i in range(0, len(cands), batch):
            t = time.perf_counter()
            part = extract_patches(win.rgb, cands.xy[i:i + batch], patch)
            if prep.normaliser is not None:
                part = prep.normaliser(part)
            timings["patches"] += time.perf_counter() - t
            yield xy0[i:i + batch], cands.area_um2[i:i + batch], part


def dense_tiles(slide: Slide, prep: Prepared, spec: DenseSpec, workers: int,
                tick: Tick = None) -> Iterator[tuple[Window, np.ndarray, list]]:
    """Each window with the model-input tiles that cover its core (a dense model's front end)."""
    for win in counted(stream_windows(slide, prep.plan, workers), tick):
        prep.timings["read"] += win.read_seconds
        t = time.perf_counter()
        tiles, origins = cut_tiles(win.rgb, win.core, spec)
        if prep.normaliser is not None:
            tiles = prep.normaliser(tiles)
        prep.timings["patches"] += time.perf_counter() - t
        yield win, tiles, origins


def dense_batches(slide: Slide, prep: Prepared, model: Model, opts: Options, spec: DenseSpec,
                  tick: Tick = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Level-0 peaks, their map values and NaN areas, window after window (model and peak finding here)."""
    timings = prep.timings
    items = dense_tiles(slide, prep, spec, opts.workers, tick)
    if opts.overlap:
        items = in_background(items, depth=2)
    for win, tiles, origins in items:
        t = time.perf_counter()
        step = tiles_per_batch(spec.tile, opts.batch_size)
        maps = np.concatenate([model.backend.predict(tiles[i:i + step]) for i in range(0, len(tiles), step)])
        t2 = time.perf_counter()
        timings["model"] += t2 - t
        centres, values = window_peaks(stitch(maps, origins, win.core, spec), win.core, spec, prep.work_mpp)
        xy0 = win.to_level0(centres)
        if prep.tissue is not None and len(xy0):
            on = prep.tissue.contains(xy0)
            xy0, values = xy0[on], values[on]
        timings["peaks"] += time.perf_counter() - t2
        yield xy0, np.full(len(xy0), np.nan), values


def analyse_slide(slide: Slide, model: Model, opts: Options = Options(),
                  on_plan: Callable[[int], Tick] | None = None) -> SlideResult:
    """Detect a slide's figures; `on_plan(windows)` is told the plan's size and may return a per-window tick."""
    params = model.candidates
    spec = DenseSpec.from_config(model.config) if model.kind == "dense" else None
    halo = (spec.context + int(np.ceil(spec.min_distance_um / model.mpp)) + 8 if spec
            else halo_for(model.patch, params, model.mpp))
    prep = prepare(slide, model.mpp, halo, opts, model.stain_reference)
    tick = on_plan(len(prep.plan.windows)) if on_plan is not None else None
    timings = prep.timings
    threshold = model.threshold if opts.threshold is None else float(opts.threshold)
    model.check_threshold(threshold)
    columns = [0] + ([model.config["outputs"].index("atypical")] if model.has_subtype else [])
    outputs = len(columns)
    xy_parts, score_parts, area_parts = [], [], []
    if spec is not None:
        for xy, area, values in dense_batches(slide, prep, model, opts, spec, tick):
            xy_parts.append(xy)
            area_parts.append(area)
            score_parts.append(values[:, columns])
    else:
        batches = patch_batches(slide, prep, params, model.patch, opts.batch_size, opts.workers, tick)
        if opts.overlap:  # the front end of the next batches runs while the model scores this one
            batches = in_background(batches, depth=OVERLAP_DEPTH)
        t_wait = time.perf_counter()
        for xy, area, patches in batches:
            if not len(patches):
                continue
            t = time.perf_counter()
            if opts.overlap:
                timings["model_wait"] += t - t_wait  # the model idle: the front end is the slower stage
            score_parts.append(model.backend.predict(patches)[:, columns])
            xy_parts.append(xy)
            area_parts.append(area)
            t_wait = time.perf_counter()
            timings["model"] += t_wait - t

    t = time.perf_counter()
    xy = np.concatenate(xy_parts + [np.zeros((0, 2))])
    out = np.concatenate(score_parts + [np.zeros((0, outputs), np.float32)])
    areas = np.concatenate(area_parts + [np.zeros(0)])
    n_cands = len(xy)
    # one figure, one detection: split telophase halves and blob groups cut by a window seam merge here
    radius_um = spec.min_distance_um if spec else max(model.nms_um, params.merge_um)
    kept = suppress_duplicates(xy, out[:, 0], radius_um / prep.mpp)
    scored_xy = xy if opts.keep_scored else None
    xy, out, areas = xy[kept], out[kept], areas[kept]
    if opts.roi is not None and len(xy):
        inside = shapely.contains_xy(opts.roi, xy[:, 0], xy[:, 1])
        xy, out, areas = xy[inside], out[inside], areas[inside]
    timings["merge"] = time.perf_counter() - t
    return SlideResult(xy, out[:, 0], areas, threshold, prep.mpp, prep.tissue, prep.analysed_mm2, n_cands,
                       len(prep.plan.windows), dict(timings), out[:, 1] if outputs == 2 else None, scored_xy)
