"""End to end through the CLI: real slides, fields, bad inputs, resume, atomic outputs, ROI."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import AMIBR, CMU, MIDOG_JSON, TCGA, needs_data, needs_slides, synthetic_field
from mitoqp.batch import expand_inputs
from mitoqp.cli import main
from mitoqp.io_utils import atomic_path


def run(*args) -> int:
    return main(["run", "-q", *map(str, args)])


def summary(out):
    return {r["slide"].split("/")[-1]: r for r in csv.DictReader((out / "summary.csv").open())}


@pytest.fixture
def field_png(tmp_path):
    rng = np.random.default_rng(3)
    tiles = [synthetic_field(rng)[0] for _ in range(4)]
    img = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    path = tmp_path / "field.png"
    Image.fromarray(img).save(path)
    return path


def test_field_run_writes_all_outputs(tiny_model_dir, field_png, tmp_path):
    out = tmp_path / "out"
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25) == 0
    for name in ("field.geojson", "field.tissue.png", "field.result.json", "summary.csv", "summary.json"):
        assert (out / name).exists(), name
    rec = json.loads((out / "field.result.json").read_text())
    assert rec["status"] == "ok" and rec["model_id"] == "tiny-synthetic"
    assert set(rec["timings"]) >= {"tissue", "read", "deconvolve", "candidates", "patches", "model", "merge", "write"}
    feats = json.loads((out / "field.geojson").read_text())["features"]
    assert len(feats) == rec["mitotic_count"]
    s = json.loads((out / "summary.json").read_text())
    assert s["versions"]["mitoqp"] and s["model"]["sha256"] == rec["model_sha256"]
    assert not list(out.glob(".*tmp"))


def test_missing_mpp_is_a_one_line_error_naming_the_option(tiny_model_dir, field_png, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(field_png, "-o", out, "--model", tiny_model_dir) == 1
    row = summary(out)["field.png"]
    assert row["status"] == "error" and "--mpp" in row["error"] and "\n" not in row["error"]


def test_bad_inputs_do_not_stop_the_batch(tiny_model_dir, field_png, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.svs").write_bytes(b"")
    (bad / "corrupt.svs").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "text.png").write_text("not an image")
    (bad / "zzz.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    if CMU.exists():
        (bad / "truncated.svs").write_bytes(CMU.read_bytes()[: CMU.stat().st_size // 3])
    shutil.copy(field_png, bad / "good.png")
    out = tmp_path / "out"
    assert run(bad, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25) == 1
    rows = summary(out)
    assert rows["good.png"]["status"] == "ok"
    for name, row in rows.items():
        if name != "good.png":
            assert row["status"] == "error" and row["error"] and "\n" not in row["error"], name
    assert (out / "good.geojson").exists()
    assert not (out / "corrupt.geojson").exists() and not list(out.glob(".*tmp"))


def test_rerun_skips_complete_slides_and_overwrite_redoes_them(tiny_model_dir, field_png, tmp_path):
    out = tmp_path / "out"
    args = (field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25)
    assert run(*args) == 0
    first = (out / "field.geojson").stat().st_mtime_ns
    assert run(*args) == 0
    assert summary(out)["field.png"]["status"] == "skipped"
    assert (out / "field.geojson").stat().st_mtime_ns == first
    (out / "field.result.json").unlink()  # incomplete: redone
    assert run(*args) == 0 and summary(out)["field.png"]["status"] == "ok"
    assert run(*args, "--overwrite") == 0 and summary(out)["field.png"]["status"] == "ok"


def test_a_failure_midway_leaves_nothing_half_written(tiny_model_dir, field_png, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = (field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25)
    assert run(*args) == 0
    old = (out / "field.geojson").read_bytes()

    def failing_qc(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("mitoqp.batch.save_qc", failing_qc)
    assert run(*args, "--overwrite") == 1
    assert summary(out)["field.png"]["error"] == "disk full"
    assert not (out / "field.result.json").exists()  # so the next run redoes it
    json.loads((out / "field.geojson").read_text())  # whole, never half a file
    assert not list(out.glob(".*tmp"))
    monkeypatch.undo()
    assert run(*args) == 0 and summary(out)["field.png"]["status"] == "ok"
    assert old  # the first run's file was complete too


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_roi_outside_the_slide_and_inside_it(tiny_model_dir, field_png, tmp_path):
    def roi(path, coords):
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [coords]}, "properties": {"objectType": "annotation"}}]}))
        return path

    out = tmp_path / "out"
    far = roi(tmp_path / "far.geojson", [[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]])
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25, "--roi", far) == 1
    assert "outside" in summary(out)["field.png"]["error"]
    half = roi(tmp_path / "half.geojson", [[0, 0], [128, 0], [128, 256], [0, 256], [0, 0]])
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25, "--roi", half, "--threshold", 0) == 0
    feats = json.loads((out / "field.geojson").read_text())["features"]
    xs = [np.mean(np.array(f["geometry"]["coordinates"][0])[:, 0]) for f in feats]
    assert feats and max(xs) < 128
    bad = tmp_path / "bad.geojson"
    bad.write_text("[]")
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--roi", bad) == 2


def test_inputs_from_a_list_file_and_a_glob(tiny_model_dir, field_png, tmp_path):
    lst = tmp_path / "slides.txt"
    lst.write_text(f"# slides\n{field_png.name}\n")
    out = tmp_path / "out"
    assert run(lst, str(tmp_path / "*.png"), "-o", out, "--model", tiny_model_dir, "--mpp", 0.25) == 0
    assert list(summary(out)) == ["field.png"]  # the same slide twice is analysed once


def test_a_list_of_missing_paths_says_so_once(field_png, tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    lst = lists / "slides.txt"
    lst.write_text(f"{field_png.name}\nnot-there.svs\n{field_png}\n")  # relative to lists/: neither relative one exists
    paths = expand_inputs([str(lst)])
    assert paths[2] == field_png and paths[1] == lists / "not-there.svs"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 of 3 paths in slides.txt do not exist" in err and str(lists) in err
    lst.write_text(f"{field_png}\n")
    expand_inputs([str(lst)])
    assert capsys.readouterr().err == ""


@needs_slides
def test_real_slides_end_to_end(default_model, tmp_path):
    out = tmp_path / "out"
    assert run(CMU, "-o", out) == 0
    rec = json.loads((out / "cmu-1-small-region.result.json").read_text())
    assert rec["mpp"] == pytest.approx(0.499) and 0.3 < rec["tissue_area_mm2"] < 1.5
    assert rec["candidates"] > 100
    # the TCGA slide has no microns per pixel: an error, then fine with --mpp
    assert run(TCGA, "-o", out) == 1
    assert "--mpp" in summary(out)["tcga-cr-7395-01a-01-ts1.svs"]["error"]
    assert run(TCGA, "-o", out, "--mpp", 0.5) == 0


@needs_data
def test_field_built_from_real_patches(default_model, tmp_path):
    paths = sorted((AMIBR / "Normal").glob("MIDOG21_*.png"))[:4]
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    img = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    Image.fromarray(img).save(tmp_path / "hpf.png")
    out = tmp_path / "out"
    assert run(tmp_path / "hpf.png", "-o", out, "--mpp", 0.25) == 0
    rec = json.loads((out / "hpf.result.json").read_text())
    assert rec["candidates"] >= 4 and rec["mitotic_count"] >= 1


def test_info_command(capsys, field_png):
    assert main(["info", str(field_png), "--mpp", "0.25", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["level_dimensions"] == [[256, 256]] and 0 < info["tissue_fraction"] <= 1
    assert main(["info", str(field_png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tissue_fraction"] is None


@needs_slides
def test_info_on_a_real_slide(capsys):
    assert main(["info", str(CMU), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vendor"] == "aperio" and info["mpp"] == pytest.approx(0.499) and info["tile_size"] == [[240, 240]]
    assert 0.05 < info["tissue_fraction"] < 0.9


def test_macenko_stain_vectors_option(tiny_model_dir, field_png, tmp_path):
    out = tmp_path / "out"
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25, "--stain", "macenko") == 0
    rec = json.loads((out / "field.result.json").read_text())
    assert "stain_vectors" in rec["timings"] and rec["candidates"] > 0


def test_hotspot_count():
    from mitoqp.pipeline import SlideResult

    mpp = 0.25
    r_px = np.sqrt(2 / np.pi) * 1000 / mpp  # radius of a 2 mm^2 circle
    cluster = np.array([[10000, 10000], [10000 + r_px * 0.9, 10000], [10000, 10000 + r_px * 0.5]])
    far = np.array([[50000, 50000]])
    res = SlideResult(np.vstack([cluster, far]), np.array([0.9, 0.9, 0.9, 0.9]), np.ones(4), 0.5, mpp, None, 10.0, 4, 1)
    assert res.hotspot_count() == 3 and res.count == 4
    res.scores[:] = 0.1
    assert res.hotspot_count() == 0


@pytest.mark.parametrize("command", [[], ["run"], ["info"], ["train"], ["export"], ["evaluate"], ["ablation"], ["stain-survey"], ["bench"], ["models"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0 and "usage: mitoqp" in capsys.readouterr().out


@needs_data
def test_evaluate_command_writes_json_and_markdown(default_model, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--limit", "6", "--bootstrap", "20", "--slides", "-o", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert {"validation/MIDOG21", "test/TUPAC16", "external/atnorm-br", "test/all"} <= set(report["sets"])
    s = report["sets"]["validation/all"]
    assert s["fields"] == 12 and 0 <= s["operating_point"]["recall"] <= 1 and "hpf_f1" in s["ci95"]
    assert report["padding"]["positives"] > 0
    assert "| test/all |" in (out / "evaluation.md").read_text()
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert {r["set"] for r in rows} <= set(report["sets"]) - {"validation/all", "test/all"}
    for name in ("validation/all", "external/atnorm-br"):  # the listed detections are the report's
        listed = [r for r in rows if r["detected"] == "1" and (r["set"] == name or name.endswith("/all") and
                                                               r["set"].startswith(name.split("/")[0] + "/"))]
        op = report["sets"][name]["operating_point"]
        assert sum(r["outcome"] != "figure" for r in listed) == op["fp"]
        assert sum(r["outcome"] == "figure" for r in listed) == op["tp"]


def test_train_and_export_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.toml"), "-o", str(tmp_path / "run")]) == 1
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m")]) == 1
    no_data = tmp_path / "no_data.toml"
    no_data.write_text("[train]\nepochs = 1\n")
    assert main(["train", str(no_data), "-o", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "[data] amibr" in err[2]


def test_info_prints_readable_lines(capsys, field_png):
    assert main(["info", str(field_png), "--mpp", "0.25"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "level_dimensions: [[256, 256]]" in lines and any(line.startswith("tissue_fraction: ") for line in lines)


def test_an_image_of_glass_is_a_slide_without_tissue(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(np.full((300, 300, 3), 250, np.uint8)).save(tmp_path / "glass.png")
    assert run(tmp_path / "glass.png", "-o", tmp_path / "out", "--model", tiny_model_dir, "--mpp", 0.25) == 0
    assert "glass: ok, no tissue found" in capsys.readouterr().out
    row = summary(tmp_path / "out")["glass.png"]
    assert row["mitotic_count"] == "0" and row["tissue_area_mm2"] == "0.0"
    assert json.loads((tmp_path / "out" / "glass.geojson").read_text())["features"] == []


def test_hotspot_area_and_shape_reach_the_record_and_a_change_redoes_the_slide(tmp_path, field_png, tiny_model_dir):
    out = tmp_path / "out"
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25, "--hpf-area", "fn22",
               "--hotspot-shape", "square") == 0
    rec = json.loads((out / "field.result.json").read_text())
    from mitoqp.hotspot import HPF_AREA_PRESETS_MM2

    assert rec["hotspot"]["shape"] == "square" and rec["hotspot"]["area_mm2"] == HPF_AREA_PRESETS_MM2["fn22"]
    assert rec["hotspot"]["count"] == rec["hotspot_count"] <= rec["mitotic_count"]
    score = rec["hotspot"]["mitotic_score"]
    assert (score["score_1"], score["score_2"], score["score_3"]) == ("0-8", "9-17", ">=18")  # ten fn22 fields
    assert score["score"] is rec["mitotic_score"] is None and "less than the 2.37" in score["withheld"]  # one field
    stamp = (out / "field.result.json").stat().st_mtime_ns
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25, "--hpf-area", "fn22",
               "--hotspot-shape", "square") == 0
    assert (out / "field.result.json").stat().st_mtime_ns == stamp  # same settings: skipped
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25) == 0
    assert json.loads((out / "field.result.json").read_text())["hotspot"]["shape"] == "circle"
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25, "--hpf-area", "ten") == 2
    assert run(field_png, "-o", out, "--model", tiny_model_dir, "--mpp", 0.25, "--hpf-area", "0.004") == 0
    rec = json.loads((out / "field.result.json").read_text())
    assert rec["tissue_area_mm2"] >= 0.004 and rec["hotspot_count"] >= 1
    assert rec["mitotic_score"] == rec["hotspot"]["mitotic_score"]["score"] == 3  # bounds 1 and 1 in 0.004 mm2
    spot = json.loads((out / "field.hotspot.geojson").read_text())["features"][0]
    assert spot["properties"]["measurements"]["Nottingham mitotic score"] == 3


def test_export_changes_a_folders_candidate_settings_and_a_run_redoes_slides_done_with_others(
        tmp_path, field_png, tiny_model_dir, capsys):
    from mitoqp.candidates import CandidateParams

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "out"
    assert run(field_png, "-o", out, "--model", model, "--mpp", 0.25) == 0
    result = out / "field.result.json"
    rec = json.loads(result.read_text())
    defaults = CandidateParams().to_dict()
    for key in [k for k, v in rec["settings"]["candidates"].items() if v == defaults[k]]:
        del rec["settings"]["candidates"][key]  # as a version before these settings wrote it: a missing one is at its default
    result.write_text(json.dumps(rec))
    stamp = result.stat().st_mtime_ns
    assert run(field_png, "-o", out, "--model", model, "--mpp", 0.25) == 0
    assert result.stat().st_mtime_ns == stamp  # settings added since count at their defaults: not done again
    export = ["export", "-o", str(model), "--amibr", str(tmp_path / "no-data")]
    for bad in (["--candidates", "centre_power"], ["--candidates", "centre_power=-1"], ["--candidates", "shape=2"],
                ["--candidates", "peak_area_um2=100", "--candidates", "peak_um=0"]):
        capsys.readouterr()
        assert main([*export, *bad]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("KEY=NUMBER" in err or "unknown candidate setting 'shape'" in err
                                               or "peak_um must be > 0" in err)
    assert json.loads((model / "model.json").read_text())["candidates"].get("centre_power", 0) == 0
    assert main([*export, "--candidates", "centre_power=2"]) == 0
    assert json.loads((model / "model.json").read_text())["candidates"]["centre_power"] == 2.0
    assert run(field_png, "-o", out, "--model", model, "--mpp", 0.25) == 0
    assert (out / "field.result.json").stat().st_mtime_ns != stamp  # other candidates: done again
    rec = json.loads((out / "field.result.json").read_text())
    assert rec["settings"]["candidates"]["centre_power"] == 2.0


def test_density_grid_counts_figures_and_tissue_per_square():
    from mitoqp.density import density_grid
    from mitoqp.tissue import TissueMask

    mask = np.zeros((64, 64), bool)
    mask[:32, :48] = True  # 8 um pixels: squares of 31 px (248 um) -> a 3 x 3 grid
    tissue = TissueMask(mask, np.zeros((64, 64, 3), np.uint8), scale=32.0, mpp=0.25)
    xy = np.array([[100.0, 100.0], [200.0, 300.0], [40 * 32.0, 40 * 32.0], [-5.0, 10.0]])
    counts, area, side = density_grid(tissue, xy)
    assert side == 31 * 32 and counts.shape == area.shape == (3, 3)
    assert counts[0, 0] == 2 and counts[1, 1] == 1 and counts.sum() == 3  # the point off the slide is dropped
    assert area.sum() == pytest.approx(tissue.area_mm2)
    assert area[0, 0] == pytest.approx((31 * 8 / 1000) ** 2) and area[2, 2] == 0


def test_activity_index_and_hotspot_tissue_fraction():
    from mitoqp.density import activity_index, tissue_fraction
    from mitoqp.tissue import TissueMask

    mask = np.zeros((200, 200), bool)
    mask[:, :100] = True  # the left half is tissue (8 um pixels: 1.6 x 0.8 mm)
    tissue = TissueMask(mask, np.zeros((200, 200, 3), np.uint8), scale=32.0, mpp=0.25)
    # fields of 0.2 mm2: squares of 56 mask px; 3 x 1 full squares of tissue in the left half, 3 more on its edge
    xy = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 4000.0]]) * 1.0
    per_field, fields = activity_index(tissue, xy, 0.2)
    assert fields >= 3 and per_field == pytest.approx(3 / fields)
    assert tissue_fraction(tissue, (100 * 32.0, 100 * 32.0), 40 * 32.0, "circle") == pytest.approx(0.5, abs=0.02)
    assert tissue_fraction(tissue, (50 * 32.0, 100 * 32.0), 40 * 32.0, "square") == pytest.approx(1.0)
    assert tissue_fraction(tissue, (190 * 32.0, 100 * 32.0), 10 * 32.0, "square") == 0.0


@needs_data
def test_evaluate_on_a_held_out_scanner_only_for_a_model_that_never_saw_it(tiny_model_dir, tmp_path, capsys):
    args = ["evaluate", "--splits", "holdout:midog21-xr", "--limit", "5", "--bootstrap", "0", "--slides"]
    assert main([*args, "--model", str(tiny_model_dir), "-o", str(tmp_path / "refused")]) != 0
    assert "was trained on midog21-xr" in capsys.readouterr().err
    held = tmp_path / "held"
    shutil.copytree(tiny_model_dir, held)
    config = json.loads((held / "model.json").read_text())
    (held / "model.json").write_text(json.dumps({**config, "held_out_sources": ["midog21-xr"]}))
    assert main([*args, "--model", str(held), "-o", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(report["sets"]) == {"holdout/midog21-xr"} and report["sets"]["holdout/midog21-xr"]["fields"] == 5
    from types import SimpleNamespace
    from mitoqp.evaluate import evaluation_sets

    chosen = SimpleNamespace(splits="validation,test", amibr=AMIBR, midog_json=MIDOG_JSON)
    sets = evaluation_sets(chosen, ["midog21-xr"], "held")  # validation as the model's training saw it, test all of it
    assert sum(map(len, (v for k, v in sets.items() if k.startswith("validation/")))) == 291 - 14
    assert sum(map(len, (v for k, v in sets.items() if k.startswith("test/")))) == 260
    assert main([*args[:2], "holdout:midog21-xr,tset", *args[3:], "--model", str(held), "-o", str(tmp_path / "x")]) != 0
    assert "unknown split 'tset'" in capsys.readouterr().err
