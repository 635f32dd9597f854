"""Training samples from the runtime's own candidate generator.

The candidate nearest a figure (within the match radius) is a positive;
candidates farther than the radius from every known figure are negatives
(other nuclei, labelled look-alikes, candidates on slides without mitoses);
candidates near a figure but not its nearest are kept out of training. Crops
are cut a margin larger than the model patch so training can jitter the centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from mitoqp.candidates import CandidateParams, find_candidates
from mitoqp.datasets.fields import Field
from mitoqp.patches import PAD_VALUE, extract_patches, inside_boxes
from mitoqp.stain import hematoxylin


@dataclass
class SampleSet:
    crops: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) 1 mitosis, 0 not, -1 near a figure but not its candidate (not trained on)
    lookalike: np.ndarray  # (N,) labelled look-alike negatives
    valid: np.ndarray  # (N, 4) x0, y0, x1, y1 of the crop that lies inside its field
    field_index: np.ndarray  # (N,)
    xy: np.ndarray  # (N, 2) crop centres in their field (or slide, level 0)
    from_slide: np.ndarray | None = None  # (N,) negatives taken from whole slides
    atypical: np.ndarray | None = None  # (N,) int8 subtype of a positive: 1 atypical, 0 normal, -1 unknown

    def __post_init__(self) -> None:
        if self.from_slide is None:
            self.from_slide = np.zeros(len(self.labels), bool)
        if self.atypical is None:
            self.atypical = np.full(len(self.labels), -1, np.int8)

    def __len__(self) -> int:
        return len(self.labels)


def field_candidates(img: np.ndarray, mpp: float, params: CandidateParams, pad: int = 32) -> np.ndarray:
    """Candidates of a field as the runtime finds them: the field lies in glass (white) beyond its edge."""
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
    xy = find_candidates(hematoxylin(padded), mpp, params).xy - pad
    h, w = img.shape[:2]
    return xy[(xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)]


def label_candidates(cands: np.ndarray, figures: np.ndarray, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) masks over candidates: nearest one per figure within radius, and those far from all."""
    pos = np.zeros(len(cands), bool)
    neg = np.ones(len(cands), bool)
    if len(cands) and len(figures):
        tree = cKDTree(cands)
        dist, idx = tree.query(figures)
        for d, i in zip(dist, idx):
            if d <= radius_px:
                pos[i] = True
        near = tree.query_ball_point(figures, radius_px)
        for lst in near:
            neg[lst] = False
    return pos, neg


def build_samples(
    fields: list[Field], params: CandidateParams, crop: int, radius_px: float, add_missed: bool = True
) -> SampleSet:
    """Samples of every field; `add_missed` adds figures no candidate found, at their annotated centre."""
    crops, labels, looks, valid, owner, allxy, subtype = [], [], [], [], [], [], []
    near_label = -1.0  # near a figure but not its nearest candidate: neither class
    for k, f in enumerate(fields):
        img = f.image()
        cands = field_candidates(img, f.mpp, params)
        pos, neg = label_candidates(cands, f.figures, radius_px)
        near = ~pos & ~neg
        points = [cands[pos], cands[neg], cands[near]]
        lab = [np.ones(pos.sum()), np.zeros(neg.sum()), np.full(near.sum(), near_label)]
        if add_missed and len(f.figures):
            found = cKDTree(cands).query(f.figures)[0] <= radius_px if len(cands) else np.zeros(len(f.figures), bool)
            points.append(f.figures[~found])
            lab.append(np.ones((~found).sum()))
        xy = np.concatenate(points)
        la = np.zeros(len(xy), bool)
        if len(f.lookalikes) and len(xy):
            la = cKDTree(f.lookalikes).query(xy)[0] <= radius_px
        crops.append(extract_patches(img, xy, crop))
        labels.append(np.concatenate(lab))
        subtype.append(centre_subtype(xy, labels[-1], img.shape, f.atypical, radius_px))
        looks.append(la)
        valid.append(inside_boxes(xy, crop, img.shape[1], img.shape[0]))
        owner.append(np.full(len(xy), k))
        allxy.append(xy.reshape(-1, 2))
    return SampleSet(
        np.concatenate(crops), np.concatenate(labels).astype(np.float32), np.concatenate(looks),
        np.concatenate(valid), np.concatenate(owner), np.concatenate(allxy), None, np.concatenate(subtype),
    )


def centre_subtype(xy: np.ndarray, labels: np.ndarray, shape: tuple, atypical: bool, radius_px: float) -> np.ndarray:
    """Subtype per sample: the field's own (centre) figure gets the field's label; every other sample -1."""
    out = np.full(len(xy), -1, np.int8)
    pos = np.flatnonzero(labels == 1)
    if len(pos):
        d = np.hypot(xy[pos, 0] - shape[1] / 2, xy[pos, 1] - shape[0] / 2)
        if d.min() <= radius_px:
            out[pos[np.argmin(d)]] = int(atypical)
    return out


def concat_samples(parts: list[SampleSet]) -> SampleSet:
    return SampleSet(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                       ("crops", "labels", "lookalike", "valid", "field_index", "xy", "from_slide", "atypical")))


def training_region(slide_w: int, slide_h: int, frac: list[float] | None):
    """The level-0 box given as fractions (x0, y0, x1, y1) of a slide; None is the whole slide."""
    import shapely

    x0, y0, x1, y1 = frac if frac is not None else (0.0, 0.0, 1.0, 1.0)
    return shapely.box(x0 * slide_w, y0 * slide_h, x1 * slide_w, y1 * slide_h)


def slide_samples(path: Path, mpp: float | None, params: CandidateParams, crop: int, radius_um: float = 7.5,
                  region: list[float] | None = None, figures: np.ndarray | None = None, roi=None) -> SampleSet:
    """Samples from a whole slide, cut by the runtime's own stream.

    `figures` are level-0 centres of the mitotic figures annotated on the slide
    (a lab's QuPath points); without them the slide is taken to hold none, and
    every candidate is a negative. Only candidates inside `region` (fractions of
    the slide) and `roi` (where the annotation is complete) are used.
    """
    from mitoqp.pipeline import Options, halo_for, prepare, window_candidates
    from mitoqp.slide import open_slide

    figures = np.zeros((0, 2)) if figures is None else np.asarray(figures, float).reshape(-1, 2)
    crops, xy, fig_crops, fig_xy = [], [], [], []
    with open_slide(path) as slide:
        area = training_region(*slide.info.dimensions, region)
        area = area.intersection(roi) if roi is not None else area
        figures = figures[shapely_contains(area, figures)]
        prep = prepare(slide, 0.25, halo_for(crop, params), Options(mpp=mpp, roi=area))
        for win, cands in window_candidates(slide, prep, params, workers=2):
            level0 = win.to_level0(cands.xy)
            inside = shapely_contains(area, level0)
            crops.append(extract_patches(win.rgb, cands.xy[inside], crop))
            xy.append(level0[inside])
            # figures in this window's core, in case no candidate finds them
            local = (figures - np.asarray(win.origin)) / win.scale
            x0, y0, x1, y1 = win.core
            here = (local[:, 0] >= x0) & (local[:, 0] < x1) & (local[:, 1] >= y0) & (local[:, 1] < y1)
            fig_crops.append(extract_patches(win.rgb, local[here], crop))
            fig_xy.append(figures[here])
    radius = radius_um / prep.mpp
    xy_a = np.concatenate(xy + [np.zeros((0, 2))])
    crops_a = np.concatenate(crops + [np.zeros((0, crop, crop, 3), np.uint8)])
    pos, neg = label_candidates(xy_a, figures, radius)
    labels = np.where(pos, 1.0, np.where(neg, 0.0, -1.0)).astype(np.float32)
    fxy = np.concatenate(fig_xy + [np.zeros((0, 2))])
    fcrops = np.concatenate(fig_crops + [np.zeros((0, crop, crop, 3), np.uint8)])
    if len(fxy):
        missed = cKDTree(xy_a).query(fxy)[0] > radius if len(xy_a) else np.ones(len(fxy), bool)
        xy_a, crops_a = np.concatenate([xy_a, fxy[missed]]), np.concatenate([crops_a, fcrops[missed]])
        labels = np.concatenate([labels, np.ones(int(missed.sum()), np.float32)])
    n = len(labels)
    return SampleSet(crops_a, labels, np.zeros(n, bool), np.tile([0, 0, crop, crop], (n, 1)),
                     np.full(n, -1), xy_a, labels == 0)


def shapely_contains(geom, xy: np.ndarray) -> np.ndarray:
    import shapely

    return shapely.contains_xy(geom, xy[:, 0], xy[:, 1]) if len(xy) else np.zeros(0, bool)
