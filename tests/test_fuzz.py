"""Malformed and hostile inputs, fuzzed: ROI GeoJSON, model folders, training recipes, slide file names.

Each must end in a one-line error that names the problem (or be accepted and
work), never a traceback, and never a file written outside the output folder.
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import synthetic_field
from mitoqp import roi as roi_module
from mitoqp.cli import main
from mitoqp.roi import read_roi

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# JSON-shaped values of every type, including the ones GeoJSON readers trip on
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=4),
                   st.floats(allow_nan=True, allow_infinity=True))
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                          max_leaves=12)
position = st.one_of(st.lists(scalar, max_size=4), st.lists(st.floats(-1e12, 1e12), min_size=2, max_size=3), scalar)
ring = st.one_of(st.lists(position, max_size=8), scalar)
coordinates = st.one_of(st.lists(ring, max_size=3), st.lists(st.lists(ring, max_size=2), max_size=2), json_value)
geometry = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString",
                                                                     "GeometryCollection", "Nonsense"]),
                                            "coordinates": coordinates}), json_value)
feature = st.one_of(st.fixed_dictionaries({"type": st.just("Feature"), "geometry": geometry,
                                           "properties": json_value}), json_value)
roi_doc = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["FeatureCollection", "Feature"]),
                                           "features": st.one_of(st.lists(feature, max_size=4), json_value),
                                           "geometry": geometry}),
                    st.lists(feature, max_size=3), json_value)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message


@FUZZ
@given(roi_doc)
def test_fuzzed_roi_is_a_polygon_or_a_one_line_error(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("roi") / "roi.geojson"
    path.write_text(json.dumps(doc))
    try:
        roi = read_roi(path)
    except ValueError as exc:
        assert_one_line(str(exc))
        assert "roi.geojson" in str(exc)  # names the file
        return
    assert roi.is_valid and roi.area > 0


def polygon_file(path: Path, rings: list) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings}, "properties": {}}]}))
    return path


def test_hostile_rois(tmp_path, monkeypatch):
    square = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    nan = polygon_file(tmp_path / "nan.geojson", [[[0, 0], [float("nan"), 0], [100, 100], [0, 0]]])
    with pytest.raises(ValueError, match="not a finite number"):
        read_roi(nan)
    huge = polygon_file(tmp_path / "huge.geojson", [[[0, 0], [1e300, 0], [1e300, 1e300], [0, 0]]])
    with pytest.raises(ValueError, match="beyond"):
        read_roi(huge)
    bowtie = polygon_file(tmp_path / "bowtie.geojson", [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]])
    assert read_roi(bowtie).area == pytest.approx(5000)  # repaired into its two lobes
    rng = np.random.default_rng(0)
    scribble = polygon_file(tmp_path / "scribble.geojson", [rng.uniform(0, 1000, (5000, 2)).tolist()])
    t = time.perf_counter()
    with pytest.raises(ValueError, match="crosses itself and has 500[01] vertices"):
        read_roi(scribble)  # millions of crossings: refused at once instead of minutes of repair
    assert time.perf_counter() - t < 10
    a = np.linspace(0, 2 * np.pi, 1_000_000, endpoint=False)
    circle = polygon_file(tmp_path / "million.geojson", [np.c_[5e4 + 4e4 * np.cos(a), 5e4 + 4e4 * np.sin(a)].tolist()])
    assert read_roi(circle).area == pytest.approx(np.pi * 4e4**2, rel=1e-3)  # a million vertices, accepted
    nested = tmp_path / "nested.geojson"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="cannot read ROI nested.geojson"):
        read_roi(nested)
    binary = tmp_path / "binary.geojson"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="cannot read ROI binary.geojson"):
        read_roi(binary)
    monkeypatch.setattr(roi_module, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValueError, match="more than"):
        read_roi(polygon_file(tmp_path / "big.geojson", [square * 5]))


def test_a_hostile_roi_stops_the_run_with_one_line(tiny_model_dir, tmp_path, capsys):
    field = tmp_path / "field.png"
    Image.fromarray(synthetic_field(np.random.default_rng(0))[0]).save(field)
    roi = polygon_file(tmp_path / "roi.geojson", [[[0, 0], [float("nan"), 0], [100, 100], [0, 0]]])
    assert main(["run", "-q", str(field), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                 "--mpp", "0.25", "--roi", str(roi)]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("error: ROI roi.geojson: feature 0 has a coordinate that is not a finite number")
    assert not (tmp_path / "out").exists()


# model folders -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_copy(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzed") / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def load_or_error(folder: Path) -> str | None:
    from mitoqp.runtime.model import load_model

    try:
        model = load_model(folder)
    except ValueError as exc:
        assert_one_line(str(exc))
        return str(exc)
    scores = model.backend.predict(np.full((2, model.patch, model.patch, 3), 200, np.uint8))
    assert len(scores) == 2
    return None


@FUZZ
@given(key=st.sampled_from(["input_size", "mpp", "threshold", "onnx_sha256", "kind", "outputs", "candidates", "nms_um",
                            "members", "subtype_model", "precisions", "dense", "stain_reference", "atypical_threshold"]),
       value=st.one_of(json_value, st.integers(-5, 5000), st.floats(-1, 100)), delete=st.booleans())
def test_fuzzed_model_json_loads_or_gives_one_line(model_copy, tiny_model_dir, key, value, delete):
    config = json.loads((tiny_model_dir / "model.json").read_text())
    if delete:
        config.pop(key, None)
    else:
        config[key] = value
    (model_copy / "model.json").write_text(json.dumps(config))
    load_or_error(model_copy)


def test_broken_model_folders(model_copy, tiny_model_dir):
    original = json.loads((tiny_model_dir / "model.json").read_text())

    def write(config: dict) -> None:
        (model_copy / "model.json").write_text(json.dumps(config))

    write(original)
    assert load_or_error(model_copy) is None
    onnx = (tiny_model_dir / "model.onnx").read_bytes()
    tampered = bytearray(onnx)
    tampered[len(tampered) // 2] ^= 0xFF
    (model_copy / "model.onnx").write_bytes(bytes(tampered))
    assert "does not match the sha256" in load_or_error(model_copy)
    (model_copy / "model.onnx").write_bytes(b"not an onnx graph")
    from mitoqp.runtime.model import sha256_file

    write({**original, "onnx_sha256": sha256_file(model_copy / "model.onnx")})
    assert "cannot load ONNX model" in load_or_error(model_copy)
    (model_copy / "model.onnx").write_bytes(onnx)
    write({**original, "outputs": ["mitosis", "atypical", "x"]})
    assert "not what model.json describes" in load_or_error(model_copy)
    write({**original, "kind": "dense"})
    assert load_or_error(model_copy) is not None
    write({**original, "members": [{"file": "../../etc/passwd", "sha256": "0" * 64}]})
    assert "not a file inside the model folder" in load_or_error(model_copy)
    write({k: v for k, v in original.items() if k != "mpp"})
    assert "lacks 'mpp'" in load_or_error(model_copy)
    (model_copy / "model.json").write_text("{" * 50_000)
    assert "bad model config" in load_or_error(model_copy)
    write(original)


# training recipes --------------------------------------------------------------------------------------------

override = st.builds(lambda k, v: f"{k}={v}",
                     st.sampled_from(["train.epochs", "train.lr", "train.select", "model.widths", "model.se", "data",
                                      "train.epoch", "model", "candidates.sigma_um", "x.y.z", "", "train.seed.x",
                                      "data.slides", "method"]),
                     st.one_of(st.sampled_from(["1", "-3", "0.5", "nan", "inf", "true", "[1, 2]", "[]", "{a = 1}",
                                                "\"s\"", "[1, \"a\"]", "[[1]]", "", "=", "1e400"]), st.text(max_size=8)))


@FUZZ
@given(st.lists(override, max_size=3))
def test_fuzzed_recipe_overrides_are_checked(overrides):
    from mitoqp.training.recipe import check_recipe
    from mitoqp.training.train import apply_overrides, load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / "mitdet.toml")
    try:
        check_recipe(apply_overrides(cfg, overrides), Path("mitdet.toml"))
    except ValueError as exc:
        assert_one_line(str(exc))


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_fuzzed_recipe_files_give_one_line(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("recipe") / "recipe.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    out = path.parent / "run"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", str(path), "-o", str(out), "--set", "data.amibr=\"/nonexistent\""])
    assert code == 1  # nothing here can train: the recipe is refused, or its data is missing
    assert_one_line(err.getvalue().strip())
    assert not out.exists() or not list(out.glob("*.pt"))


def test_recipe_typos_and_wrong_types(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\namibr = "x"\n[train]\nepoch = 3\n')
    assert main(["train", str(recipe), "-o", str(tmp_path / "run")]) == 1
    assert "unknown setting train.epoch (did you mean train.epochs?)" in capsys.readouterr().err
    assert main(["train", str(recipe), "-o", str(tmp_path / "run"), "--set", "train.epoch=3", "--set",
                 "train.lr=\"fast\""]) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


# slide file names --------------------------------------------------------------------------------------------

file_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                    min_size=1, max_size=80).filter(lambda s: s not in (".", "..") and len(s.encode()) < 250)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(stem=file_name, suffix=st.sampled_from([".png", ".svs", ".tif", ".ome.tiff", "", ".txt"]),
       content=st.sampled_from(["field", "junk", "list"]))
@example(stem="<img src=x onerror=alert(1)> ..\\..", suffix=".png", content="field")
@example(stem="Schnitt ä 組織 #1 %20", suffix=".png", content="field")
@example(stem="x" * 199, suffix=".png", content="field")
@example(stem="y" * 245, suffix=".png", content="field")  # its outputs' names pass the file system's 255 bytes
@example(stem="..", suffix=".ome.tiff", content="field")
def test_fuzzed_slide_names_stay_inside_the_output_folder(tiny_model_dir, tmp_path_factory, stem, suffix, content):
    from mitoqp.batch import RunConfig, run_batch
    from mitoqp.pipeline import Options
    from mitoqp.runtime.model import load_model

    root = tmp_path_factory.mktemp("names")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    path = inputs / f"{stem}{suffix}"
    if content == "field":
        Image.fromarray(synthetic_field(np.random.default_rng(0), 96)[0]).save(path, format="PNG")
    elif content == "junk":
        path.write_bytes(b"\x00junk" * 10)
    else:  # a list naming paths that climb out of the folder
        path.write_text("../../../../etc/passwd\n../in\n/dev/zero\n")
    before = sorted(root.rglob("*"))
    model = load_model(tiny_model_dir)
    try:
        records = run_batch([str(path)], model, RunConfig(out, Options(mpp=0.25)), progress=False)
    except ValueError as exc:
        assert_one_line(str(exc))
        records = []
    for r in records:
        if r["status"] == "error":
            assert_one_line(r["error"])
    after = sorted(root.rglob("*"))
    new = [p for p in after if p not in before]
    assert all(out in p.parents or p == out for p in new), new  # nothing written outside -o
    assert not list(out.glob(".*.tmp"))
    if records and records[0]["status"] == "ok":
        report = (out / "report.html").read_text()
        assert "<img src=x" not in report  # names are escaped in the report


def test_an_unexpected_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    import mitoqp.cli as cli

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_info", broken)
    monkeypatch.delenv("MITOQP_DEBUG", raising=False)
    assert cli.main(["info", "any.svs"]) == 3
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("error: internal error") and err.endswith("RuntimeError: boom")
