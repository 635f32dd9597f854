import numpy as np
import pytest

from conftest import AMIBR, needs_data, stain_rgb
from mitoqp.stain import (BLACK_LEVEL, WHITE_LEVEL, deconvolve, hematoxylin, inverse_stain_matrix, macenko_vectors,
                          stain_matrix)

LN10_SCALE = np.log(1e6) / np.log(10)  # skimage's rgb2hed divides ln(OD) by ln(1e-6); ours is log10
# skimage inverts the raw Ruifrok rows, we normalise them first (0.2% apart); skimage clips negatives
RTOL, ATOL = 5e-3, 1e-3


def skimage_h(rgb):
    skc = pytest.importorskip("skimage.color")
    return skc.rgb2hed(rgb)[..., 0] * LN10_SCALE


def test_known_optical_densities():
    # a pixel of pure hematoxylin at density c deconvolves to c
    for c in (0.2, 0.5, 1.0):
        od = c * stain_matrix()[0]
        px = np.round(255 * 10 ** (-od)).astype(np.uint8)[None, None]
        assert hematoxylin(px)[0, 0] == pytest.approx(c, abs=0.02)


def test_intensity_table_is_log10():
    from mitoqp.stain import OD_TABLE

    assert OD_TABLE[255] == 0
    assert OD_TABLE[int(round(255 / 10))] == pytest.approx(1.0, abs=0.01)
    assert np.isfinite(OD_TABLE[0])


def test_background_is_never_stained():
    img = np.zeros((4, 4, 3), np.uint8)
    img[0] = 255  # glass
    img[1] = BLACK_LEVEL  # padding
    img[2] = WHITE_LEVEL
    img[3] = stain_rgb(0.8)
    h = hematoxylin(img)
    assert np.all(h[:3] == 0)
    assert h[3].min() > 0.7


def test_matches_skimage_on_generated_image():
    rng = np.random.default_rng(0)
    img = rng.integers(BLACK_LEVEL + 1, WHITE_LEVEL, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.maximum(hematoxylin(img), 0), skimage_h(img), rtol=RTOL, atol=ATOL)


@needs_data
def test_matches_skimage_on_real_patches():
    from PIL import Image

    for path in sorted((AMIBR / "Normal").glob("*.png"))[:20]:
        img = np.asarray(Image.open(path).convert("RGB"))
        fg = (img.min(axis=2) < WHITE_LEVEL) & (img.max(axis=2) > BLACK_LEVEL)
        ours, ref = hematoxylin(img), skimage_h(img)
        np.testing.assert_allclose(np.maximum(ours[fg], 0), ref[fg], rtol=RTOL, atol=ATOL)
        assert np.all(ours[~fg] == 0)


def test_eosin_channel_and_custom_matrix():
    img = np.broadcast_to(stain_rgb(0.0, 0.6), (2, 2, 3)).copy()
    he = deconvolve(img, channels=(0, 1))
    assert he[..., 1].mean() == pytest.approx(0.6, abs=0.03)
    assert abs(he[..., 0].mean()) < 0.05
    m = inverse_stain_matrix(stain_matrix(np.array([[0.6, 0.7, 0.3], [0.1, 0.9, 0.2]])))
    assert deconvolve(img, m, (0, 1)).shape == (2, 2, 2)


def test_rejects_non_uint8():
    with pytest.raises(ValueError):
        hematoxylin(np.zeros((4, 4, 3), np.float32))


def test_macenko_recovers_stain_vectors():
    rng = np.random.default_rng(1)
    h_vec, e_vec = np.array([0.55, 0.75, 0.35]), np.array([0.10, 0.90, 0.42])
    h_vec, e_vec = h_vec / np.linalg.norm(h_vec), e_vec / np.linalg.norm(e_vec)
    conc = rng.uniform(0.0, 1.0, (20000, 2))
    conc[:5000, 1] *= 0.05  # some nearly pure hematoxylin
    conc[5000:10000, 0] *= 0.05  # some nearly pure eosin
    od = conc[:, :1] * h_vec + conc[:, 1:] * e_vec + 0.2
    rgb = np.clip(255 * 10 ** (-od), 0, 255).astype(np.uint8).reshape(-1, 1, 3)
    est = macenko_vectors(rgb)
    assert est[0] @ h_vec > 0.98 and est[1] @ e_vec > 0.98
