"""Points from scores: one point per figure, whether the scores sit on candidates or on a probability map.

`suppress_duplicates` keeps the best of points closer than a radius (split
telophase halves, blob groups cut by a window seam, a plateau of equal map
values). `find_peaks` turns a dense model's probability map into points: local
maxima above a floor, then the same suppression, so a plateau is one point and
two peaks closer than the minimum distance are one figure.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def suppress_duplicates(xy: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept after dropping any point within `radius` of a higher-scoring kept one."""
    order = np.argsort(-scores, kind="stable")
    if len(order) < 2:
        return order
    tree = cKDTree(xy)
    removed = np.zeros(len(xy), bool)
    keep = []
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        removed[tree.query_ball_point(xy[i], radius)] = True
    return np.asarray(keep, dtype=int)


def find_peaks(prob: np.ndarray, floor: float, min_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) x, y (map pixels) and scores of the local maxima of `prob` at or above `floor`.

    A maximum is a pixel equal to the maximum of its (2r+1)^2 neighbourhood, r = ceil(min_distance).
    Touching maximum pixels (a plateau) are one peak, at the plateau pixel nearest its centroid; peaks
    closer than `min_distance` keep only the higher.
    """
    r = max(1, int(np.ceil(min_distance)))
    local_max = ndimage.maximum_filter(prob, size=2 * r + 1, mode="nearest")
    labels, n = ndimage.label((prob >= floor) & (prob == local_max), structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, np.float32)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    count = np.bincount(lab, minlength=n)
    cx, cy = np.bincount(lab, xs, n) / count, np.bincount(lab, ys, n) / count
    # the plateau pixel nearest its centroid: the point lies on the plateau even when it is not convex
    d = (xs - cx[lab]) ** 2 + (ys - cy[lab]) ** 2
    order = np.lexsort((d, lab))
    first = order[np.r_[True, lab[order][1:] != lab[order][:-1]]]
    xy = np.stack([xs[first], ys[first]], axis=1).astype(np.float64)
    scores = prob[ys[first], xs[first]].astype(np.float32)
    keep = suppress_duplicates(xy, scores, min_distance)
    return xy[keep], scores[keep]
