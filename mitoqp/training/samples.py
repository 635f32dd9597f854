"""Training samples from the runtime's own candidate generator.

The candidate nearest a figure (within the match radius) is a positive;
candidates farther than the radius from every known figure are negatives
(other nuclei, labelled look-alikes). Crops are cut a margin larger than the
model patch so training can jitter the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from mitoqp.candidates import CandidateParams, find_candidates
from mitoqp.datasets.fields import Field
from mitoqp.patches import extract_patches
from mitoqp.stain import hematoxylin


@dataclass
class SampleSet:
    crops: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) 1 mitosis, 0 not
    lookalike: np.ndarray  # (N,) labelled look-alike negatives
    valid: np.ndarray  # (N, 4) x0, y0, x1, y1 of the crop that lies inside its field
    field_index: np.ndarray  # (N,)
    xy: np.ndarray  # (N, 2) crop centres in their field

    def __len__(self) -> int:
        return len(self.labels)


def field_candidates(img: np.ndarray, mpp: float, params: CandidateParams) -> np.ndarray:
    return find_candidates(hematoxylin(img), mpp, params).xy


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
    crops, labels, looks, valid, owner, allxy = [], [], [], [], [], []
    for k, f in enumerate(fields):
        img = f.image()
        cands = field_candidates(img, f.mpp, params)
        pos, neg = label_candidates(cands, f.figures, radius_px)
        points = [cands[pos], cands[neg]]
        lab = [np.ones(pos.sum()), np.zeros(neg.sum())]
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
        looks.append(la)
        c = np.rint(xy).astype(int) - crop // 2
        h, w = img.shape[:2]
        valid.append(np.stack([np.clip(-c[:, 0], 0, crop), np.clip(-c[:, 1], 0, crop),
                               np.clip(w - c[:, 0], 0, crop), np.clip(h - c[:, 1], 0, crop)], axis=1))
        owner.append(np.full(len(xy), k))
        allxy.append(xy.reshape(-1, 2))
    return SampleSet(
        np.concatenate(crops), np.concatenate(labels).astype(np.float32), np.concatenate(looks),
        np.concatenate(valid), np.concatenate(owner), np.concatenate(allxy),
    )
