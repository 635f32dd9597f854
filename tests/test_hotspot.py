"""The hotspot search: exact against brute force on random points, for circles and squares."""

import math

import numpy as np
import pytest

from mitoqp.hotspot import HPF_AREA_PRESETS_MM2, find_hotspot, parse_area


def brute_circle(xy: np.ndarray, r: float) -> int:
    """Every circle through two points (both centres) or centred on one: the most points within r."""
    centres = [p for p in xy]
    for i in range(len(xy)):
        for j in range(i + 1, len(xy)):
            d = np.linalg.norm(xy[j] - xy[i])
            if 0 < d <= 2 * r:
                mid, h = (xy[i] + xy[j]) / 2, math.sqrt(max(r * r - d * d / 4, 0.0))
                n = np.array([-(xy[j] - xy[i])[1], (xy[j] - xy[i])[0]]) / d
                centres += [mid + h * n, mid - h * n]
    c = np.array(centres)
    d = np.linalg.norm(xy[None, :, :] - c[:, None, :], axis=2)
    return int((d <= r * (1 + 1e-9)).sum(axis=1).max())


def brute_square(xy: np.ndarray, a: float) -> int:
    best = 0
    for x0 in xy[:, 0]:
        for y0 in xy[:, 1]:
            inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x0 + a * (1 + 1e-9)) & (xy[:, 1] >= y0) & (xy[:, 1] <= y0 + a * (1 + 1e-9))
            best = max(best, int(inside.sum()))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_circle_and_square_hotspots_are_exact(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 70))
    xy = rng.uniform(0, 6000, (n, 2))
    if seed % 3 == 0:  # a cluster, some duplicates
        xy[: n // 2] = rng.normal(3000, 400, (n // 2, 2))
        xy[-1] = xy[0]
    mpp = 0.25
    area = 0.5  # mm^2: radius 1596 px at 0.25 um/px
    hc = find_hotspot(xy, area, mpp, "circle")
    assert hc.count == brute_circle(xy, hc.size_px)
    # the reported centre really holds that many
    assert (np.linalg.norm(xy - hc.centre, axis=1) <= hc.size_px * (1 + 1e-7)).sum() == hc.count
    hs = find_hotspot(xy, area, mpp, "square")
    assert hs.count == brute_square(xy, hs.size_px)
    half = hs.size_px / 2 * (1 + 1e-7)
    assert (np.all(np.abs(xy - hs.centre) <= half, axis=1)).sum() == hs.count
    assert math.isclose(math.pi * hc.size_px ** 2, hs.size_px ** 2)


def test_the_best_circle_need_not_be_centred_on_a_figure():
    # three points on a circle of radius 100 around an empty centre: no circle centred on one holds all three
    t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    xy = np.stack([100 * np.cos(t), 100 * np.sin(t)], 1) + 1000
    r_px = 100.5
    area = math.pi * (r_px * 0.25 / 1000) ** 2
    h = find_hotspot(xy, area, 0.25, "circle")
    assert h.count == 3
    assert np.linalg.norm(np.array(h.centre) - 1000) < 1.0


def test_empty_and_bad_input():
    assert find_hotspot(np.zeros((0, 2)), 2.0, 0.25).count == 0
    with pytest.raises(ValueError, match="shape"):
        find_hotspot(np.zeros((3, 2)), 2.0, 0.25, "hexagon")
    assert parse_area("fn22") == HPF_AREA_PRESETS_MM2["fn22"] and parse_area("2") == 2.0
    with pytest.raises(ValueError, match="hpf-area"):
        parse_area("ten fields")
    with pytest.raises(ValueError, match="positive"):
        parse_area("-1")


def every_sweep(xy: np.ndarray, r: float) -> int:
    """No pruning: the angular sweep around every point (some optimal circle has a point on its rim)."""
    from scipy.spatial import cKDTree

    tree, best = cKDTree(xy), 0
    for i, near in enumerate(tree.query_ball_point(xy, 2 * r * (1 + 1e-9))):
        d = xy[[j for j in near if j != i]] - xy[i]
        dist = np.hypot(d[:, 0], d[:, 1])
        same = dist <= 2 * r * 1e-9
        theta, alpha = np.arctan2(d[~same, 1], d[~same, 0]), np.arccos(np.minimum(1, dist[~same] / (2 * r * (1 + 1e-9))))
        enter, leave = (theta - alpha) % (2 * np.pi), (theta + alpha) % (2 * np.pi)
        events = np.concatenate([np.stack([enter, -np.ones_like(enter)], 1), np.stack([leave, np.ones_like(leave)], 1)])
        events = events[np.lexsort((events[:, 1], events[:, 0]))]  # enters before leaves at a tie
        depth = (enter > leave).sum() - np.cumsum(events[:, 1]) if len(events) else np.zeros(1)
        best = max(best, 1 + int(same.sum()) + int(max(depth.max(), (enter > leave).sum())))
    return best


@pytest.mark.parametrize("layout", ["lattice", "crowded", "cluster", "ring"])
def test_branch_and_bound_matches_sweeping_every_point(layout):
    """Thousands of points: the bounds over cells of centres and the exact solve of the last cells must still find
    the best circle, on layouts where many circles tie (a lattice), all overlap (crowded), or many points share
    one rim (a ring: the cells around its centre never run out of undecided points)."""
    from mitoqp.hotspot_circle import best_circle

    rng = np.random.default_rng(7)
    r = math.sqrt(2.0 / math.pi) * 1000 / 0.25
    if layout == "lattice":  # tiled fields: many circles tie at the best count
        xy = np.stack(np.meshgrid(np.arange(45) * 310.0, np.arange(40) * 290.0), -1).reshape(-1, 2)
    elif layout == "crowded":
        xy = rng.uniform(0, 9000, (1800, 2))
    elif layout == "ring":
        t = rng.uniform(0, 2 * np.pi, 300)
        xy = np.concatenate([np.stack([np.cos(t), np.sin(t)], 1) * r + 10000, rng.uniform(0, 20000, (400, 2))])
    else:
        xy = np.concatenate([rng.uniform(0, 40000, (2500, 2)), rng.normal(20000, 1500, (700, 2))])
        xy[-4:] = xy[:4]  # duplicates
    xy = np.ascontiguousarray(xy)
    count, cx, cy, solved = best_circle(xy, r)
    assert count == every_sweep(xy, r)
    assert (np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) <= r * (1 + 1e-7)).sum() == count
