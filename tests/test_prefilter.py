"""The prefilter cascade: a cheap first stage decides which candidates the detector scores."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_fields  # noqa: E402
from mitoqp.runtime.backend import PrefilterCascade  # noqa: E402
from mitoqp.runtime.model import load_model  # noqa: E402
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from mitoqp.training.model import build_model, count_macs  # noqa: E402


class Fixed:
    """A backend whose score is the patch's first pixel / 255, and that remembers what it saw."""

    def __init__(self, name: str, columns: int = 1):
        self.name, self.columns, self.seen = name, columns, []

    def predict(self, patches: np.ndarray) -> np.ndarray:
        self.seen.append(len(patches))
        s = patches[:, 0, 0, 0].astype(np.float32) / 255
        return np.stack([s] * self.columns, axis=1)


def test_cascade_asks_the_detector_only_about_what_the_prefilter_passes():
    patches = np.zeros((6, 4, 4, 3), np.uint8)
    patches[:, 0, 0, 0] = [0, 50, 100, 150, 200, 250]
    pre, det = Fixed("pre"), Fixed("det+subtype", 2)
    cascade = PrefilterCascade(pre, det, threshold=100 / 255, columns=2)
    out = cascade.predict(patches)
    assert det.seen == [4] and (cascade.seen, cascade.passed) == (6, 4)
    np.testing.assert_allclose(out[2:], np.stack([patches[2:, 0, 0, 0] / 255] * 2, axis=1), atol=1e-6)
    assert (out[:2, 0] == 0).all() and np.isnan(out[:2, 1]).all()  # rejected: no mitosis, no subtype
    nothing = PrefilterCascade(pre, det, threshold=1.1, columns=1).predict(patches)
    assert nothing.shape == (6, 1) and (nothing == 0).all() and det.seen == [4]


def test_input_pool_cuts_the_cost_and_keeps_the_interface():
    full = build_model({"widths": [16, 24, 48, 96]})
    pre = build_model({"widths": [12, 16, 32, 64], "input_pool": 2}).eval()
    assert count_macs(pre, 96) * 8 < count_macs(full, 96)
    assert pre(torch.zeros(3, 3, 96, 96)).shape == (3,)
    assert set(pre.state_dict()) == set(build_model({"widths": [12, 16, 32, 64]}).state_dict())  # pooling adds no weights


def test_threshold_passes_every_candidate_the_detector_keeps():
    from mitoqp.export.prefilter import choose_threshold

    det = np.array([0.1, 0.3, 0.9, 0.26, 0.05], np.float32)
    pre = np.array([0.01, 0.2, 0.7, 0.15, 0.5], np.float32)
    t = choose_threshold(det, pre, 0.25)
    assert (pre[det >= 0.25] >= t).all() and t > 0.14 and not (pre[0] >= t)
    with pytest.raises(ValueError, match="no validation candidate"):
        choose_threshold(det, pre, 0.95)


@pytest.fixture(scope="module")
def cascade_folder(tiny_model_dir, tmp_path_factory):
    """The tiny detector with a tiny half-resolution prefilter joined, its threshold chosen on synthetic validation."""
    from mitoqp.export.prefilter import attach_prefilter
    from mitoqp.patches import extract_patches
    from mitoqp.training.train import train

    tmp = tmp_path_factory.mktemp("prefilter")
    tr, va = synthetic_fields(tmp, 24, "train", 0), synthetic_fields(tmp, 8, "validation", 1)
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16], "input_pool": 2},
           "train": {"epochs": 2, "epoch_samples": 256, "batch": 32, "jitter": 4, "threads": 1, "lr": 0.01}}
    train(cfg, tr, va, tmp / "run", log=lambda m: None)
    folder = tmp / "joined"
    shutil.copytree(tiny_model_dir, folder)
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    config = attach_prefilter(folder, tmp / "run" / "best.pt", patches, va, keep_above=0.0)
    return folder, config, va


def test_a_joined_prefilter_changes_no_decision_on_validation(cascade_folder, tiny_model_dir):
    from mitoqp.export.prefilter import validation_scores

    folder, config, va = cascade_folder
    pre = config["prefilter"]
    assert pre["parity"]["decisions_differ"] == 0 and (folder / "prefilter.onnx").exists()
    assert pre["validation"]["detections_passed"] == pre["validation"]["detections"]
    assert pre["validation"]["passed"] == pre["validation"]["candidates"]  # keep_above 0: every candidate passes
    cascade, plain = load_model(folder), load_model(folder, prefilter=False)
    assert isinstance(cascade.backend, PrefilterCascade) and not isinstance(plain.backend, PrefilterCascade)
    assert cascade.sha256 != plain.sha256 == load_model(tiny_model_dir).sha256  # the identity names what ran
    det, both = validation_scores(va, plain, cascade, plain.patch, plain.candidates)
    np.testing.assert_allclose(both, det, atol=1e-6)


def test_a_stricter_prefilter_scores_rejected_candidates_zero(cascade_folder, tmp_path):
    from mitoqp.export.prefilter import validation_scores

    folder, config, va = cascade_folder
    strict = tmp_path / "strict"
    shutil.copytree(folder, strict)
    plain = load_model(strict, prefilter=False)
    prefilter = SimpleNamespace(backend=OnnxRuntimeBackend(strict / "prefilter.onnx"))  # the first stage alone
    _, pre = validation_scores(va, plain, prefilter, plain.patch, plain.candidates)
    config = json.loads((strict / "model.json").read_text())
    config["prefilter"]["threshold"] = float(np.median(pre))  # half the candidates go no further
    (strict / "model.json").write_text(json.dumps(config))
    cascade = load_model(strict)
    seen, passed = cascade.backend.seen, cascade.backend.passed  # load_model's own shape check
    det, both = validation_scores(va, plain, cascade, plain.patch, plain.candidates)
    asked = pre >= np.median(pre)
    assert 0 < asked.sum() < len(asked) and (both[~asked] == 0).all()
    np.testing.assert_allclose(both[asked], det[asked], atol=1e-6)
    assert cascade.backend.seen - seen == len(det) and cascade.backend.passed - passed == asked.sum()


def test_a_broken_prefilter_is_a_one_line_error(cascade_folder, tmp_path):
    folder, _, _ = cascade_folder
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "model.json").read_text())
    config["prefilter"]["threshold"] = "high"
    (bad / "model.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'prefilter' threshold"):
        load_model(bad)
    config["prefilter"]["threshold"], config["prefilter"]["keep_above"] = 0.1, None
    (bad / "model.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'prefilter' keep_above"):
        load_model(bad)
    shutil.copy(folder / "model.json", bad / "model.json")
    with open(bad / "prefilter.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_model(bad)
    assert load_model(bad, prefilter=False).backend  # the detector alone still runs


def test_a_threshold_below_what_the_prefilter_keeps_is_refused_before_any_slide(cascade_folder, tmp_path, capsys):
    from PIL import Image

    from conftest import synthetic_field
    from mitoqp.cli import main
    from mitoqp.pipeline import Options, analyse_slide
    from mitoqp.slide import open_slide

    folder, _, _ = cascade_folder
    keeps = tmp_path / "keeps"
    shutil.copytree(folder, keeps)
    config = json.loads((keeps / "model.json").read_text())
    config["prefilter"]["keep_above"] = 0.25  # as the export's default: passes what the detector scores >= 0.25
    (keeps / "model.json").write_text(json.dumps(config))
    Image.fromarray(synthetic_field(np.random.default_rng(3))[0]).save(tmp_path / "field.png")
    args = ["run", str(tmp_path / "field.png"), "--model", str(keeps), "--mpp", "0.25", "-o"]
    assert main([*args, str(tmp_path / "low"), "--threshold", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-prefilter" in err and not (tmp_path / "low").exists()
    assert main([*args, str(tmp_path / "plain"), "--threshold", "0.1", "--no-prefilter"]) == 0
    assert main([*args, str(tmp_path / "high"), "--threshold", "0.5"]) == 0
    with open_slide(tmp_path / "field.png") as slide, pytest.raises(ValueError, match="prefilter was chosen to pass"):
        analyse_slide(slide, load_model(keeps), Options(mpp=0.25, threshold=0.1))  # the library path says the same


def test_bench_reports_what_the_prefilter_passed_and_no_prefilter_turns_it_off(cascade_folder, tmp_path, capsys):
    from PIL import Image

    from conftest import synthetic_field
    from mitoqp.cli import main

    folder, _, _ = cascade_folder
    rng = np.random.default_rng(5)
    Image.fromarray(np.hstack([synthetic_field(rng)[0] for _ in range(3)])).save(tmp_path / "field.png")
    shares = {}
    for flag in ([], ["--no-prefilter"]):
        report_path = tmp_path / f"bench{len(flag)}.json"
        assert main(["bench", str(tmp_path / "field.png"), "--model", str(folder), "--mpp", "0.25", "--repeat", "1",
                     "--json", str(report_path), *flag]) == 0
        report = json.loads(report_path.read_text())
        shares[bool(flag)] = (report["backend"], report["slides"][0]["prefilter_passed_share"])
    assert shares[False][0].startswith("prefilter+") and 0 < shares[False][1] <= 1
    assert not shares[True][0].startswith("prefilter+") and shares[True][1] is None
    assert "prefilter passed" in capsys.readouterr().out


def test_figures_a_prefilter_rejected_have_no_subtype_and_stay_out_of_the_auc():
    from mitoqp.evaluate import subtype_summary

    def outcome(atypical: bool, score: float):
        field = SimpleNamespace(dataset="MIDOG21", mpp=0.25, atypical=atypical)
        return SimpleNamespace(field=field, xy=np.array([[64.0, 64.0]]), scores=np.array([0.9]), atypical=np.array([score]))

    outs = [outcome(True, 0.9), outcome(True, np.nan), outcome(False, 0.1), outcome(False, 0.2)]
    st = subtype_summary(outs, threshold=0.5, atypical_threshold=0.5)
    assert st["without_subtype"] == 1 and st["auc"] == 1.0  # over the three that have a score
    assert st["balanced_accuracy"] == 0.75  # the rejected atypical figure counts as not called atypical


def test_evaluate_reports_what_a_prefilter_leaves_the_detector(cascade_folder, tmp_path):
    from mitoqp.evaluate import markdown, run_fields, summarise
    from mitoqp.export.prefilter import validation_scores

    folder, _, va = cascade_folder
    strict = tmp_path / "strict"
    shutil.copytree(folder, strict)
    plain = load_model(strict, prefilter=False)
    prefilter = SimpleNamespace(backend=OnnxRuntimeBackend(strict / "prefilter.onnx"))
    _, pre = validation_scores(va, plain, prefilter, plain.patch, plain.candidates)
    config = json.loads((strict / "model.json").read_text())
    config["prefilter"]["threshold"] = float(np.quantile(pre, 0.7))  # most candidates go no further
    config["prefilter"]["keep_above"] = 0.25  # what `mitoqp export --prefilter` sets: every score is still read
    (strict / "model.json").write_text(json.dumps(config))
    cascade = load_model(strict)
    assert cascade.threshold >= 0.25
    outs = run_fields(va, cascade)
    for o in outs:  # the mask evaluate reads again is what the cascade did: rejects score 0, the rest were scored
        assert (o.scores[~o.passed] == 0).all() and (o.scores[o.passed] > 0).all()
    r = summarise(outs, cascade.threshold, 0)
    c = r["prefilter"]
    assert c["passed_per_field"] == pytest.approx(np.mean([o.passed.sum() for o in outs]))
    assert 0 < c["passed_share"] < 0.5 and c["passed_per_field"] < r["candidates_per_field"]
    assert c["candidate_sensitivity_passed"]["7.5um"] <= r["candidate_sensitivity"]["7.5um"]
    assert summarise(run_fields(va, plain), plain.threshold, 0)["prefilter"] == {}  # no cascade, nothing to say
    report = {"model": {"id": "t"}, "threshold": cascade.threshold, "figure_density_per_mm2": 2.0,
              "sets": {"validation/all": r}}
    assert "| validation/all | " in markdown(report).split("Prefilter cascade")[1]


def test_evaluate_refuses_a_threshold_below_the_prefilters_floor_before_any_field(cascade_folder, tmp_path, capsys):
    from mitoqp.cli import main

    folder, _, _ = cascade_folder
    floor = tmp_path / "floor"
    shutil.copytree(folder, floor)
    config = json.loads((floor / "model.json").read_text())
    config["prefilter"]["keep_above"] = 0.25
    (floor / "model.json").write_text(json.dumps(config))
    code = main(["evaluate", "--model", str(floor), "--threshold", "0.1", "--amibr", str(tmp_path / "absent"),
                 "-o", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code != 0 and "prefilter" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()
