"""numba kernels of the candidate stage: smooth + threshold in one pass, then blobs from row runs.

The reference is scipy (`ndimage.gaussian_filter`, `ndimage.label`, bincount
statistics): 45 MP/s on a whole slide, a fifth of the front end's pace. These
kernels give the same mask and the same blobs in the same order:

- the Gaussian is separable; like scipy, the vertical pass goes first, sums in
  float64 with the centre tap first and then mirrored pairs from the outside in, and rounds to
  float32 between passes, so a pixel's value is bit for bit scipy's;
- connected components (4-connectivity, as `ndimage.label`) are found on runs
  of foreground pixels in each row, not on pixels: a tumour window has a few
  thousand runs, and area, x and y sums of a run come in closed form. A
  component's root is its first run in raster order, so blobs come out in the
  order of their first pixel, as scipy numbers them.

A blob's centre may instead be weighted by how far each pixel's smoothed density
exceeds the threshold (`dense_blobs_weighted`): a run's weighted sums need its
pixels, so that pass walks the foreground, one row per thread.

Inside blobs too large for one nucleus, the density's local maxima can be listed
(`dense_blobs_with_peaks`): a figure in a cluster of touching nuclei is one of them.

All kernels release the GIL, so windows can be processed on worker threads.
"""

from __future__ import annotations

import numba
import numpy as np


def gaussian_weights(sigma_px: float, truncate: float = 4.0) -> np.ndarray:
    """Half of scipy's normalised Gaussian kernel: weights of offsets 0..radius (float64)."""
    radius = int(truncate * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma_px * sigma_px) * x**2)  # scipy's expression, so the rounding is scipy's too
    phi /= phi.sum()
    return np.ascontiguousarray(phi[radius:])


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _smooth_threshold(img, half, threshold, mask, edges, tmp):
    """mask = gaussian(img) > threshold, 'nearest' edges; vertical pass, then horizontal.

    edges[y]: the number of run starts and ends in row y (counted while the row is in cache).
    tmp (H, W) float32 holds the vertical pass, then the smoothed image.
    """
    h, w = img.shape
    r = half.shape[0] - 1
    for y in numba.prange(h):
        acc = np.empty(w, np.float64)
        centre = img[y]
        for x in range(w):
            acc[x] = centre[x] * half[0]
        for j in range(r, 0, -1):  # scipy's order: the farthest pair first
            up = img[max(y - j, 0)]
            down = img[min(y + j, h - 1)]
            wj = half[j]
            for x in range(w):
                acc[x] += (np.float64(up[x]) + np.float64(down[x])) * wj
        out = tmp[y]
        for x in range(w):
            out[x] = np.float32(acc[x])
    for y in numba.prange(h):
        row = tmp[y]
        pad = np.empty(w + 2 * r, np.float64)  # the row with 'nearest' edges: the taps become slices
        for x in range(w):
            pad[x + r] = row[x]
        for x in range(r):
            pad[x] = row[0]
            pad[w + r + x] = row[w - 1]
        acc = np.empty(w, np.float64)
        for x in range(w):
            acc[x] = pad[x + r] * half[0]
        for j in range(r, 0, -1):
            wj = half[j]
            left = pad[r - j: r - j + w]
            right = pad[r + j: r + j + w]
            for x in range(w):
                acc[x] += (left[x] + right[x]) * wj
        dense = mask[y]
        for x in range(w):
            row[x] = np.float32(acc[x])  # the row is in pad now: it can hold the result
            dense[x] = row[x] > threshold
        edges[y] = _row_edges(dense)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _row_edges(row):
    """Run starts plus run ends in one mask row (branch-free, so it vectorises)."""
    n = np.int64(row[0])
    for x in range(1, row.shape[0]):
        n += row[x] != row[x - 1]
    return n + row[row.shape[0] - 1]


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _threshold(img, threshold, mask, edges):
    h, w = img.shape
    for y in numba.prange(h):
        dense = mask[y]
        for x in range(w):
            dense[x] = img[y, x] > threshold
        edges[y] = _row_edges(dense)


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _count_edges(mask, edges):
    for y in numba.prange(mask.shape[0]):
        edges[y] = _row_edges(mask[y])


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _fill_edges(mask, start, bounds):
    """bounds[start[y]:start[y + 1]]: x of each run start and end in row y, alternating (end exclusive)."""
    h, w = mask.shape
    for y in numba.prange(h):
        row = mask[y]
        k = start[y]
        end = start[y + 1]
        prev = False
        for x in range(w):  # a store and a conditional step, no data-dependent branch to mispredict
            cur = row[x]
            if k < end:  # false only after the row's last edge (the next row's slots are another thread's)
                bounds[k] = x
            k += cur != prev
            prev = cur
        if prev:
            bounds[k] = w


@numba.njit(cache=True, nogil=True, inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _union_runs(start, x0, x1):
    """Each run's parent after joining 4-connected runs of adjacent rows; `start` counts runs."""
    h = start.shape[0] - 1
    n = x0.shape[0]
    parent = np.arange(n)
    for y in range(1, h):
        a, a_end = start[y - 1], start[y]
        b, b_end = start[y], start[y + 1]
        while a < a_end and b < b_end:
            if x0[a] < x1[b] and x0[b] < x1[a]:  # the runs share a column: 4-connected
                ra, rb = _find(parent, a), _find(parent, b)
                if ra < rb:
                    parent[rb] = ra
                elif rb < ra:
                    parent[ra] = rb
            if x1[a] < x1[b]:
                a += 1
            else:
                b += 1
    return parent


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _blob_stats(start, bounds):
    """Per blob, in order of first pixel: pixel count, sum of x, sum of y (pixel indices)."""
    h = start.shape[0] - 1
    start = start // 2  # in runs
    x0 = bounds[0::2]
    x1 = bounds[1::2]
    n = x0.shape[0]
    parent = _union_runs(start, x0, x1)
    area = np.zeros(n, np.float64)
    sx = np.zeros(n, np.float64)
    sy = np.zeros(n, np.float64)
    for y in range(h):
        for k in range(start[y], start[y + 1]):
            root = _find(parent, k)
            length = x1[k] - x0[k]
            area[root] += length
            sx[root] += 0.5 * (x0[k] + x1[k] - 1) * length
            sy[root] += np.float64(y) * length
    roots = np.flatnonzero(parent == np.arange(n))
    return area[roots], sx[roots], sy[roots]


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _run_weights(smooth, start, bounds, threshold, power, run_w, run_wx):
    """Per run: the sum of (density - threshold) ** power over its pixels, and that sum times x."""
    for y in numba.prange(smooth.shape[0]):
        row = smooth[y]
        for k in range(start[y] // 2, start[y + 1] // 2):
            sw = 0.0
            swx = 0.0
            if power == 2.0:  # the default: no pow() per pixel
                for x in range(bounds[2 * k], bounds[2 * k + 1]):
                    e = np.float64(row[x]) - threshold
                    sw += e * e
                    swx += e * e * x
            else:
                for x in range(bounds[2 * k], bounds[2 * k + 1]):
                    wt = (np.float64(row[x]) - threshold) ** power
                    sw += wt
                    swx += wt * x
            run_w[k] = sw
            run_wx[k] = swx


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _blob_weighted_stats(start, bounds, run_w, run_wx):
    """Per blob, in order of first pixel: pixel count, weight, weighted sums of x and of y."""
    h = start.shape[0] - 1
    start = start // 2
    x0 = bounds[0::2]
    x1 = bounds[1::2]
    n = x0.shape[0]
    parent = _union_runs(start, x0, x1)
    area = np.zeros(n, np.float64)
    mass = np.zeros(n, np.float64)
    sx = np.zeros(n, np.float64)
    sy = np.zeros(n, np.float64)
    for y in range(h):
        for k in range(start[y], start[y + 1]):
            root = _find(parent, k)
            area[root] += x1[k] - x0[k]
            mass[root] += run_w[k]
            sx[root] += run_wx[k]
            sy[root] += np.float64(y) * run_w[k]
    roots = np.flatnonzero(parent == np.arange(n))
    return area[roots], mass[roots], sx[roots], sy[roots]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _run_blob_index(start, bounds):
    """Each run's blob, numbered in order of first pixel as the stats kernels number them."""
    start = start // 2
    x0 = bounds[0::2]
    x1 = bounds[1::2]
    parent = _union_runs(start, x0, x1)
    n = x0.shape[0]
    index = np.empty(n, np.int64)
    k = 0
    for i in range(n):  # a blob's root is its first run, so it is numbered before its other runs are looked up
        if parent[i] == i:
            index[i] = k
            k += 1
    for i in range(n):
        index[i] = index[_find(parent, i)]
    return index


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _is_peak(smooth, y, x):
    """No 8-neighbour is denser (plateaus give several peaks; the caller keeps one per distance)."""
    h, w = smooth.shape
    v = smooth[y, x]
    for yy in range(max(y - 1, 0), min(y + 2, h)):
        for xx in range(max(x - 1, 0), min(x + 2, w)):
            if smooth[yy, xx] > v:
                return False
    return True


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _blob_peaks(smooth, start, bounds, run_blob, chosen):
    """x, y and density of the local maxima inside the chosen blobs, in raster order."""
    h = smooth.shape[0]
    count = 0
    for pass_ in range(2):
        if pass_ == 1:
            xs = np.empty(count, np.int64)
            ys = np.empty(count, np.int64)
            vs = np.empty(count, np.float32)
            count = 0
        for y in range(h):
            for k in range(start[y] // 2, start[y + 1] // 2):
                if not chosen[run_blob[k]]:
                    continue
                for x in range(bounds[2 * k], bounds[2 * k + 1]):
                    if _is_peak(smooth, y, x):
                        if pass_ == 1:
                            xs[count] = x
                            ys[count] = y
                            vs[count] = smooth[y, x]
                        count += 1
    return xs, ys, vs


@numba.njit(cache=True, nogil=True, boundscheck=False)
def keep_apart(xy, apart_px):
    """Indices of the points, in their order, that lie at least `apart_px` from every point kept before them."""
    keep = np.empty(xy.shape[0], np.int64)
    k = 0
    r2 = apart_px * apart_px
    for i in range(xy.shape[0]):
        for j in range(k):
            dx = xy[i, 0] - xy[keep[j], 0]
            dy = xy[i, 1] - xy[keep[j], 1]
            if dx * dx + dy * dy < r2:
                break
        else:
            keep[k] = i
            k += 1
    return keep[:k]


def _run_bounds(mask: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start = np.zeros(mask.shape[0] + 1, np.int64)
    np.cumsum(edges, out=start[1:])
    bounds = np.empty(start[-1], np.int64)
    _fill_edges(mask, start, bounds)
    return start, bounds


def _blobs(mask: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _blob_stats(*_run_bounds(mask, edges))


def _smooth_mask(h_od: np.ndarray, sigma_px: float, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mask, its run edges per row, and the smoothed density it was cut from (float32)."""
    img = np.ascontiguousarray(h_od, dtype=np.float32)
    mask = np.empty(img.shape, np.bool_)
    edges = np.empty(img.shape[0], np.int64)
    if sigma_px > 0:
        smooth = np.empty(img.shape, np.float32)
        _smooth_threshold(img, gaussian_weights(sigma_px), np.float32(threshold), mask, edges, smooth)
    else:
        smooth = img
        _threshold(img, np.float32(threshold), mask, edges)
    return mask, edges, smooth


def dense_mask(h_od: np.ndarray, sigma_px: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose smoothed density exceeds `threshold`, (H, W) bool, and run edges per row."""
    return _smooth_mask(h_od, sigma_px, threshold)[:2]


def dense_blobs(h_od: np.ndarray, sigma_px: float, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area (px), x sum and y sum of each blob of the smoothed density above `threshold`."""
    return _blobs(*dense_mask(h_od, sigma_px, threshold))


def dense_blobs_with_peaks(h_od: np.ndarray, sigma_px: float, threshold: float, power: float,
                           peak_min_px: float, peak_max_px: float) -> tuple[np.ndarray, ...]:
    """`dense_blobs_weighted` (plain centroids at power 0) plus the density peaks of blobs of more than
    `peak_min_px` and at most `peak_max_px` pixels: (area, weight, x sum, y sum, peak x, peak y, peak density)."""
    mask, edges, smooth = _smooth_mask(h_od, sigma_px, threshold)
    start, bounds = _run_bounds(mask, edges)
    if power > 0:
        n = len(bounds) // 2
        run_w, run_wx = np.empty(n, np.float64), np.empty(n, np.float64)
        _run_weights(smooth, start, bounds, np.float64(np.float32(threshold)), np.float64(power), run_w, run_wx)
        area, weight, sx, sy = _blob_weighted_stats(start, bounds, run_w, run_wx)
    else:
        area, sx, sy = _blob_stats(start, bounds)
        weight = area
    px, py, pv = _blob_peaks(smooth, start, bounds, _run_blob_index(start, bounds),
                             (area > peak_min_px) & (area <= peak_max_px))
    return area, weight, sx, sy, px, py, pv


def dense_blobs_weighted(h_od: np.ndarray, sigma_px: float, threshold: float, power: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Area (px), weight, and weighted x and y sums of each blob; a pixel weighs its smoothed density's
    excess over `threshold` to the `power`, so the centre sits on the blob's densest part."""
    mask, edges, smooth = _smooth_mask(h_od, sigma_px, threshold)
    start, bounds = _run_bounds(mask, edges)
    n = len(bounds) // 2
    run_w, run_wx = np.empty(n, np.float64), np.empty(n, np.float64)
    _run_weights(smooth, start, bounds, np.float64(np.float32(threshold)), np.float64(power), run_w, run_wx)
    return _blob_weighted_stats(start, bounds, run_w, run_wx)


def blob_stats(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area (px), x sum and y sum of each 4-connected blob of `mask`, in scipy's label order."""
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    edges = np.empty(mask.shape[0], np.int64)
    _count_edges(mask, edges)
    return _blobs(mask, edges)


def reference_blobs(h_od: np.ndarray, sigma_px: float, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same blobs by scipy (what the kernels replaced): the yardstick of tests and benchmarks."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(h_od, sigma_px, mode="nearest") if sigma_px > 0 else h_od
    labels, n = ndimage.label(smooth > threshold)
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg]
    ys, xs = np.divmod(fg, labels.shape[1])
    area = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    return area, np.bincount(lab, weights=xs, minlength=n + 1)[1:], np.bincount(lab, weights=ys, minlength=n + 1)[1:]


def reference_weighted_blobs(h_od: np.ndarray, sigma_px: float, threshold: float, power: float
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`dense_blobs_weighted` by scipy, for tests."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(h_od.astype(np.float32), sigma_px, mode="nearest") if sigma_px > 0 \
        else h_od.astype(np.float32)
    labels, n = ndimage.label(smooth > np.float32(threshold))
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg]
    ys, xs = np.divmod(fg, labels.shape[1])
    w = (smooth.ravel()[fg].astype(np.float64) - np.float64(np.float32(threshold))) ** power
    sums = [np.bincount(lab, weights=v, minlength=n + 1)[1:] for v in (np.ones(len(fg)), w, w * xs, w * ys)]
    return sums[0], sums[1], sums[2], sums[3]
