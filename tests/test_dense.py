"""Dense models: peaks of a probability map, tiles stitched without gaps or doubles, figures at seams found once."""

import json

import numpy as np
import pytest

from mitoqp.dense import DenseSpec, cut_tiles, stitch, window_peaks
from mitoqp.peaks import find_peaks
from test_stream import BLOBS, H, TILE, W


def bumps(shape, points, sigma=3.0, heights=None):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.float32)
    for (x, y), h in zip(points, heights or [1.0] * len(points)):
        out = np.maximum(out, h * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    return out


def test_known_maxima_are_found_where_they_are():
    pts = [(10, 12), (40, 15), (25, 40), (55, 55)]
    xy, s = find_peaks(bumps((64, 64), pts, heights=[0.9, 0.8, 0.7, 0.6]), 0.3, 4)
    assert sorted(map(tuple, xy.astype(int))) == sorted(pts)
    assert np.allclose(sorted(s, reverse=True), [0.9, 0.8, 0.7, 0.6], atol=1e-6)


def test_a_plateau_is_one_peak_and_close_maxima_merge_into_the_higher():
    m = np.zeros((30, 30), np.float32)
    m[10:14, 10:13] = 0.8  # a plateau of 12 equal pixels
    xy, _ = find_peaks(m, 0.5, 3)
    assert len(xy) == 1 and 10 <= xy[0, 1] < 14 and 10 <= xy[0, 0] < 13
    two = bumps((40, 40), [(15, 20), (19, 20)], sigma=1.0, heights=[0.9, 0.7])  # 4 px apart
    xy, s = find_peaks(two, 0.3, 5)
    assert len(xy) == 1 and tuple(xy[0]) == (15, 20) and s[0] == pytest.approx(0.9)
    assert len(find_peaks(two, 0.3, 2)[0]) == 2
    assert len(find_peaks(two, 0.95, 2)[0]) == 0  # below the floor


@pytest.mark.parametrize("stride,context", [(1, 4), (2, 8), (4, 12)])
def test_tiles_cover_the_core_once_and_stitch_back(stride, context):
    """A pointwise 'model' (darkness, pooled by the stride): the stitched core equals the map of the whole window."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (203, 317, 3), dtype=np.uint8)
    spec = DenseSpec(tile=64, stride=stride, context=context, min_distance_um=2, floor=0.1)
    core = (30, 21, 290, 180)

    def darkness(img):  # (N, T, T, 3) -> (N, 1, T/s, T/s)
        d = 1 - img.astype(np.float32).mean(axis=-1) / 255
        n, t = d.shape[0], d.shape[1] // stride
        return d.reshape(n, t, stride, t, stride).mean(axis=(2, 4))[:, None]

    tiles, origins = cut_tiles(rgb, core, spec)
    got = stitch(darkness(tiles), origins, core, spec)
    x0, y0, x1, y1 = core
    region = rgb[y0:y0 + got.shape[1] * stride, x0:x0 + got.shape[2] * stride]
    d = 1 - region.astype(np.float32).mean(axis=-1) / 255
    want = d.reshape(got.shape[1], stride, got.shape[2], stride).mean(axis=(1, 3))
    assert got.shape == (1, -(-(y1 - y0) // stride), -(-(x1 - x0) // stride))
    assert np.allclose(got[0], want, atol=1e-6)


def darkness_model(folder, tile=64, stride=2, context=8):
    """A dense model folder whose ONNX graph maps a tile to its pooled darkness: peaks sit on dark blobs."""
    import onnx
    from onnx import TensorProto, helper

    from mitoqp.runtime.model import sha256_file

    nodes = [
        helper.make_node("ReduceMean", ["patches", "axes"], ["grey"], keepdims=1),
        helper.make_node("Sub", ["white", "grey"], ["dark"]),
        helper.make_node("Div", ["dark", "white"], ["unit"]),
        helper.make_node("AveragePool", ["unit"], ["probability"], kernel_shape=[stride, stride], strides=[stride, stride]),
    ]
    graph = helper.make_graph(
        nodes, "darkness", [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["batch", 3, tile, tile])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1, tile // stride, tile // stride])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("white", TensorProto.FLOAT, [], [255.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    cfg = {"id": "darkness", "kind": "dense", "input_size": tile, "mpp": 0.25, "threshold": 0.5, "outputs": ["mitosis"],
           "dense": {"output_stride": stride, "context_px": context, "min_distance_um": 5.0, "peak_floor": 0.3},
           "onnx_sha256": sha256_file(folder / "model.onnx")}
    (folder / "model.json").write_text(json.dumps(cfg))
    return folder


def test_a_dense_model_finds_each_blob_once_across_window_seams(tmp_path):
    from mitoqp.pipeline import Options, analyse_slide
    from mitoqp.runtime.model import load_model
    from mitoqp.slide import open_slide
    from mitoqp.synthetic_slide import write_svs_like

    # smooth dark spots (a flat blob is a plateau that a seam cuts in two: its position is ill-defined there)
    img = (235 - 180 * bumps((H, W), BLOBS, sigma=4.0)[..., None].repeat(3, axis=-1)).astype(np.uint8)
    path = tmp_path / "seams.svs"
    write_svs_like(path, lambda x, y, w, h: img[y:y + h, x:x + w], W, H, 0.25, tile=TILE, levels=1, compression="zlib")
    model = load_model(darkness_model(tmp_path / "m"))
    assert model.kind == "dense"
    with open_slide(path) as slide:
        res = analyse_slide(slide, model, Options(window_px=512, use_tissue_mask=False))
    det = res.xy[res.detected]
    assert len(det) == len(BLOBS)
    d = np.hypot(*(det[:, None, :] - np.asarray(BLOBS, float)[None]).transpose(2, 0, 1))
    assert (d.min(axis=0) <= 1.0).all()  # every spot, within a stride's rounding, and nothing else
    assert np.isnan(res.area_um2).all()


def test_window_peaks_are_in_window_pixels():
    spec = DenseSpec(tile=64, stride=4, context=8, min_distance_um=2, floor=0.2)
    maps = np.zeros((2, 10, 12), np.float32)
    maps[0, 3, 5], maps[1, 3, 5] = 0.9, 0.4
    centres, values = window_peaks(maps, (100, 40, 148, 80), spec, mpp=0.25)
    assert centres.tolist() == [[100 + 5 * 4 + 1.5, 40 + 3 * 4 + 1.5]]
    assert values.tolist() == [[pytest.approx(0.9), pytest.approx(0.4)]]


def test_test_time_augmentation_turns_dense_maps_back(tmp_path):
    from mitoqp.runtime.model import load_model

    folder = darkness_model(tmp_path / "m")
    x = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    plain, tta = load_model(folder).backend.predict(x), load_model(folder, tta=8).backend.predict(x)
    assert plain.shape == tta.shape == (3, 1, 32, 32)
    assert np.allclose(plain, tta, atol=1e-5)  # darkness is the same in any orientation, once turned back


def test_dense_detections_in_geojson_have_no_area_measurement():
    from mitoqp.qupath_geojson import detection_features

    f = next(detection_features(np.array([[10.0, 20.0]]), np.array([0.9]), np.array([np.nan]), 0.25))
    assert f["properties"]["measurements"] == {"score": 0.9} and len(f["geometry"]["coordinates"][0]) > 3


def test_registry_lists_bundled_and_installed_models_and_resolves_names(tmp_path, monkeypatch, capsys):
    from mitoqp.cli import main
    from mitoqp.runtime.model import load_model
    from mitoqp.runtime.registry import list_models, resolve_model

    darkness_model(tmp_path / "models" / "darkness")
    (tmp_path / "models" / "broken").mkdir()
    (tmp_path / "models" / "broken" / "model.json").write_text("{not json")
    monkeypatch.setenv("MITOQP_MODEL_PATH", str(tmp_path / "models"))
    sets = {"validation/all": {"operating_point": {"hpf_f1": 0.5}}, "test/all": {"operating_point": {"hpf_f1": 0.4}}}
    (tmp_path / "models" / "darkness" / "evaluation.json").write_text(json.dumps({"sets": sets}))
    rows = {r["name"]: r for r in list_models()}
    assert rows["default"]["where"] == "bundled" and rows["default"]["kind"] == "patch"
    # validation and test from the one evaluation (its labels and code), not the export's own validation figure
    assert rows["darkness"]["validation_hpf_f1"] == 0.5 and rows["darkness"]["hpf_f1"] == {"test": 0.4}
    assert rows["darkness"]["where"] == "installed" and rows["darkness"]["kind"] == "dense"
    assert "error" in rows["broken"]
    assert resolve_model("darkness") == tmp_path / "models" / "darkness"
    assert load_model("darkness").kind == "dense"
    with pytest.raises(ValueError, match="no model folder or model named 'nothing'.*darkness"):
        resolve_model("nothing")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "darkness | darkness | dense | 64 px" in out and "default | " in out
    assert main(["models", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} >= {"default", "darkness", "broken"}


def test_evaluate_models_writes_one_comparison_table(tmp_path):
    from conftest import AMIBR

    if not AMIBR.exists():
        pytest.skip("../shared/data/ami-br is not present")
    from mitoqp.candidates import CandidateParams
    from mitoqp.cli import main

    darkness_model(tmp_path / "darkness")
    table = tmp_path / "METHODS.md"
    assert main(["evaluate", "--models", f"default,{tmp_path / 'darkness'}", "--limit", "3", "--bootstrap", "0",
                 "--slides", "--splits", "test,atnorm-br", "-o", str(tmp_path / "cmp"), "--table", str(table)]) == 0
    text = table.read_text()
    assert (tmp_path / "cmp" / "default" / "evaluation.json").exists()
    assert (tmp_path / "cmp" / "darkness" / "evaluation.json").exists()
    rows = [line for line in text.splitlines() if "| default (" in line or "| darkness (" in line]
    assert len(rows) == 2 and rows[0].startswith("| baseline | points | default") and "| patch |" in rows[0]
    assert rows[1].startswith("| other | - | darkness") and "| dense |" in rows[1]
    assert text == (tmp_path / "cmp" / "methods.md").read_text()
    # a second comparison reuses the evaluations of the same models under the same options
    out = tmp_path / "cmp" / "default" / "evaluation.json"
    stamp = out.stat().st_mtime_ns
    assert main(["evaluate", "--models", "default", "--limit", "3", "--bootstrap", "0", "--slides", "--splits",
                 "test,atnorm-br", "-o", str(tmp_path / "cmp")]) == 0
    assert out.stat().st_mtime_ns == stamp
    assert main(["evaluate", "--models", "default", "--limit", "2", "--bootstrap", "0", "--slides", "--splits",
                 "test,atnorm-br", "-o", str(tmp_path / "cmp")]) == 0
    assert out.stat().st_mtime_ns != stamp  # another --limit: evaluated again
    stamp = out.stat().st_mtime_ns
    assert main(["evaluate", "--models", "default", "--limit", "2", "--bootstrap", "0", "--slides", "--splits",
                 "test,atnorm-br", "-o", str(tmp_path / "cmp"), "--threshold", "0.5"]) == 0
    assert out.stat().st_mtime_ns != stamp  # another threshold (a re-thresholded folder keeps its files): again
    report = json.loads(out.read_text())
    defaults = CandidateParams().to_dict()
    cands = report["options"]["candidates"]
    at_default = [k for k, v in cands.items() if v == defaults[k]]
    assert at_default
    for key in at_default:  # as a version before these settings wrote it: a missing setting is at its default
        del cands[key]
    out.write_text(json.dumps(report))
    stamp = out.stat().st_mtime_ns
    assert main(["evaluate", "--models", "default", "--limit", "2", "--bootstrap", "0", "--slides", "--splits",
                 "test,atnorm-br", "-o", str(tmp_path / "cmp"), "--threshold", "0.5"]) == 0
    assert out.stat().st_mtime_ns == stamp  # settings added since count at their defaults: reused
    report = json.loads(out.read_text())
    report["options"]["candidates"]["centre_power"] += 1.0  # as if made with other candidate settings
    out.write_text(json.dumps(report))
    stamp = out.stat().st_mtime_ns
    assert main(["evaluate", "--models", "default", "--limit", "2", "--bootstrap", "0", "--slides", "--splits",
                 "test,atnorm-br", "-o", str(tmp_path / "cmp"), "--threshold", "0.5"]) == 0
    assert out.stat().st_mtime_ns != stamp  # the folder's candidates differ from the report's: again
