"""Readers on the real files (skipped without them) and on malformed files."""

import json

import numpy as np
import pytest

from conftest import AMIBR, MIDOG_JSON, SHARED, needs_data
from mitoqp.datasets import read_amibr, read_atnorm, read_coco, read_qupath_points
from mitoqp.datasets.amibr import SOURCES, check_sources, source_of, split_of


def test_split_rules_from_the_readme():
    assert split_of("MIDOG21", "041.tiff") == "validation"
    assert split_of("MIDOG21", "150.tiff") == "test"
    assert split_of("MIDOG21", "040.tiff") == "train"
    assert split_of("TUPAC16", "30_stitched1.tif") == "validation"
    assert split_of("TUPAC16", "04_stitched1.tif") == "train"
    with pytest.raises(ValueError):
        split_of("OTHER", "1")


@needs_data
def test_amibr_counts_and_complete_midog_labels():
    fields = read_amibr(AMIBR, MIDOG_JSON)
    counts = {s: sum(f.split == s for f in fields) for s in ("train", "validation", "test")}
    assert counts == {"train": 3169, "validation": 291, "test": 260}
    midog = [f for f in fields if f.dataset == "MIDOG21"]
    assert all(np.any(np.hypot(*(f.figures - 64).T) <= 1) for f in midog)  # box centres can fall on half pixels
    assert sum(len(f.figures) - 1 for f in midog) >= 35
    assert sum(len(f.lookalikes) for f in midog) == 11
    assert all(f.path.exists() for f in fields[:50])


@needs_data
def test_coco_and_atnorm_readers():
    coco = read_coco(MIDOG_JSON)
    assert sum(len(v["figures"]) for v in coco.values()) == 1721
    assert sum(len(v["lookalikes"]) for v in coco.values()) == 2714
    at = read_atnorm(SHARED / "atnorm-br")
    assert len(at) == 746 and all(f.split == "external" for f in at)


def test_malformed_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a COCO"):
        read_coco(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"bbox": [1], "image_id": 1, "category_id": 1}]}))
    with pytest.raises(ValueError, match="malformed annotation"):
        read_coco(bad)
    with pytest.raises(ValueError, match="not a GeoJSON"):
        read_qupath_points(tmp_path / "missing.geojson")
    (tmp_path / "AMI-BR.csv").write_text("slide,dataset\n001.tiff,MIDOG21\n")
    with pytest.raises(ValueError, match="malformed row"):
        read_amibr(tmp_path)
    with pytest.raises(ValueError, match="no AtNorM-Br"):
        read_atnorm(tmp_path)


def test_qupath_points_reader(tmp_path):
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 20]},
         "properties": {"classification": {"name": "Mitotic figure", "color": [255, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]},
         "properties": {"classification": "mitosis"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"classification": {"name": "Tumor", "color": [0, 0, 255]}}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]},
         "properties": {"classification": {"name": "Mitotic figure", "color": [255, 0, 0]}}},
    ]}
    path = tmp_path / "pts.geojson"
    path.write_text(json.dumps(doc))
    np.testing.assert_allclose(read_qupath_points(path), [[10, 20], [2, 2], [1, 1], [2, 2]])


def test_sources_of_slides():
    assert source_of("MIDOG21", "001.tiff") == "midog21-xr" and source_of("MIDOG21", "050.tiff") == "midog21-xr"
    assert source_of("MIDOG21", "051.tiff") == "midog21-s360" and source_of("MIDOG21", "150.tiff") == "midog21-cs2"
    assert source_of("TUPAC16", "04_stitched1.tif") == "tupac16"
    check_sources(list(SOURCES))
    with pytest.raises(ValueError, match="unknown source 'midog21-gt450'"):
        check_sources(["midog21-gt450"])


@needs_data
def test_every_amibr_field_knows_its_source():
    fields = read_amibr(AMIBR, MIDOG_JSON, {"train", "validation"})
    counts = {key: sum(f.source == key for f in fields) for key in SOURCES}
    assert counts == {"midog21-xr": 412, "midog21-s360": 518, "midog21-cs2": 642, "tupac16": 1888}


def test_a_field_holds_its_neighbours_from_the_table(tmp_path):
    """TUPAC16 has no complete labels: a field cut around one figure gets the table's other figures of the same
    image that fall inside it (else they would train and count as negatives); other images' figures do not."""
    header = "slide,dataset,uid,x,y,expert1_atypical,expert2_atypical,expert3_atypical,majority_atypical\n"
    rows = ["52.tif,TUPAC16,1,5040,5154,False,False,False,False",
            "52.tif,TUPAC16,2,5001,5178,False,False,False,False",   # inside field 1, at (25, 88)
            "52.tif,TUPAC16,3,5200,5154,False,False,False,False",   # 160 px away: outside
            "53.tif,TUPAC16,4,5001,5178,False,False,False,False"]   # same place, another image
    (tmp_path / "AMI-BR.csv").write_text(header + "\n".join(rows) + "\n")
    fields = {f.name: f for f in read_amibr(tmp_path)}
    assert fields["TUPAC16_1"].figures.tolist() == [[64.0, 64.0], [25.0, 88.0]]
    assert fields["TUPAC16_2"].figures.tolist() == [[103.0, 40.0], [64.0, 64.0]]
    assert fields["TUPAC16_3"].figures.tolist() == [[64.0, 64.0]]
    assert fields["TUPAC16_4"].figures.tolist() == [[64.0, 64.0]]


@needs_data
def test_tupac16_fields_get_their_neighbours():
    fields = {f.name: f for f in read_amibr(AMIBR, MIDOG_JSON)}
    assert [64.0, 64.0] in fields["TUPAC16_4858"].figures.tolist() and len(fields["TUPAC16_4858"].figures) == 2
    tupac = [f for f in fields.values() if f.dataset == "TUPAC16"]
    assert {s: sum(len(f.figures) - 1 for f in tupac if f.split == s) for s in ("train", "validation", "test")} == \
        {"train": 49, "validation": 4, "test": 4}
