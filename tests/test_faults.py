"""Faults a 24-hour batch meets, each caused here: kill -9, two runs on one folder, a full disk, corrupt tiles."""

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_field
from mitoqp.cli import main
from mitoqp.synthetic_slide import mosaic_source, write_svs_like

PER_SLIDE = ["geojson", "density.geojson", "hotspot.geojson", "tissue.geojson", "tissue.png", "overview.png"]
VOLATILE = {"seconds", "timings"}  # wall-clock figures differ between any two runs


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    """Four small JPEG-tiled pyramids of synthetic tissue with figures (SVS-like, 0.25 um/px)."""
    tmp = tmp_path_factory.mktemp("fault_slides")
    out = []
    for i in range(4):
        rng = np.random.default_rng(10 + i)
        patches = [synthetic_field(rng)[0] for _ in range(6)]
        out.append(write_svs_like(tmp / f"slide_{i}.svs", mosaic_source(patches, seed=i), 1024, 768, tile=256,
                                  levels=2))
    return out


def run_cli(args: list, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`mitoqp run` in its own process, so it can be killed like a real one."""
    return subprocess.run([sys.executable, "-m", "mitoqp.cli", "run", "-q", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def outputs(out: Path, names: list[str]) -> dict:
    """Every per-slide file's bytes, and each record without its timings."""
    got = {}
    for n in names:
        for suffix in PER_SLIDE:
            got[f"{n}.{suffix}"] = (out / f"{n}.{suffix}").read_bytes()
        rec = json.loads((out / f"{n}.result.json").read_text())
        got[f"{n}.result.json"] = {k: v for k, v in rec.items() if k not in VOLATILE}
    return got


@pytest.fixture(scope="module")
def reference(slides, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    r = run_cli([*slides, "-o", out, "--model", tiny_model_dir])
    assert r.returncode == 0, r.stderr
    names = [s.stem for s in slides]
    assert sum(json.loads((out / f"{n}.result.json").read_text())["mitotic_count"] for n in names) > 0
    return outputs(out, names)


@pytest.mark.parametrize("kill_at", ["read:2", "model:3", "write:2", "rename:9", "summary:1"])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(slides, tiny_model_dir, reference, tmp_path, kill_at):
    out = tmp_path / "out"
    args = [*slides, "-o", out, "--model", tiny_model_dir]
    killed = run_cli(args, {"MITOQP_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.result.json")}
    assert len(finished) < len(slides) or kill_at == "summary:1"
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert outputs(out, [s.stem for s in slides]) == reference
    assert not list(out.glob(".*.tmp")) and not (out / ".mitoqp.lock").exists()
    for name, stamp in finished.items():
        assert (out / name).stat().st_mtime_ns == stamp  # a slide finished before the kill is not redone
    statuses = Counter(r["status"] for r in json.loads((out / "summary.json").read_text())["slides"])
    assert statuses["skipped"] == len(finished) and statuses["ok"] == len(slides) - len(finished)


def test_a_second_run_on_the_same_folder_refuses_and_a_killed_holder_frees_it(slides, tiny_model_dir, tmp_path,
                                                                              capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mitoqp.folder_lock import FolderLock; "
         "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "-q", str(slides[0]), "-o", str(out), "--model", str(tiny_model_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "in use by another mitoqp run" in err and f"pid {holder.pid}" in err
        assert "\n" not in err and not list(out.glob("*.geojson"))  # refused before writing anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["run", "-q", str(slides[0]), "-o", str(out), "--model", str(tiny_model_dir)]) == 0  # no stale lock


def test_a_full_disk_fails_the_slide_in_one_line_and_keeps_earlier_outputs(slides, tiny_model_dir, tmp_path,
                                                                           monkeypatch, capsys):
    import mitoqp.faults

    out = tmp_path / "out"
    args = ["run", "-q", *map(str, slides[:3]), "-o", str(out), "--model", str(tiny_model_dir)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(mitoqp.faults, "_reached", Counter())
    monkeypatch.setenv("MITOQP_FAIL_AT", "rename:9:ENOSPC")  # the second slide's third file
    assert main([*args, "--overwrite"]) == 1
    rows = {Path(r["slide"]).stem: r for r in json.loads((out / "summary.json").read_text())["slides"]}
    assert [rows[s.stem]["status"] for s in slides[:3]] == ["ok", "error", "ok"]
    assert "No space left on device" in rows["slide_1"]["error"] and "\n" not in rows["slide_1"]["error"]
    assert not (out / "slide_1.result.json").exists()  # so the next run redoes it
    for name in before:  # every file is the old one or a new whole one, never half of one
        if name.endswith("json") and name != "slide_1.result.json":
            json.loads((out / name).read_text())
    assert not list(out.glob(".*.tmp"))

    # the disk fills at a slide's last file, its record: that slide fails, the batch goes on
    monkeypatch.setattr(mitoqp.faults, "_reached", Counter())
    monkeypatch.setenv("MITOQP_FAIL_AT", f"rename:{RENAMES_PER_SLIDE}:ENOSPC")
    assert main([*args, "--overwrite"]) == 1
    rows = {Path(r["slide"]).stem: r for r in json.loads((out / "summary.json").read_text())["slides"]}
    assert [rows[s.stem]["status"] for s in slides[:3]] == ["error", "ok", "ok"]
    assert "slide_0.result.json" in rows["slide_0"]["error"] and not (out / "slide_0.result.json").exists()

    # the disk fills while the summary is written: one line, the previous summary intact
    monkeypatch.setattr(mitoqp.faults, "_reached", Counter())
    monkeypatch.setenv("MITOQP_FAIL_AT", "summary:1:ENOSPC")
    summary = (out / "summary.csv").read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "No space left on device" in err and "\n" not in err
    assert (out / "summary.csv").read_bytes() == summary and not list(out.glob(".*.tmp"))


RENAMES_PER_SLIDE = 7  # six outputs, then the record


def corrupt_tile(path: Path, level: int, tx: int, ty: int) -> None:
    """Overwrite one JPEG tile's bytes in place, as a failing disk or a scanner bug would."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[level].keyframe
        index = ty * -(-page.imagewidth // page.tilewidth) + tx
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write((bytes([0xFF, 0xD8]) + bytes(range(256)) * (count // 256 + 1))[:count])  # a JPEG start, then junk


@pytest.fixture()
def corrupt_slide(slides, tmp_path) -> Path:
    path = tmp_path / "corrupt.svs"
    path.write_bytes(slides[0].read_bytes())
    corrupt_tile(path, 0, 2, 1)  # level 0, in the middle of the 4 x 3 tile grid
    return path


def test_a_corrupt_tile_fails_its_slide_with_level_and_position(corrupt_slide, slides, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["run", "-q", str(corrupt_slide), str(slides[1]), "-o", str(out), "--model", str(tiny_model_dir)]) == 1
    rows = {Path(r["slide"]).stem: r for r in json.loads((out / "summary.json").read_text())["slides"]}
    assert rows["corrupt"]["status"] == "error" and rows["slide_1"]["status"] == "ok"  # the batch went on
    assert "tile (2, 1) of level 0 of corrupt.svs" in rows["corrupt"]["error"]
    assert "\n" not in rows["corrupt"]["error"] and not (out / "corrupt.result.json").exists()


def test_on_tile_error_skip_goes_on_counts_and_marks_the_tile(corrupt_slide, tiny_model_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    assert main(["run", "-q", str(corrupt_slide), "-o", str(out), "--model", str(tiny_model_dir),
                 "--on-tile-error", "skip"]) == 0
    rec = json.loads((out / "corrupt.result.json").read_text())
    assert rec["status"] == "ok" and rec["skipped_tiles"] == 1
    assert rec["skipped_tile_boxes"] == [[512.0, 256.0, 768.0, 512.0]] and "tile (2, 1)" in rec["skipped_tile_error"]
    with open(out / "summary.csv") as f:
        assert "skipped_tiles" in f.readline() and ",1," in f.readline()
    qc = np.asarray(Image.open(out / "corrupt.tissue.png").convert("RGB")).astype(int)
    blue = (qc[..., 2] > 200) & (qc[..., 0] < 60) & (qc[..., 1] < 60)
    scale = 1024 / qc.shape[1]
    ys, xs = np.nonzero(blue)
    assert blue.sum() > 50 and xs.min() * scale >= 500 and xs.max() * scale <= 780  # the cross sits on the tile
    assert ys.min() * scale >= 240 and ys.max() * scale <= 520
    assert rec["settings"]["on_tile_error"] == "skip"  # a run without skipping redoes the slide
