"""The batch report: one self-contained HTML file, checked as text and in a real browser (headless Chromium)."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_field
from mitoqp.cli import main


@pytest.fixture()
def batch(tmp_path, tiny_model_dir):
    rng = np.random.default_rng(3)
    tiles = [synthetic_field(rng)[0] for _ in range(4)]
    Image.fromarray(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])).save(tmp_path / "field.png")
    (tmp_path / "broken.svs").write_bytes(b"not a slide")
    out = tmp_path / "out"
    assert main(["run", "-q", str(tmp_path / "field.png"), str(tmp_path / "broken.svs"), "-o", str(out), "--model",
                 str(tiny_model_dir), "--mpp", "0.25"]) == 1  # one slide failed, the batch went on
    return out


def test_report_lists_every_slide_and_holds_its_pictures(batch):
    page = (batch / "report.html").read_text()
    rows = re.findall(r"<tr class='(ok|error)'>", page)
    assert rows == ["ok", "error"]
    assert "id='slides'" in page and "class='sortable'" in page
    assert page.count("data:image/png;base64,") == 1  # the field's overview, embedded
    assert not re.search(r"(src|href)=['\"](https?:|/)", page)  # nothing outside the file or the run's folder
    assert "href='field.geojson'" in page and "href='field.density.geojson'" in page
    assert (batch / "field.overview.png").exists() and "broken" in page
    assert "<th>mitotic score</th>" in page and "1 for 0-7 figures, 2 for 8-14, 3 for ≥15" in page  # 2 mm2 bounds


def test_report_scores_the_hotspot_and_links_the_project(tmp_path):
    from mitoqp.report import write_report

    out = tmp_path / "runs" / "out"
    out.mkdir(parents=True)
    rec = {"name": "s 1", "status": "ok", "mitotic_count": 40, "hotspot_count": 19, "mitotic_score": 3,
           "hotspot": {"count": 19, "area_mm2": 2.376}, "project": {"objects": 41, "entry": "s 1.svs"}}
    page = write_report(out, [rec], "m", 2.376, "circle", tmp_path / "lab" / "P.qpproj").read_text()
    assert "href='../../lab/P.qpproj'" in page  # relative, so the folder can move with its project
    assert "QuPath entry s 1.svs" in page and "mitotic score 3" in page
    assert "1 for 0-8 figures, 2 for 9-17, 3 for ≥18" in page  # field number 22: ten fields of 0.2376 mm2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed (apt install chromium)")
def test_report_renders_in_headless_chromium_with_its_table(batch, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (batch / "report.html").as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, "--window-size=1200,1000", f"--screenshot={shot}", url], check=True,
                   capture_output=True, timeout=120)
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert '<table id="slides" class="sortable">' in dom
    assert len(re.findall(r"<tr class=\"(?:ok|error)\">", dom)) == 2
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.shape == (1000, 1200)
    assert pixels[:300].std() > 10  # the heading and the table drew something, not a blank page
