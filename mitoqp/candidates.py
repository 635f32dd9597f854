"""Candidates: hematoxylin-dense blobs, as in MitDet's annotation-free nuclei localisation.

Smooth the hematoxylin density, keep pixels above a fixed density (never one
relative to the field's own maximum: that finds the darkest object of every
field by construction), label connected components, keep those whose area
fits a nucleus, and merge blobs closer than a split anaphase/telophase figure.
Sizes are in micrometres so the same settings work at any resolution.

Where a figure touches another nucleus, the two are one blob and its plain
centroid lies between them; `centre_power` > 0 weights each pixel by its
density's excess over the threshold, so the centre moves onto the condensed
chromatin, which is the densest thing in a field.

A cluster of touching nuclei is one blob however it is centred; `peak_area_um2`
> 0 adds a candidate at each density peak of blobs larger than that, densest
first, wherever no other candidate lies within `peak_um`. Such a candidate has
no blob of its own, so its area is NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from mitoqp.blob_kernels import dense_blobs, dense_blobs_weighted, dense_blobs_with_peaks, keep_apart


@dataclass(frozen=True)
class CandidateParams:
    # Defaults tuned on the AMi-Br validation split (README, "Candidates").
    sigma_um: float = 0.5  # Gaussian smoothing of the density
    threshold: float = 0.3  # hematoxylin OD (log10) a smoothed pixel must exceed
    min_area_um2: float = 3.0
    max_area_um2: float = 800.0
    merge_um: float = 6.0  # blobs whose centres are closer become one candidate
    centre_power: float = 0.0  # 0: a blob's centroid; p > 0: weighted by (density - threshold) ** p
    peak_area_um2: float = 0.0  # 0: off; > 0: blobs larger than this also get a candidate at their density peaks
    peak_um: float = 6.0  # ... each at least this far from every other candidate

    def __post_init__(self) -> None:
        if self.peak_area_um2 > 0 and not self.peak_um > 0:
            raise ValueError(f"candidates: peak_um must be > 0 when peak_area_um2 is set (got {self.peak_um})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidates:
    """Blob centres (x, y) in the pixels of the image they were found on."""

    xy: np.ndarray  # (N, 2) float
    area_um2: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.xy)

    def select(self, keep: np.ndarray) -> "Candidates":
        return Candidates(self.xy[keep], self.area_um2[keep])

    @staticmethod
    def concat(parts: list["Candidates"]) -> "Candidates":
        if not parts:
            return Candidates(np.zeros((0, 2)), np.zeros(0))
        return Candidates(np.concatenate([p.xy for p in parts]), np.concatenate([p.area_um2 for p in parts]))


def find_candidates(h_od: np.ndarray, mpp: float, params: CandidateParams = CandidateParams()) -> Candidates:
    """Candidates on an (H, W) hematoxylin density image of `mpp` micrometres per pixel."""
    sigma_px = params.sigma_um / mpp
    peaks = None
    if params.peak_area_um2 > 0:
        area, weight, sx, sy, *peaks = dense_blobs_with_peaks(h_od, sigma_px, params.threshold, params.centre_power,
                                                              params.peak_area_um2 / mpp**2, params.max_area_um2 / mpp**2)
    elif params.centre_power > 0:
        area, weight, sx, sy = dense_blobs_weighted(h_od, sigma_px, params.threshold, params.centre_power)
    else:
        area, sx, sy = dense_blobs(h_od, sigma_px, params.threshold)
        weight = area
    if len(area) == 0:
        return Candidates.concat([])
    area_um2 = area * (mpp * mpp)
    keep = (area_um2 >= params.min_area_um2) & (area_um2 <= params.max_area_um2)
    cands = Candidates(np.stack([sx / weight, sy / weight], axis=1)[keep], area_um2[keep])
    cands = merge_close(cands, params.merge_um / mpp, weight[keep])
    return cands if peaks is None else add_peaks(cands, *peaks, params.peak_um / mpp)


def add_peaks(c: Candidates, px: np.ndarray, py: np.ndarray, density: np.ndarray, apart_px: float) -> Candidates:
    """The candidates plus each peak, densest first, that lies at least `apart_px` from every candidate so far."""
    xy = np.stack([px, py], axis=1).astype(np.float64)
    order = np.argsort(-density, kind="stable")
    xy = xy[order]
    if len(c) and len(xy):
        xy = xy[cKDTree(c.xy).query(xy, distance_upper_bound=apart_px)[0] >= apart_px]
    kept = xy[keep_apart(xy, float(apart_px))]
    if not len(kept):
        return c
    return Candidates.concat([c, Candidates(kept, np.full(len(kept), np.nan))])


def merge_close(c: Candidates, radius_px: float, weight: np.ndarray | None = None) -> Candidates:
    """One candidate per group of blobs within `radius_px`: the weighted centre (default: by area), the summed area."""
    if len(c) < 2 or radius_px <= 0:
        return c
    pairs = cKDTree(c.xy).query_pairs(radius_px, output_type="ndarray")
    if len(pairs) == 0:
        return c
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(c), len(c)))
    ngroups, group = connected_components(graph, directed=False)
    w = c.area_um2 if weight is None else weight
    total = np.bincount(group, weights=w, minlength=ngroups)
    xy = np.stack([np.bincount(group, weights=c.xy[:, i] * w, minlength=ngroups) / total for i in (0, 1)], axis=1)
    return Candidates(xy, np.bincount(group, weights=c.area_um2, minlength=ngroups))
