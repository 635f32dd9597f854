import numpy as np
import pytest

from conftest import AMIBR, MIDOG_JSON, needs_data, paint_blob, stain_rgb
from mitoqp.candidates import CandidateParams, find_candidates
from mitoqp.stain import hematoxylin

MPP = 0.25


def field(size=200):
    img = np.empty((size, size, 3), np.uint8)
    img[:] = stain_rgb(0.02, 0.25)
    return img


def test_finds_a_dark_nucleus_at_its_centre():
    img = field()
    paint_blob(img, 80.0, 120.0, 10, 7, 0.9)
    c = find_candidates(hematoxylin(img), MPP)
    assert len(c) == 1
    assert np.allclose(c.xy[0], [80, 120], atol=0.5)
    # smoothing widens a dense blob a little at a threshold below its density
    assert c.area_um2[0] == pytest.approx(np.pi * 10 * 7 * MPP**2, rel=0.25)


def test_area_limits_in_square_micrometres():
    img = field()
    paint_blob(img, 50, 50, 2, 2, 1.0)  # ~0.8 um^2: debris
    paint_blob(img, 150, 150, 9, 9, 1.0)
    c = find_candidates(hematoxylin(img), MPP, CandidateParams(min_area_um2=3))
    assert len(c) == 1 and np.allclose(c.xy[0], [150, 150], atol=0.5)
    assert len(find_candidates(hematoxylin(img), MPP, CandidateParams(max_area_um2=5))) == 0


def test_centre_power_puts_the_centre_on_a_dense_figure_touching_a_pale_nucleus():
    img = field()
    paint_blob(img, 104, 100, 20, 14, 0.45)  # a pale nucleus
    paint_blob(img, 80, 100, 9, 9, 1.4)  # condensed chromatin touching it: one blob
    plain = find_candidates(hematoxylin(img), MPP, CandidateParams(merge_um=0))
    dense = find_candidates(hematoxylin(img), MPP, CandidateParams(merge_um=0, centre_power=2))
    assert len(plain) == len(dense) == 1 and dense.area_um2[0] == plain.area_um2[0]
    assert np.hypot(*(plain.xy[0] - [80, 100])) * MPP > 4  # the centroid lies between the two
    assert np.hypot(*(dense.xy[0] - [80, 100])) * MPP < 1.5  # on the figure


def test_merged_candidates_keep_their_summed_area_and_the_weighted_centre():
    img = field()
    paint_blob(img, 90, 100, 6, 10, 1.4)
    paint_blob(img, 110, 100, 6, 10, 0.5)  # 5 um apart: merged
    apart = find_candidates(hematoxylin(img), MPP, CandidateParams(merge_um=0, centre_power=2))
    one = find_candidates(hematoxylin(img), MPP, CandidateParams(centre_power=2))
    assert len(apart) == 2 and len(one) == 1
    assert one.area_um2[0] == pytest.approx(apart.area_um2.sum())
    assert one.xy[0, 0] < 97  # the denser half weighs more than its area


def cluster_of_three(img):
    """Three touching nuclei in a row, each with a dense core; the last one is the 'figure'."""
    for x in (50, 90, 130):
        paint_blob(img, x, 100, 22, 14, 0.5)
    for x in (50, 90, 130):
        paint_blob(img, x, 100, 6, 6, 1.2)


def test_density_peaks_of_a_large_blob_add_candidates_where_its_centre_is_far():
    img = field()
    cluster_of_three(img)
    h = hematoxylin(img)
    one = find_candidates(h, MPP, CandidateParams(centre_power=2))
    assert len(one) == 1 and np.hypot(*(one.xy[0] - [130, 100])) * MPP > 7.5  # the figure would be missed
    c = find_candidates(h, MPP, CandidateParams(centre_power=2, peak_area_um2=100, peak_um=6))
    assert np.array_equal(c.xy[0], one.xy[0]) and c.area_um2[0] == one.area_um2[0]  # the blob's own candidate first
    assert len(c) == 3 and np.isnan(c.area_um2[1:]).all()  # peaks have no blob of their own
    for x in (50, 130):
        assert np.min(np.hypot(*(c.xy - [x, 100]).T)) * MPP < 2
    # off by default, for blobs up to peak_area_um2, and where a peak is nearer than peak_um to a candidate
    assert len(find_candidates(h, MPP, CandidateParams(centre_power=2, peak_area_um2=one.area_um2[0] + 1))) == 1
    assert len(find_candidates(h, MPP, CandidateParams(centre_power=2, peak_area_um2=100, peak_um=11))) == 1
    assert len(find_candidates(h, MPP, CandidateParams(centre_power=2, peak_area_um2=100,
                                                       max_area_um2=one.area_um2[0] - 1))) == 0
    with pytest.raises(ValueError, match="peak_um"):
        CandidateParams(peak_area_um2=100, peak_um=0)


def test_split_anaphase_halves_become_one_candidate():
    img = field()
    paint_blob(img, 90, 100, 6, 10, 1.0)
    paint_blob(img, 110, 100, 6, 10, 1.0)  # 20 px = 5 um apart, a gap between them
    assert len(find_candidates(hematoxylin(img), MPP, CandidateParams(merge_um=0))) == 2
    c = find_candidates(hematoxylin(img), MPP, CandidateParams(merge_um=6))
    assert len(c) == 1 and np.allclose(c.xy[0], [100, 100], atol=0.5)


def test_threshold_does_not_depend_on_the_darkest_object():
    img = field()
    paint_blob(img, 60, 60, 8, 8, 0.6)
    alone = find_candidates(hematoxylin(img), MPP)
    paint_blob(img, 150, 150, 8, 8, 2.0)  # a much darker object elsewhere
    both = find_candidates(hematoxylin(img), MPP)
    assert len(alone) == 1 and len(both) == 2


def test_glass_and_black_padding_give_no_candidates():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, 50:] = 255
    assert len(find_candidates(hematoxylin(img), MPP)) == 0


def test_resolution_independent_sizes():
    img = field(400)
    paint_blob(img, 200, 200, 20, 14, 0.9)
    c_hi = find_candidates(hematoxylin(img), MPP / 2)
    from PIL import Image
    small = np.asarray(Image.fromarray(img).resize((200, 200), Image.Resampling.BILINEAR))
    c_lo = find_candidates(hematoxylin(small), MPP)
    assert c_hi.area_um2[0] == pytest.approx(c_lo.area_um2[0], rel=0.1)


@needs_data
def test_sensitivity_on_validation_fields():
    """The default front end finds >= 0.98 of validation figures within 7.5 um (README numbers)."""
    from scipy.spatial import cKDTree

    from mitoqp.datasets import read_amibr

    fields = read_amibr(AMIBR, MIDOG_JSON, {"validation"})
    hit = total = n = 0
    for f in fields:
        c = find_candidates(hematoxylin(f.image()), f.mpp)
        n += len(c)
        total += len(f.figures)
        if len(c):
            hit += int((cKDTree(c.xy).query(f.figures)[0] <= 7.5 / f.mpp).sum())
    assert hit / total >= 0.98
    assert n / len(fields) < 5


def blobs_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("seed,density", [(0, 0.3), (1, 0.5), (2, 0.6), (3, 0.05)])
def test_blob_kernel_labels_like_scipy_on_random_masks(seed, density):
    """Run-based labelling = ndimage.label (4-connectivity): U shapes, spirals of runs, diagonals apart."""
    from mitoqp.blob_kernels import blob_stats, reference_blobs

    rng = np.random.default_rng(seed)
    mask = rng.random((97, 131)) < density
    area, sx, sy = blob_stats(mask)
    ref = reference_blobs(mask.astype(np.float32), 0, 0.5)
    assert blobs_equal((area, sx, sy), ref)
    assert area.sum() == mask.sum()


def test_blob_kernel_edge_cases():
    from mitoqp.blob_kernels import blob_stats

    assert [len(a) for a in blob_stats(np.zeros((5, 7), bool))] == [0, 0, 0]
    area, sx, sy = blob_stats(np.ones((5, 7), bool))
    assert area.tolist() == [35] and sx[0] / 35 == 3 and sy[0] / 35 == 2
    u = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 1]], bool)  # two arms joined only in the last row
    assert blob_stats(u)[0].tolist() == [7]
    diag = np.eye(4, dtype=bool)  # touching corners are not 4-connected
    assert blob_stats(diag)[0].tolist() == [1, 1, 1, 1]


@needs_data
@pytest.mark.parametrize("sigma_px", [0.0, 2.0, 3.3])
def test_fused_smoothing_gives_scipys_blobs_on_real_tissue(sigma_px):
    """Same mask bit for bit, same blobs in the same order as gaussian_filter + label."""
    from PIL import Image

    from mitoqp.blob_kernels import dense_blobs, reference_blobs

    paths = sorted(AMIBR.glob("*/*.png"))[:64]
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    mosaic = np.concatenate([np.concatenate(tiles[i * 8:(i + 1) * 8], axis=1) for i in range(8)], axis=0)
    h = hematoxylin(mosaic)[:1000, :777]  # odd sizes: edges of both passes
    ours = dense_blobs(h, sigma_px, 0.3)
    assert len(ours[0]) > 50
    assert blobs_equal(ours, reference_blobs(h, sigma_px, 0.3))


@pytest.mark.parametrize("sigma_px,power", [(0.0, 1.0), (2.0, 2.0), (3.3, 0.5)])
def test_weighted_blobs_match_scipy(sigma_px, power):
    """Weighted centres from the row-run kernels = the same sums by gaussian_filter + label + bincount."""
    from scipy import ndimage

    from mitoqp.blob_kernels import dense_blobs, dense_blobs_weighted, reference_weighted_blobs

    rng = np.random.default_rng(7)
    h = ndimage.gaussian_filter(rng.random((301, 257)).astype(np.float32), 2)
    h = (h - h.mean()) / h.std() * 0.3 + 0.2
    ours = dense_blobs_weighted(h, sigma_px, 0.3, power)
    ref = reference_weighted_blobs(h, sigma_px, 0.3, power)
    assert len(ours[0]) > 100
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-9)
    assert np.array_equal(ours[0], dense_blobs(h, sigma_px, 0.3)[0])  # the same blobs as the plain path
    assert (ours[1] > 0).all()


@pytest.mark.parametrize("sigma_px,power", [(0.0, 0.0), (2.0, 2.0)])
def test_blob_peaks_match_scipy(sigma_px, power):
    """Peaks = pixels no 8-neighbour exceeds (maximum_filter), inside blobs in the chosen size range."""
    from scipy import ndimage

    from mitoqp.blob_kernels import dense_blobs_weighted, dense_blobs_with_peaks

    rng = np.random.default_rng(3)
    h = ndimage.gaussian_filter(rng.random((203, 179)).astype(np.float32), 2)
    h = (h - h.mean()) / h.std() * 0.3 + 0.2
    area, weight, sx, sy, px, py, pv = dense_blobs_with_peaks(h, sigma_px, 0.3, power, 40, 400)
    if power > 0:
        for a, b in zip((area, weight, sx, sy), dense_blobs_weighted(h, sigma_px, 0.3, power)):
            assert np.array_equal(a, b)
    smooth = ndimage.gaussian_filter(h, sigma_px, mode="nearest") if sigma_px > 0 else h
    labels, n = ndimage.label(smooth > np.float32(0.3))
    sizes = np.bincount(labels.ravel())
    chosen = (sizes > 40) & (sizes <= 400)
    chosen[0] = False
    ys, xs = np.nonzero(chosen[labels] & (smooth == ndimage.maximum_filter(smooth, size=3, mode="nearest")))
    assert 0 < chosen.sum() < n and len(xs) > 10
    assert np.array_equal(px, xs) and np.array_equal(py, ys) and np.array_equal(pv, smooth[ys, xs])


def test_keep_apart_is_greedy_in_order():
    from mitoqp.blob_kernels import keep_apart

    xy = np.array([[0, 0], [3, 0], [5, 0], [10, 0], [10, 3.99]], np.float64)
    assert keep_apart(xy, 4.0).tolist() == [0, 2, 3]  # 3 is too near 0; 10,3.99 too near 10,0
    assert keep_apart(xy[::-1].copy(), 4.0).tolist() == [0, 2, 4]
    assert keep_apart(np.zeros((0, 2)), 4.0).tolist() == []
