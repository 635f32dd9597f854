"""The circle of radius r holding the most points, exactly: branch and bound over the plane of centres.

Why not a sweep per point: on a crowded slide (tens of thousands of detections, thousands within reach of
each) sweeping every figure that might lie on the best circle's rim cost a minute. Here the centres are cut
into square cells. A circle centred anywhere in a cell (centre m, half-diagonal hd) holds
- every point within r - hd of m (a lower part, `lo`),
- no point beyond r + hd of m (so `ub`, the count within r + hd, bounds the cell),
and the circle centred at m itself is a real candidate. Cells whose bound cannot beat the best found are
dropped, the others split in four. Once a cell's undecided ring (ub - lo points) is small, it is solved
exactly: the best centre in the cell is a vertex of the arrangement of the ring points' circles clipped to
the cell (two circles crossing, a circle crossing an edge, or a corner). Counts within a radius come from
a grid of the points with per-row running sums, so a count costs about one row per grid cell of the
diameter plus the points near the rim.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

EPS = 1e-9  # relative: a figure on the window's edge counts as inside
GRID_CELL_POINTS = 8.0  # counting-grid cells sized to hold about this many points (see best_circle)
GRID_MAX_CELLS = 4_000_000
START_CELLS = 65_536  # at most this many cells of centres to begin with
LEAF_POINTS = 32  # a cell with at most this many undecided points is solved exactly
MIN_CELL = 2.0 ** -30  # of r: a cell this small is solved whatever its ring holds


@njit(cache=True)
def _grid(xy, g, x0, y0, nx, ny):
    """The points sorted by grid cell (row-major) and where each cell's run starts (starts[k]..starts[k+1])."""
    n = len(xy)
    key = np.empty(n, np.int64)
    for p in range(n):
        key[p] = min(int((xy[p, 1] - y0) / g), ny - 1) * nx + min(int((xy[p, 0] - x0) / g), nx - 1)
    order = np.argsort(key, kind="mergesort")
    starts = np.zeros(nx * ny + 1, np.int64)
    for p in range(n):
        starts[key[p] + 1] += 1
    for k in range(nx * ny):
        starts[k + 1] += starts[k]
    return xy[order, 0].copy(), xy[order, 1].copy(), starts


@njit(cache=True)
def _row_band(py, y, y0, g):
    """The nearest and farthest vertical distance from py to grid row y."""
    top = y0 + y * g
    bottom = top + g
    near = 0.0 if top <= py <= bottom else min(abs(top - py), abs(bottom - py))
    return near, max(abs(top - py), abs(bottom - py))


@njit(cache=True)
def _count_within(px, py, rad, sx, sy, starts, x0, y0, g, nx, ny):
    """Points within `rad` of (px, py): whole grid cells inside the disk from the running sums, the rest one by one."""
    if rad < 0:
        return 0
    n = 0
    rad2 = rad * rad
    for y in range(max(int(math.floor((py - rad - y0) / g)), 0), min(int(math.floor((py + rad - y0) / g)), ny - 1) + 1):
        near, far = _row_band(py, y, y0, g)
        if near > rad:
            continue
        wo = math.sqrt(rad2 - near * near)
        xa = max(int(math.floor((px - wo - x0) / g)), 0)
        xb = min(int(math.floor((px + wo - x0) / g)), nx - 1)
        if xa > xb:
            continue
        ia, ib = xb + 1, xb  # the cells wholly inside: none unless the row's far edge is inside
        if far <= rad:
            wi = math.sqrt(rad2 - far * far)
            ia = max(int(math.ceil((px - wi - x0) / g)), xa)
            ib = min(int(math.floor((px + wi - x0) / g)) - 1, xb)
        row = y * nx
        if ia <= ib:
            n += starts[row + ib + 1] - starts[row + ia]
        for x in range(xa, xb + 1):
            if ia <= x <= ib:
                continue
            for s in range(starts[row + x], starts[row + x + 1]):
                if (sx[s] - px) ** 2 + (sy[s] - py) ** 2 <= rad2:
                    n += 1
    return n


@njit(cache=True)
def _ring(px, py, rin, rout, sx, sy, starts, x0, y0, g, nx, ny, out):
    """Indices (into the sorted points) of those with rin < distance <= rout from (px, py); returns how many."""
    m = 0
    rout2, rin2 = rout * rout, rin * rin
    for y in range(max(int(math.floor((py - rout - y0) / g)), 0), min(int(math.floor((py + rout - y0) / g)), ny - 1) + 1):
        near, far = _row_band(py, y, y0, g)
        if near > rout:
            continue
        wo = math.sqrt(rout2 - near * near)
        xa = max(int(math.floor((px - wo - x0) / g)), 0)
        xb = min(int(math.floor((px + wo - x0) / g)), nx - 1)
        ia, ib = xb + 1, xb  # cells wholly inside rin hold no ring point
        if rin >= 0 and far <= rin:
            wi = math.sqrt(rin2 - far * far)
            ia = int(math.ceil((px - wi - x0) / g))
            ib = int(math.floor((px + wi - x0) / g)) - 1
        row = y * nx
        for x in range(xa, xb + 1):
            if ia <= x <= ib:
                continue
            for s in range(starts[row + x], starts[row + x + 1]):
                d2 = (sx[s] - px) ** 2 + (sy[s] - py) ** 2
                if d2 <= rout2 and (rin < 0 or d2 > rin2) and m < len(out):
                    out[m] = s
                    m += 1
    return m


@njit(cache=True)
def _depth(ax, ay, qx, qy, rad2):
    n = 0
    for i in range(len(ax)):
        if (ax[i] - qx) ** 2 + (ay[i] - qy) ** 2 <= rad2:
            n += 1
    return n


@njit(cache=True)
def _solve_cell(px, py, half, r, lo, ring, sx, sy, starts, x0, y0, g, nx, ny):
    """The best circle centred in the cell |x - px|, |y - py| <= half: `lo` sure points plus the deepest vertex
    of the ring points' circles inside the cell (circle-circle and circle-edge crossings, corners)."""
    hd = half * math.sqrt(2.0)
    rad = r * (1 + EPS)
    idx = np.empty(ring + 64, np.int64)  # room for a point that rounding counted on the other side
    m = _ring(px, py, r - hd, rad + hd, sx, sy, starts, x0, y0, g, nx, ny, idx)
    ax, ay = sx[idx[:m]], sy[idx[:m]]
    rad2 = rad * rad
    tol = 0.1 * r * EPS
    best, bx, by = lo + _depth(ax, ay, px, py, rad2), px, py
    for cx, cy in ((px - half, py - half), (px + half, py - half), (px - half, py + half), (px + half, py + half)):
        got = lo + _depth(ax, ay, cx, cy, rad2)
        if got > best:
            best, bx, by = got, cx, cy
    for i in range(m):
        for j in range(i + 1, m):  # the two centres of the circles of radius r through points i and j
            dx, dy = ax[j] - ax[i], ay[j] - ay[i]
            d = math.sqrt(dx * dx + dy * dy)
            if d == 0 or d > 2 * r:
                continue
            h = math.sqrt(max(r * r - d * d / 4, 0.0))
            for sgn in (1.0, -1.0):
                cx = (ax[i] + ax[j]) / 2 - sgn * h * dy / d
                cy = (ay[i] + ay[j]) / 2 + sgn * h * dx / d
                if abs(cx - px) <= half + tol and abs(cy - py) <= half + tol:
                    got = lo + _depth(ax, ay, cx, cy, rad2)
                    if got > best:
                        best, bx, by = got, cx, cy
        for e in range(4):  # where point i's circle crosses the cell's edges
            vertical = e < 2
            c = (px if vertical else py) + (half if e % 2 == 0 else -half)
            u = (ax[i] if vertical else ay[i])
            v = (ay[i] if vertical else ax[i])
            w2 = r * r - (c - u) ** 2
            if w2 < 0:
                continue
            w = math.sqrt(w2)
            for t in (v - w, v + w):
                along = py if vertical else px
                if abs(t - along) <= half + tol:
                    cx, cy = (c, t) if vertical else (t, c)
                    got = lo + _depth(ax, ay, cx, cy, rad2)
                    if got > best:
                        best, bx, by = got, cx, cy
    return best, bx, by


@njit(cache=True, parallel=True)
def _bounds(cx, cy, half, r, sx, sy, starts, x0, y0, g, nx, ny):
    """Per cell: the bound (points within r + hd), the circle at its centre, and the sure points (within r - hd)."""
    m = len(cx)
    hd = half * math.sqrt(2.0)
    rad = r * (1 + EPS)
    ub = np.zeros(m, np.int64)
    at = np.zeros(m, np.int64)
    lo = np.zeros(m, np.int64)
    for t in prange(m):
        ub[t] = _count_within(cx[t], cy[t], rad + hd, sx, sy, starts, x0, y0, g, nx, ny)
        if ub[t] > 0:
            at[t] = _count_within(cx[t], cy[t], rad, sx, sy, starts, x0, y0, g, nx, ny)
            lo[t] = _count_within(cx[t], cy[t], r - hd, sx, sy, starts, x0, y0, g, nx, ny)
    return ub, at, lo


@njit(cache=True, parallel=True)
def _children(px, py, half, r, lo, ring, sx, sy, starts, x0, y0, g, nx, ny):
    """The four quarters of each cell with their bounds, counted among the parent's ring points only: the parent's
    sure points are sure for each quarter and its points beyond r + hd are beyond each quarter's reach."""
    k = len(px)
    hd = half * math.sqrt(2.0)
    q = half / 2
    rad = r * (1 + EPS)
    reach2, at2 = (rad + hd / 2) ** 2, rad * rad
    sure2 = max(r - hd / 2, 0.0) ** 2
    cx = np.empty(4 * k)
    cy = np.empty(4 * k)
    ub = np.empty(4 * k, np.int64)
    at = np.empty(4 * k, np.int64)
    sure = np.empty(4 * k, np.int64)
    for t in prange(k):
        idx = np.empty(ring[t] + 64, np.int64)
        m = _ring(px[t], py[t], r - hd, rad + hd, sx, sy, starts, x0, y0, g, nx, ny, idx)
        for c in range(4):
            ox = q if c % 2 else -q
            oy = q if c >= 2 else -q
            u, v = px[t] + ox, py[t] + oy
            nu, na, ns = lo[t], lo[t], lo[t]
            for j in range(m):
                d2 = (sx[idx[j]] - u) ** 2 + (sy[idx[j]] - v) ** 2
                if d2 <= reach2:
                    nu += 1
                    if d2 <= at2:
                        na += 1
                        if d2 <= sure2 and r > hd / 2:
                            ns += 1
            cx[4 * t + c], cy[4 * t + c] = u, v
            ub[4 * t + c], at[4 * t + c], sure[4 * t + c] = nu, na, ns
    return cx, cy, ub, at, sure


@njit(cache=True, parallel=True)
def _solve_cells(cx, cy, half, r, lo, ring, sx, sy, starts, x0, y0, g, nx, ny):
    m = len(cx)
    got = np.zeros(m, np.int64)
    bx = np.empty(m)
    by = np.empty(m)
    for t in prange(m):
        got[t], bx[t], by[t] = _solve_cell(cx[t], cy[t], half, r, lo[t], ring[t], sx, sy, starts, x0, y0, g, nx, ny)
    return got, bx, by


@njit(cache=True)
def best_circle(xy, r):
    """(count, centre x, centre y, cells solved exactly) of the circle of radius r holding the most points."""
    n = len(xy)
    xmin, xmax = xy[:, 0].min(), xy[:, 0].max()
    ymin, ymax = xy[:, 1].min(), xy[:, 1].max()
    # a count visits the grid cells along the rim (about 4 pi r / g) and the points in them (about 4 pi r g times
    # the density): measured here, a cell costs about 8 points, so cells of about 8 points balance the two
    density = n / ((xmax - xmin + r) * (ymax - ymin + r))
    g = min(max(math.sqrt(GRID_CELL_POINTS / density), r / 32), r / 2)
    g = max(g, math.sqrt((xmax - xmin + 2 * g) * (ymax - ymin + 2 * g) / GRID_MAX_CELLS))
    gx0, gy0 = xmin - g, ymin - g
    nx = int((xmax - gx0) / g) + 2
    ny = int((ymax - gy0) / g) + 2
    sx, sy, starts = _grid(xy, g, gx0, gy0, nx, ny)
    # cells of centres over every place a best centre can be: within r of a point
    w, h = xmax - xmin + 2 * r, ymax - ymin + 2 * r
    size = max(r / 4, math.sqrt(w * h / START_CELLS))
    kx, ky = int(math.ceil(w / size)), int(math.ceil(h / size))
    cx = np.empty(kx * ky)
    cy = np.empty(kx * ky)
    for j in range(ky):
        for i in range(kx):
            cx[j * kx + i] = xmin - r + (i + 0.5) * size
            cy[j * kx + i] = ymin - r + (j + 0.5) * size
    best, bx, by = 1, xy[0, 0], xy[0, 1]  # a circle on a figure holds it
    solved = 0
    ub, at, lo = _bounds(cx, cy, size / 2, r, sx, sy, starts, gx0, gy0, g, nx, ny)
    while len(cx):
        half = size / 2
        for t in range(len(cx)):
            if at[t] > best:
                best, bx, by = at[t], cx[t], cy[t]
        last = size <= r * MIN_CELL
        leaf = (ub > best) & ((ub - lo <= LEAF_POINTS) | last)
        if leaf.any():
            got, lx, ly = _solve_cells(cx[leaf], cy[leaf], half, r, lo[leaf], ub[leaf] - lo[leaf],
                                       sx, sy, starts, gx0, gy0, g, nx, ny)
            solved += len(got)
            for t in range(len(got)):
                if got[t] > best:
                    best, bx, by = got[t], lx[t], ly[t]
        split = (ub > best) & ~leaf
        cx, cy, ub, at, lo = _children(cx[split], cy[split], half, r, lo[split], ub[split] - lo[split],
                                       sx, sy, starts, gx0, gy0, g, nx, ny)
        size = half
    return best, bx, by, solved
