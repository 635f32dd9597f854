"""QuPath's GeoJSON rules (../shared/docs/facts.md)."""

import json
import uuid

import numpy as np
import pytest

from mitoqp.datasets import read_qupath_points
from mitoqp.qupath_geojson import detection_features, write_detections


@pytest.mark.parametrize("shape", ["circle", "point"])
def test_features_follow_qupath_rules(tmp_path, shape):
    xy = np.array([[100.5, 200.25], [3000.0, 10.0]])
    feats = detection_features(xy, np.float32([0.9, 0.75]), np.array([30.0, 12.0]), 0.25, shape)
    path = tmp_path / "d.geojson"
    write_detections(path, feats)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    ids = [f["id"] for f in doc["features"]]
    assert len(set(ids)) == 2 and all(uuid.UUID(i).version == 5 for i in ids)  # name-based: a re-run writes the same
    write_detections(tmp_path / "other.geojson", feats)
    assert not set(ids) & {f["id"] for f in json.loads((tmp_path / "other.geojson").read_text())["features"]}
    for f in doc["features"]:
        assert "objectType" not in f
        props = f["properties"]
        assert props["objectType"] == "detection"
        cls = props["classification"]
        assert cls["name"] == "Mitotic figure" and len(cls["color"]) == 3
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in props["measurements"].values())
        assert set(props["measurements"]) == {"score", "area_um2"}
    g = doc["features"][0]["geometry"]
    if shape == "point":
        assert g == {"type": "Point", "coordinates": [100.5, 200.25]}
    else:
        ring = np.array(g["coordinates"][0])
        assert g["type"] == "Polygon" and np.allclose(ring[0], ring[-1])
        assert np.allclose(ring.mean(axis=0), [100.5, 200.25], atol=0.5)
    # what we write, our own QuPath reader reads back
    np.testing.assert_allclose(read_qupath_points(path), xy, atol=0.5)


def test_empty_detections_are_a_valid_collection(tmp_path):
    path = tmp_path / "e.geojson"
    write_detections(path, detection_features(np.zeros((0, 2)), np.zeros(0), np.zeros(0), 0.25))  # a generator
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
