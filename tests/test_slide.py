"""Slide formats through one interface: SVS-like, OME-TIFF pyramid, plain fields; clear errors otherwise."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import CMU, TCGA, needs_slides, stain_rgb
from mitoqp.slide import ImageField, SlideError, TiffSlide, open_slide
from mitoqp.stream import choose_level
from mitoqp.synthetic_slide import write_svs_like


def image(h=600, w=800):
    rng = np.random.default_rng(0)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = stain_rgb(0.05, 0.3)
    img[rng.integers(0, h, 500), rng.integers(0, w, 500)] = stain_rgb(0.9)
    return img


def test_ome_tiff_pyramid(tmp_path):
    img = image()
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        meta = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
        tif.write(img, tile=(256, 256), subifds=1, metadata=meta, photometric="rgb")
        tif.write(img[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
    with open_slide(path) as s:
        assert isinstance(s, TiffSlide)
        assert s.info.level_dimensions == ((800, 600), (400, 300))
        assert s.info.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(s.read_region(0, 10, 20, 300, 300), img[20:320, 10:310])


def test_level_choice_and_resampling(tmp_path):
    img = image(1200, 1600)
    path = tmp_path / "s.svs"
    write_svs_like(path, lambda x, y, w, h: img[y:y + h, x:x + w], 1600, 1200, 0.125, tile=256, levels=3, compression="zlib")
    with open_slide(path) as s:
        assert choose_level(s, 0.125, 0.25) == (1, 1.0)  # 80x slide: level 1 is the model's 0.25 um/px
        assert choose_level(s, 0.5, 0.25) == (0, 2.0)  # a 20x slide is upsampled


@pytest.mark.parametrize("suffix,kw", [(".png", {}), (".jpg", {"quality": 95}), (".tif", {})])
def test_plain_fields(tmp_path, suffix, kw):
    img = image(200, 300)
    path = tmp_path / f"field{suffix}"
    Image.fromarray(img).save(path, **kw)
    with open_slide(path) as s:
        assert isinstance(s, ImageField) and s.info.dimensions == (300, 200) and s.info.mpp is None
        out = s.read_region(0, 0, 0, 300, 200)
        assert np.abs(out.astype(int) - img).mean() < 3


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"GIF89a garbage", "cannot"), (b"II*\x00\x08\x00\x00\x00", "cannot")])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(SlideError, match=match) as err:
        open_slide(path)
    assert "\n" not in str(err.value)


def test_missing_folder_and_openslide_errors(tmp_path):
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match="folder"):
        open_slide(tmp_path)
    try:
        import openslide  # noqa: F401
    except ImportError:
        (tmp_path / "a.svs").write_bytes(b"x")
        with pytest.raises(SlideError, match="openslide is not installed"):
            open_slide(tmp_path / "a.svs", "openslide")


@needs_slides
def test_real_slides_match_tiffslide():
    import tiffslide

    for path in (CMU, TCGA):
        with open_slide(path) as s, tiffslide.TiffSlide(path) as ts:
            assert s.info.level_dimensions == tuple(ts.level_dimensions)
            ref = np.asarray(ts.read_region((300, 200), 0, (700, 500)))[..., :3]
            np.testing.assert_array_equal(s.read_region(0, 300, 200, 700, 500), ref)
    with open_slide(TCGA) as s:
        assert s.info.mpp is None and len(s.info.level_dimensions) == 2


def test_generic_tiled_tiff_with_resolution_tags(tmp_path):
    img = image()
    path = tmp_path / "generic.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(path) as s:
        assert isinstance(s, TiffSlide) and s.info.mpp == pytest.approx(0.5)


@needs_slides
def test_openslide_reader_matches_tiffslide(tmp_path):
    pytest.importorskip("openslide")
    from mitoqp.cli import main

    with open_slide(CMU, "openslide") as s, open_slide(CMU) as t:
        assert s.info.mpp == pytest.approx(t.info.mpp) and s.info.dimensions == t.info.dimensions
        np.testing.assert_array_equal(s.read_region(0, 300, 200, 700, 500), t.read_region(0, 300, 200, 700, 500))
    assert main(["run", "-q", str(CMU), "-o", str(tmp_path), "--reader", "openslide"]) == 0


def test_mirax_goes_to_openslide(tmp_path):
    path = tmp_path / "slide.mrxs"
    path.write_bytes(b"not really a mirax file")
    with pytest.raises(SlideError, match="OpenSlide|openslide") as err:
        open_slide(path)
    assert "\n" not in str(err.value)


def test_a_sparse_tile_reads_as_glass(tmp_path):
    """Scanners leave background tiles out of the file (byte count 0): they are glass, not an error."""
    from mitoqp.synthetic_slide import write_header_only_svs

    path = write_header_only_svs(tmp_path / "sparse.svs", 4096, (0.25, 0.25, 0.75, 0.75), overview_step=8)
    with open_slide(path) as slide:
        assert slide.info.dimensions == (4096, 4096)
        tile = slide.read_tile(0, 3, 5)
        assert tile.shape == (256, 256, 3) and (tile == 255).all()
