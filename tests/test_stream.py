"""Streaming: aligned windows, each tile decoded once, bounded cache, nothing lost or doubled at seams."""

import numpy as np
import pytest

from conftest import paint_blob, stain_rgb
from mitoqp.candidates import find_candidates
from mitoqp.slide import open_slide
from mitoqp.stain import hematoxylin
from mitoqp.stream import TileCache, plan_windows, stream_windows
from mitoqp.synthetic_slide import write_svs_like

TILE = 128
W, H = 1500, 1100  # not a multiple of the tile size: edge tiles are partial
# blobs on window seams (window = 4 tiles = 512 px), on tile seams, a corner and an edge
BLOBS = [(512, 300), (300, 512), (512, 512), (1024, 700), (128, 900), (700, 128), (5, 5), (1495, 1000), (260, 260)]


def scene() -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[:] = stain_rgb(0.02, 0.25)
    for x, y in BLOBS:
        paint_blob(img, x, y, 9, 7, 0.9)
    return img


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    img = scene()
    path = tmp_path_factory.mktemp("stream") / "seams.svs"
    write_svs_like(path, lambda x, y, w, h: img[y:y + h, x:x + w], W, H, 0.25, tile=TILE, levels=1, compression="zlib")
    return path


def test_windows_cover_the_level_once_and_match_read_region(slide_path):
    with open_slide(slide_path) as slide:
        plan = plan_windows(slide, 0, 1.0, halo_work=40, window_px=512)
        cover = np.zeros((H, W), int)
        for win in stream_windows(slide, plan, workers=2):
            x0, y0, x1, y1 = win.core
            ox, oy = int(win.origin[0]), int(win.origin[1])
            cover[oy + y0:oy + y1, ox + x0:ox + x1] += 1
            h, w = win.rgb.shape[:2]
            np.testing.assert_array_equal(win.rgb, slide.read_region(0, ox, oy, w, h))
        assert np.all(cover == 1)


def test_each_tile_is_decoded_once_and_the_cache_stays_small(slide_path, monkeypatch):
    calls = []
    peaks = []
    orig_fetch = TileCache.fetch

    def counting_fetch(self, keys):
        orig_fetch(self, keys)
        peaks.append(self.peak)

    monkeypatch.setattr(TileCache, "fetch", counting_fetch)
    with open_slide(slide_path) as slide:
        orig = slide.read_tile
        slide.read_tile = lambda level, tx, ty: calls.append((tx, ty)) or orig(level, tx, ty)
        plan = plan_windows(slide, 0, 1.0, halo_work=40, window_px=512)
        list(stream_windows(slide, plan, workers=3))
        ntx, nty = slide.tile_grid(0)
    assert len(calls) == ntx * nty == len(set(calls))
    k = plan.tiles_per_window
    assert max(peaks) <= 2 * ntx + (k + 2) ** 2


def test_blobs_on_seams_are_found_once(slide_path):
    # the reference sees the slide as the windows do: glass (white) beyond its edge
    pad = 40
    whole = find_candidates(hematoxylin(np.pad(scene(), ((pad, pad), (pad, pad), (0, 0)), constant_values=255)), 0.25)
    whole.xy -= pad
    with open_slide(slide_path) as slide:
        plan = plan_windows(slide, 0, 1.0, halo_work=40, window_px=512)
        found = []
        for win in stream_windows(slide, plan):
            c = find_candidates(hematoxylin(win.rgb), 0.25)
            x0, y0, x1, y1 = win.core
            inside = (c.xy[:, 0] >= x0) & (c.xy[:, 0] < x1) & (c.xy[:, 1] >= y0) & (c.xy[:, 1] < y1)
            found.append(win.to_level0(c.xy[inside]))
    found = np.concatenate(found)
    assert len(found) == len(whole) == len(BLOBS)
    np.testing.assert_allclose(np.sort(found, axis=0), np.sort(whole.xy, axis=0), atol=1e-6)


def test_resampling_a_20x_level_to_the_model_resolution(tmp_path):
    img = scene()
    path = tmp_path / "half.svs"
    half = img[::2, ::2]
    write_svs_like(path, lambda x, y, w, h: half[y:y + h, x:x + w], W // 2, H // 2, 0.5, tile=TILE, levels=1, compression="zlib")
    with open_slide(path) as slide:
        plan = plan_windows(slide, 0, 2.0, halo_work=40, window_px=256)
        wins = list(stream_windows(slide, plan))
    assert all(w.scale == pytest.approx(0.5) for w in wins)
    assert wins[0].rgb.shape[0] == pytest.approx(2 * (256 + 2 * 20), abs=2)


def test_errors_in_the_decoder_reach_the_consumer(slide_path):
    with open_slide(slide_path) as slide:
        def broken(level, tx, ty):
            raise ValueError("broken tile")
        slide.read_tile = broken
        plan = plan_windows(slide, 0, 1.0, halo_work=40, window_px=512)
        with pytest.raises(ValueError, match="broken tile"):
            list(stream_windows(slide, plan))
