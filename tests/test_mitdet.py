"""MitDet's components on generated data: EFDMix, DGSB, the two-level loss, stain augmentation and
normalisation, test-time augmentation, the subtype output, and a smoke run of the full recipe."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from conftest import ROOT, synthetic_field, synthetic_fields  # noqa: E402
from mitoqp.candidates import CandidateParams  # noqa: E402
from mitoqp.cli import main  # noqa: E402
from mitoqp.qupath_geojson import ATYPICAL_CLASS, NORMAL_CLASS, detection_features  # noqa: E402
from mitoqp.runtime.backend import DihedralTTA, dihedral_view  # noqa: E402
from mitoqp.runtime.model import load_model  # noqa: E402
from mitoqp.stain import stain_matrix  # noqa: E402
from mitoqp.stain_normalise import StainNormaliser, estimate, reference_from_images  # noqa: E402
from mitoqp.training.augment import MacenkoStainAugment  # noqa: E402
from mitoqp.training.losses import (CenterLoss, DomainAdversary, child_class_weights, child_focal_loss,  # noqa: E402
                                    dann_strength, reverse_gradient, subtype_loss)
from mitoqp.training.model import EFDMix, build_model  # noqa: E402
from mitoqp.training.samples import SampleSet  # noqa: E402
from mitoqp.training.sampling import dgsb_sampler, kmeans_children, label_children, source_domains  # noqa: E402
from mitoqp.training.train import apply_overrides  # noqa: E402


# --- EFDMix ---------------------------------------------------------------------------------

def test_efdmix_with_full_transfer_takes_the_other_samples_values_in_its_own_order():
    x = torch.randn(4, 3, 5, 5)
    perm = torch.tensor([1, 2, 3, 0])
    out = EFDMix().mix(x, torch.zeros(4), perm)
    flat_out, flat_x = out.reshape(4, 3, -1), x.reshape(4, 3, -1)
    # the exact distribution (sorted values) of sample perm[i], per channel
    torch.testing.assert_close(flat_out.sort(-1).values, flat_x[perm].sort(-1).values)
    # the rank order of sample i is kept
    assert torch.equal(flat_out.argsort(-1), flat_x.argsort(-1))


def test_efdmix_weights_and_modes():
    x = torch.randn(6, 2, 4, 4, requires_grad=True)
    perm = torch.randperm(6)
    torch.testing.assert_close(EFDMix().mix(x, torch.ones(6), perm), x)  # mu = 1: no mixing
    half = EFDMix().mix(x, torch.full((6,), 0.5), perm)
    full = EFDMix().mix(x, torch.zeros(6), perm)
    torch.testing.assert_close(half, 0.5 * (x + full))  # linear in mu
    full.sum().backward()
    # eq. 6: u passes its gradient straight through (the stop-gradient cancels its subtraction),
    # and as v it also feeds the partner whose values it lends: 1 + (1 - mu)
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
    layer = EFDMix(p=1.0).eval()
    assert torch.equal(layer(x), x)  # identity at inference
    assert not torch.equal(EFDMix(p=1.0).train()(x), x)


# --- DGSB and child classes -----------------------------------------------------------------

def blobs(sizes, seed=0, dim=4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 20, (len(sizes), dim))
    return np.concatenate([c + rng.normal(0, 0.5, (n, dim)) for c, n in zip(centres, sizes)]), np.repeat(np.arange(len(sizes)), sizes)


def sample_set(labels, **kw):
    n = len(labels)
    return SampleSet(np.zeros((n, 4, 4, 3), np.uint8), np.asarray(labels, np.float32), kw.get("lookalike", np.zeros(n, bool)),
                     np.tile([0, 0, 4, 4], (n, 1)), np.zeros(n, int), np.zeros((n, 2)), kw.get("from_slide"), kw.get("atypical"))


def test_dgsb_draws_each_cluster_equally_and_drops_easy_negatives():
    feats, truth = blobs([900, 90, 10])
    labels = np.r_[np.ones(20), np.zeros(len(feats))]
    s = sample_set(labels)
    prob = np.full(len(feats), 0.9)
    easy = (truth == 0) & (np.arange(len(feats)) % 2 == 0)  # half of the big cluster is easy
    prob[easy] = 0.1
    sampler, info = dgsb_sampler(s, feats, prob, 3, 0.5, 0.0, seed=0)
    assert sorted(info["clusters"]) == [10, 90, 900] and info["kept"] == len(feats) - easy.sum()
    rng = np.random.default_rng(1)
    drawn = np.concatenate([sampler.draw(rng, 200) for _ in range(60)])
    neg = drawn[labels[drawn] == 0] - 20
    share = np.bincount(truth[neg], minlength=3) / len(neg)
    np.testing.assert_allclose(share, 1 / 3, atol=0.03)  # not 0.9 / 0.09 / 0.01
    assert not easy[neg].any()
    assert (labels[drawn] == 1).mean() == pytest.approx(0.5)


def test_dgsb_keeps_a_share_of_easy_negatives_when_asked():
    feats, _ = blobs([500, 500])
    s = sample_set(np.r_[np.ones(5), np.zeros(len(feats))])
    _, info = dgsb_sampler(s, feats, np.zeros(len(feats)), 2, 0.5, 0.2, seed=0)
    assert info["hard"] == 0 and 150 < info["kept"] < 250


def test_child_classes_from_labels_and_from_kmeans():
    labels = np.array([1, 1, 1, 0, 0, 0, -1], np.float32)
    s = sample_set(labels, lookalike=np.array([0, 0, 0, 1, 0, 0, 0], bool), from_slide=np.array([0, 0, 0, 0, 1, 0, 0], bool),
                   atypical=np.array([0, 1, -1, -1, -1, -1, -1], np.int8))
    assert label_children(s).tolist() == [0, 1, -1, 2, 3, 4, -1]
    feats, truth = blobs([30, 30, 30, 30])
    lab = np.where(truth < 2, 0.0, 1.0)
    child, parent = kmeans_children(feats, lab, 2, seed=0)
    assert parent.tolist() == [0, 0, 1, 1]
    assert set(child[lab == 0]) == {0, 1} and set(child[lab == 1]) == {2, 3}
    for t in range(4):  # each child class is one of the generated blobs
        assert len(set(child[truth == t])) == 1


# --- the two-level loss ---------------------------------------------------------------------

def test_child_focal_loss_is_weighted_cross_entropy_at_gamma_zero_and_skips_unknowns():
    logits = torch.randn(5, 4)
    target = torch.tensor([0, 3, -1, 2, 1])
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    known = target >= 0
    ce = torch.nn.functional.cross_entropy(logits[known], target[known], reduction="none")
    assert child_focal_loss(logits, target, w, 0.0).item() == pytest.approx((w[target[known]] * ce).mean().item(), rel=1e-5)
    assert child_focal_loss(logits, target, w, 2.0) < child_focal_loss(logits, target, w, 0.0)


def test_child_weights_favour_classes_near_the_other_parent():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [11.0, 30.0]])
    parent = torch.tensor([0, 0, 1, 1])
    w = child_class_weights(centres, parent)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[0] > w[1] and w[2] > w[3]  # child 0 sits next to child 2 (hard); 1 and 3 lie far from the other parent


def test_center_loss_and_subtype_loss():
    loss = CenterLoss(2, 3)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]))
    feats = torch.tensor([[0.0, 0, 0], [1.0, 1, 1], [5.0, 5, 5]])
    assert loss(feats[:2], torch.tensor([0, 1])).item() == 0
    assert loss(feats, torch.tensor([0, 1, -1])).item() == 0  # unknown labels ignored
    assert loss(feats[2:], torch.tensor([1])).item() == pytest.approx(0.5 * 3 * 16)
    logits = torch.tensor([3.0, -3.0, 0.0])
    assert subtype_loss(logits, torch.tensor([1, 0, -1]), 1.0) < subtype_loss(logits, torch.tensor([0, 1, -1]), 1.0)
    assert subtype_loss(logits, torch.tensor([-1, -1, -1]), 1.0).item() == 0


def test_model_options_keep_the_runtime_interface():
    x = torch.rand(3, 3, 32, 32) * 255
    plain = build_model({"widths": [8, 8, 16, 16]}).eval()
    full = build_model({"widths": [8, 8, 16, 16], "se": True, "efdmix_p": 0.5, "subtype": True}, 6).eval()
    assert plain(x).shape == (3,)
    out = full(x)
    assert out.shape == (3, 2) and bool(((out >= 0) & (out <= 1)).all())
    assert full.heads(full.embed(x))["child"].shape == (3, 6)


def test_patch_input_norm_ignores_a_colour_cast_and_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 150 + 50
    cast = x * torch.tensor([0.8, 1.1, 0.9])[None, :, None, None] + torch.tensor([20.0, -10.0, 5.0])[None, :, None, None]
    patch = build_model({"widths": [8, 8, 16, 16], "se": True, "input_norm": "patch"}).eval()
    plain = build_model({"widths": [8, 8, 16, 16], "se": True}).eval()
    plain.load_state_dict(patch.state_dict())  # same weights: only the input statistics differ
    with torch.no_grad():
        assert torch.allclose(patch.normalise(x), patch.normalise(cast), atol=5e-3)  # up to the small floor on the spread
        assert (plain.normalise(x) - plain.normalise(cast)).abs().max() > 0.2
        assert torch.allclose(patch(x), patch(cast), atol=1e-3)
        torch.onnx.export(patch, x, tmp_path / "m.onnx", input_names=["patches"], output_names=["p"],
                          dynamic_axes={"patches": {0: "n"}}, opset_version=17, dynamo=False)
        ref = patch(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"patches": x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-5
    with pytest.raises(ValueError, match="input_norm"):
        build_model({"input_norm": "scanner"})


def test_od_input_norm_ignores_stain_amount_and_illumination_and_exports_to_onnx(tmp_path):
    """In optical density a stain's amount is a scale and the lamp an offset: both gone after standardising."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    od = torch.rand(4, 1, 32, 32) * 1.2 + 0.1  # one stain's optical density map
    stain = torch.tensor([0.65, 0.70, 0.29])[None, :, None, None]  # hematoxylin's OD vector (Ruifrok)
    def pixels(amount: float, lamp: float) -> torch.Tensor:
        return lamp * 256.0 * torch.exp(-amount * od * stain) - 1.0
    x, darker = pixels(1.0, 1.0), pixels(1.4, 0.85)  # more stain, a dimmer lamp
    model = build_model({"widths": [8, 8, 16, 16], "se": True, "input_norm": "od"}).eval()
    rgb = build_model({"widths": [8, 8, 16, 16], "se": True, "input_norm": "patch"}).eval()
    with torch.no_grad():
        assert torch.allclose(model.normalise(x), model.normalise(darker), atol=0.01)  # up to the floor on the spread
        assert (rgb.normalise(x) - rgb.normalise(darker)).abs().max() > 0.08  # per-channel RGB standardising cannot
        assert bool(torch.isfinite(model.normalise(torch.full((1, 3, 8, 8), 255.0))).all())  # glass, flat
        torch.onnx.export(model, x, tmp_path / "m.onnx", input_names=["patches"], output_names=["p"],
                          dynamic_axes={"patches": {0: "n"}}, opset_version=17, dynamo=False)
        ref = model(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"patches": x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-5


# --- stain augmentation and normalisation ---------------------------------------------------

SURVEY = json.loads((ROOT / "configs" / "stain_survey.json").read_text())


def test_macenko_augmentation_is_identity_without_spread_and_keeps_glass():
    rng = np.random.default_rng(0)
    img, _ = synthetic_field(rng, 32)
    img[:4] = 255  # glass
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().repeat(4, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    still = MacenkoStainAugment(SURVEY, 0.0)(x, gen)
    assert (still - x).abs().max() < 1.0
    moved = MacenkoStainAugment(SURVEY, 2.0)(x, gen)
    assert (moved - x).abs().mean() > 2.0
    assert torch.all(moved[:, :, :4] == 255)
    assert not torch.allclose(moved[0], moved[1])  # each sample its own stain


def test_stain_survey_leaves_a_held_out_source_out(tmp_path, monkeypatch):
    from dataclasses import replace

    from mitoqp.training import stain_survey

    fields = []
    for source in ("midog21-xr", "tupac16"):
        for slide in ("a", "b"):
            part = synthetic_fields(tmp_path, 2, f"{source}_{slide}", 0)
            fields += [replace(f, source=source, name=f"{source}_{slide}_{i}") for i, f in enumerate(part)]
    with (tmp_path / "AMI-BR.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["dataset", "uid", "slide"])
        w.writeheader()
        for f in fields:
            w.writerow({"dataset": f.name.split("_")[0], "uid": f.name.split("_", 1)[1], "slide": f.name[:-2]})
    monkeypatch.setattr(stain_survey, "read_amibr", lambda *a, **k: fields)
    full = stain_survey.survey(tmp_path, None, None)
    assert set(full["sources"]) == {"MIDOG21 Hamamatsu XR", "TUPAC16"} and full["training"]["slides"] == 4
    held = stain_survey.survey(tmp_path, None, None, hold_out=["tupac16"])
    assert set(held["sources"]) == {"MIDOG21 Hamamatsu XR"} and held["training"]["slides"] == 2
    assert held["held_out"] == ["tupac16"]
    with pytest.raises(ValueError, match="unknown source"):
        stain_survey.survey(tmp_path, None, None, hold_out=["tupac17"])


def stained(h_density, e_density, he):
    od = h_density[..., None] * he[0] + e_density[..., None] * he[1]
    return np.clip(255 * 10 ** (-od), 0, 255).round().astype(np.uint8)


def test_stain_normalisation_maps_another_stain_back_to_the_reference():
    rng = np.random.default_rng(0)
    h = np.clip(rng.gamma(2.0, 0.25, (64, 64)), 0, 2)
    e = np.clip(rng.gamma(2.0, 0.15, (64, 64)), 0, 2)
    ref_he = stain_matrix(np.array([SURVEY["training"]["h_mean"], SURVEY["training"]["e_mean"]]))[:2]
    other_he = stain_matrix(np.array([[0.75, 0.6, 0.28], [0.2, 0.95, 0.25]]))[:2]
    reference = reference_from_images([stained(h, e, ref_he)])
    recoloured = stained(h * 1.4, e * 0.8, other_he)
    norm = StainNormaliser.fit(recoloured, reference)
    back = norm(recoloured[None])[0]
    target = stained(h, e, ref_he)
    before = np.abs(recoloured.astype(float) - target).mean()
    after = np.abs(back.astype(float) - target).mean()
    assert after < 0.25 * before and after < 6
    he_est, _ = estimate(recoloured)
    assert np.degrees(np.arccos(he_est[0] @ other_he[0])) < 5  # Macenko finds the other H vector


# --- test-time augmentation -----------------------------------------------------------------

def test_dihedral_tta_is_invariant_to_rotations_and_mirrors(tiny_model_dir):
    rng = np.random.default_rng(0)
    patches = np.stack([synthetic_field(rng, 64)[0][16:48, 10:42] for _ in range(6)])
    plain = load_model(tiny_model_dir).backend
    tta = DihedralTTA(plain, 8)
    base = tta.predict(patches)
    for k, flip in [(1, False), (2, False), (3, True), (0, True)]:
        np.testing.assert_allclose(tta.predict(dihedral_view(patches, k, flip)), base, atol=1e-5)
    # without TTA the model is not invariant: the test above can fail
    diffs = [np.abs(plain.predict(dihedral_view(patches, k, f)) - plain.predict(patches)).max() for k, f in [(1, False), (0, True)]]
    assert max(diffs) > 1e-4
    np.testing.assert_allclose(base, np.mean([plain.predict(dihedral_view(patches, k, f)) for k in range(4) for f in (False, True)], axis=0),
                               atol=1e-6)
    with pytest.raises(ValueError, match="views"):
        DihedralTTA(plain, 3)


# --- the subtype output ---------------------------------------------------------------------

def test_geojson_classes_figures_as_atypical_or_normal():
    feats = list(detection_features(np.array([[10.0, 10], [50, 50]]), np.array([0.9, 0.8]), np.array([20.0, 30]), 0.25,
                                    atypical=np.array([0.7, 0.2]), atypical_threshold=0.5))
    names = [f["properties"]["classification"]["name"] for f in feats]
    assert names == [ATYPICAL_CLASS[0], NORMAL_CLASS[0]]
    assert feats[0]["properties"]["classification"]["color"] == ATYPICAL_CLASS[1]
    assert feats[1]["properties"]["measurements"]["atypical_score"] == pytest.approx(0.2)
    plain = next(detection_features(np.array([[1.0, 1]]), np.array([0.9]), np.array([20.0]), 0.25))
    assert plain["properties"]["classification"]["name"] == "Mitotic figure"
    assert "atypical_score" not in plain["properties"]["measurements"]


def test_full_recipe_smoke_run_exports_a_subtype_model(tiny_subtype_model_dir):
    model = load_model(tiny_subtype_model_dir)
    assert model.has_subtype and 0 < model.atypical_threshold < 1 and model.stain_reference
    cfg = json.loads((tiny_subtype_model_dir / "model.json").read_text())
    assert cfg["outputs"] == ["mitosis", "atypical"] and cfg["parity"]["decisions_differ"] == 0
    assert cfg["architecture"] == "CompactResNet+SE" and cfg["recipe"]["dgsb"] is True
    metrics = [json.loads(line) for line in (tiny_subtype_model_dir.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and all("subtype_balanced_accuracy" in m and "mean_recall" in m for m in metrics)
    log_free = torch.load(tiny_subtype_model_dir.parent / "run" / "best.pt", weights_only=False)
    assert log_free["val_metrics"]["epoch"] > 1  # the parent-only phase is never the chosen epoch
    assert log_free["child_classes"] == 4


def test_run_writes_subtypes_to_geojson_and_summary(tiny_subtype_model_dir, tmp_path):
    rng = np.random.default_rng(5)
    tiles = [synthetic_field(rng, atypical=i % 2 == 1)[0] for i in range(4)]
    path = tmp_path / "field.png"
    Image.fromarray(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])).save(path)
    out = tmp_path / "out"
    args = ["run", "-q", str(path), "-o", str(out), "--model", str(tiny_subtype_model_dir), "--mpp", "0.25", "--threshold", "0.0"]
    assert main(args) == 0
    row = next(csv.DictReader((out / "summary.csv").open()))
    feats = json.loads((out / "field.geojson").read_text())["features"]
    assert int(row["mitotic_count"]) == len(feats) > 0
    atypical = sum(f["properties"]["classification"]["name"] == ATYPICAL_CLASS[0] for f in feats)
    assert int(row["atypical_count"]) == atypical
    assert float(row["atypical_fraction"]) == pytest.approx(atypical / len(feats), abs=1e-4)
    assert all("atypical_score" in f["properties"]["measurements"] for f in feats)
    # TTA and stain normalisation are settings of the result: a re-run with them redoes the slide
    assert main(args + ["--tta", "8", "--stain-normalise"]) == 0
    rec = json.loads((out / "field.result.json").read_text())
    assert rec["status"] == "ok" and rec["settings"]["backend"].endswith("tta8") and rec["settings"]["stain_normalise"]


def test_a_model_without_stain_reference_refuses_stain_normalise(tiny_model_dir, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    cfg = json.loads((bare / "model.json").read_text())
    cfg.pop("stain_reference", None)
    (bare / "model.json").write_text(json.dumps(cfg))
    img, _ = synthetic_field(np.random.default_rng(0))
    Image.fromarray(img).save(tmp_path / "f.png")
    assert main(["run", "-q", str(tmp_path / "f.png"), "-o", str(tmp_path / "o"), "--model", str(bare), "--mpp", "0.25",
                 "--stain-normalise"]) == 1
    assert "stain reference" in (tmp_path / "o" / "summary.csv").read_text()


# --- recipe settings ------------------------------------------------------------------------

def test_overrides_set_nested_values_with_toml_types():
    cfg = apply_overrides({"train": {"seed": 0}}, ["train.seed=3", "train.select=mean_recall", "model.se=true",
                                                    "model.widths=[8, 16]"])
    assert cfg == {"train": {"seed": 3, "select": "mean_recall"}, "model": {"se": True, "widths": [8, 16]}}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["seed"])


def test_unknown_recipe_options_are_clear_errors(tmp_path):
    from mitoqp.training.train import train

    tr, va = synthetic_fields(tmp_path, 4, "train", 0), synthetic_fields(tmp_path, 2, "validation", 1)
    base = {"model": {"patch": 32, "widths": [8, 8, 16, 16]}, "train": {"epochs": 1, "epoch_samples": 32, "batch": 16}}
    for key, value in (("child_classes", "clusters"), ("select", "auc"), ("stain_aug", "restain")):
        cfg = {"model": base["model"], "train": {**base["train"], key: value}}
        with pytest.raises(ValueError, match=key):
            train(cfg, tr, va, tmp_path / key, log=lambda m: None)


def test_subtype_recipe_picks_the_epoch_by_subtype_auc_and_needs_a_subtype_head(tmp_path):
    """configs/subtype.toml at smoke size: mostly figures in a batch, the epoch of the best atypical AUC."""
    from mitoqp.training.train import load_config, train

    recipe = load_config(ROOT / "configs" / "subtype.toml")
    assert recipe["train"]["select"] == "subtype_auc" and recipe["model"]["subtype"]
    tr, va = synthetic_fields(tmp_path, 24, "train", 0, True), synthetic_fields(tmp_path, 8, "validation", 1, True)
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16], "subtype": True},
           "train": {"epochs": 3, "epoch_samples": 128, "batch": 32, "jitter": 4, "threads": 1, "lr": 0.01,
                     "select": "subtype_auc", "negative_share": 0.1, "subtype_weight": 1.0}}
    best = train(cfg, tr, va, tmp_path / "run", log=lambda m: None)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    aucs = [m["subtype_auc"] for m in metrics]
    assert len(aucs) == 3 and best["subtype_auc"] == max(aucs) and best["epoch"] == 1 + aucs.index(max(aucs))
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert saved["val_metrics"]["epoch"] == best["epoch"] and 0 < saved["atypical_threshold"] < 1
    cfg["model"]["subtype"] = False
    with pytest.raises(ValueError, match="subtype head"):
        train(cfg, tr, va, tmp_path / "no_head", log=lambda m: None)


# --- evaluation and the ablation table ------------------------------------------------------

def fake_report(hpf_test, hpf_ext, macs=33.4e6):
    def one(hpf):
        return {"operating_point": {"hpf_f1": hpf}, "froc_recall_at_fp_per_mm2": {"1": hpf - 0.1, "4": hpf},
                "candidate_sensitivity": {"7.5um": 0.98}, "subtype": {"balanced_accuracy": 0.7}}
    return {"model": {"macs_per_patch": macs}, "sets": {"test/all": one(hpf_test), "external/atnorm-br": one(hpf_ext)},
            "patch_cost": {"ms_per_patch": 0.5}}


def test_ablation_table_pools_seeds(tmp_path, capsys):
    for name, t, e in (("a0", 0.8, 0.5), ("a1", 0.9, 0.6), ("b0", 0.85, 0.7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluation.json").write_text(json.dumps(fake_report(t, e)))
    out = tmp_path / "table.md"
    assert main(["ablation", f"baseline={tmp_path / 'a0'},{tmp_path / 'a1'}", f"full={tmp_path / 'b0'}", "-o", str(out)]) == 0
    table = out.read_text()
    assert "| baseline | 2 | 0.850 (0.800-0.900) | 0.750 (0.700-0.800) | 0.850 (0.800-0.900) |" in table
    assert "| full | 1 | 0.850 |" in table and "AtNorM-Br subtype bal. acc." in table and "| 33.40 |" in table
    assert main(["ablation", "nolabel"]) == 1 and "LABEL=EVAL_DIR" in capsys.readouterr().err


def test_ablation_adds_mean_recall_over_1_to_64_fp_per_mm2_when_every_level_is_there(tmp_path):
    from mitoqp.ablation import ablation_table

    report = fake_report(0.8, 0.5)
    levels = {"0.5": 0.0, "1": 0.5, "2": 0.6, "4": 0.7, "8": 0.8, "16": 0.9, "32": 1.0, "64": 1.0}
    report["sets"]["validation/all"] = {**report["sets"]["test/all"], "froc_recall_at_fp_per_mm2": levels}
    report["sets"]["test/all"]["froc_recall_at_fp_per_mm2"] = {**levels, "64": 0.3}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "evaluation.json").write_text(json.dumps(report))
    header, _, row = ablation_table([f"a={tmp_path / 'a'}"]).splitlines()
    cols = dict(zip(header.split(" | "), row.split(" | ")))
    assert cols["validation mean recall"] == "0.786" and cols["test mean recall"] == "0.686"  # 5.5/7, 4.8/7
    assert "AtNorM-Br mean recall" not in cols  # its FROC lacks levels: no column rather than a wrong mean


def test_ablation_gives_a_held_out_scanner_its_own_columns(tmp_path):
    from mitoqp.ablation import ablation_table

    report = fake_report(0.8, 0.5)
    report["sets"]["holdout/midog21-xr"] = {**report["sets"]["test/all"], "operating_point": {"hpf_f1": 0.42}}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "evaluation.json").write_text(json.dumps(report))
    header, _, row = ablation_table([f"a={tmp_path / 'a'}"]).splitlines()
    cols = dict(zip(header.split(" | "), row.split(" | ")))
    assert cols["held-out midog21-xr HPF-F1"] == "0.420" and cols["test HPF-F1"] == "0.800"


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "ami-br").exists(), reason="../shared/data/ami-br is not present")
def test_evaluate_reports_subtype_and_patch_cost(tiny_subtype_model_dir, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_subtype_model_dir), "--limit", "8", "--bootstrap", "0", "--slides",
                 "--tta", "2", "-o", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    st = report["sets"]["test/all"]["subtype"]
    assert st["figures"] > 0 and 0 <= st["auc"] <= 1
    assert report["patch_cost"]["ms_per_patch"] > 0 and report["patch_cost"]["backend"].endswith("tta2")
    assert report["options"] == {"tta": 2, "stain_normalise": False, "backend": "onnxruntime-cpu+tta2", "limit": 8,
                                 "splits": "validation,test,atnorm-br", "candidates": CandidateParams().to_dict()}
    assert "balanced accuracy" in (out / "evaluation.md").read_text()


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "ami-br").exists(), reason="../shared/data/ami-br is not present")
def test_ensemble_export_averages_members_and_checks_their_hashes(tiny_subtype_model_dir, tmp_path):
    from mitoqp.datasets import read_amibr
    from mitoqp.export.ensemble import export_ensemble
    from mitoqp.patches import extract_patches

    run = tiny_subtype_model_dir.parent / "run"
    val = read_amibr(ROOT.parent / "shared" / "data" / "ami-br", None, {"validation"})[:10]
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in val])
    cfg = export_ensemble([run / "best.pt"] * 2, tmp_path / "ens", patches, val)
    assert len(cfg["members"]) == 2 and not (tmp_path / "ens" / "model.onnx").exists()
    ens = load_model(tmp_path / "ens")
    single = load_model(tiny_subtype_model_dir)
    assert ens.has_subtype and ens.backend.name == "onnxruntime-cpux2"
    np.testing.assert_allclose(ens.backend.predict(patches), single.backend.predict(patches), atol=1e-5)  # same member twice
    with open(tmp_path / "ens" / "member1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_model(tmp_path / "ens")


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "ami-br").exists(), reason="../shared/data/ami-br is not present")
def test_ensemble_thresholds_are_chosen_on_the_candidates_it_will_see(tiny_subtype_model_dir, tmp_path):
    from mitoqp.datasets import read_amibr
    from mitoqp.export.ensemble import export_ensemble
    from mitoqp.export.thresholds import choose_thresholds
    from mitoqp.patches import extract_patches

    run = tiny_subtype_model_dir.parent / "run"
    val = read_amibr(ROOT.parent / "shared" / "data" / "ami-br", None, {"validation"})[:10]
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in val])
    new = {"centre_power": 2.0, "min_area_um2": 6.0}
    chosen = export_ensemble([run / "best.pt"] * 2, tmp_path / "a", patches, val, candidates=new)
    stored = json.loads((tmp_path / "a" / "model.json").read_text())
    assert all(stored["candidates"][k] == v for k, v in new.items())
    again = choose_thresholds(tmp_path / "a", stored, val)  # chosen once more on the stored candidates: the same point
    assert again["threshold"] == pytest.approx(chosen["threshold"])
    later = export_ensemble([run / "best.pt"] * 2, tmp_path / "b", patches, val, candidates=new, choose=False)
    assert "validation_metrics" not in later and later["candidates"] == stored["candidates"]  # left to --rethreshold
    # the command: --candidates and --rethreshold choose once, after the subtype model joins, on the new candidates
    best = str(run / "best.pt")
    assert main(["export", best, best, "-o", str(tmp_path / "c"), "--amibr", str(ROOT.parent / "shared" / "data" / "ami-br"),
                 "--candidates", "centre_power=2", "--rethreshold"]) == 0
    cfg = json.loads((tmp_path / "c" / "model.json").read_text())
    assert cfg["candidates"]["centre_power"] == 2 and "threshold_before" not in cfg["validation_metrics"]
    assert cfg["validation_metrics"]["atypical_threshold_rule"].startswith("bagged")


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "ami-br").exists(), reason="../shared/data/ami-br is not present")
def test_rethreshold_chooses_the_threshold_on_validation_by_the_smoothed_rule(tiny_model_dir, tmp_path):
    import shutil

    from mitoqp.datasets import read_amibr
    from mitoqp.evaluate import run_fields
    from mitoqp.export.thresholds import choose_thresholds
    from mitoqp.metrics import smoothed_threshold

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    val = read_amibr(ROOT.parent / "shared" / "data" / "ami-br", None, {"validation"})[:12]
    config = json.loads((folder / "model.json").read_text())
    before = config["threshold"]
    cfg = choose_thresholds(folder, config, val, atypical=False, again=True)
    outs = run_fields(val, load_model(tiny_model_dir))
    expected = smoothed_threshold([o.match for o in outs], sum(o.area_mm2 for o in outs))["threshold"]
    assert cfg["threshold"] == pytest.approx(expected)
    stored = json.loads((folder / "model.json").read_text())
    assert stored["threshold"] == cfg["threshold"] and load_model(folder).threshold == pytest.approx(expected)
    assert stored["validation_metrics"]["threshold_before"] == before
    assert "epoch" in stored["validation_metrics"]  # the training-time record is kept beside the new point
    again = choose_thresholds(folder, stored, val, atypical=False, again=True)  # the same threshold once more:
    assert again["threshold"] == cfg["threshold"] and again["validation_metrics"]["threshold_before"] == before


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "ami-br").exists(), reason="../shared/data/ami-br is not present")
def test_rethreshold_chooses_the_atypical_threshold_again_too(tiny_subtype_model_dir, tmp_path):
    import shutil

    from mitoqp.datasets import read_amibr
    from mitoqp.evaluate import run_fields
    from mitoqp.export.thresholds import choose_thresholds
    from mitoqp.metrics import bagged_balanced_cut

    folder = tmp_path / "m"
    shutil.copytree(tiny_subtype_model_dir, folder)
    val = read_amibr(ROOT.parent / "shared" / "data" / "ami-br", None, {"validation"})[:24]
    config = json.loads((folder / "model.json").read_text())
    before = config["atypical_threshold"]
    cfg = choose_thresholds(folder, config, val, atypical=True, again=True)
    truth, score = [], []
    for o in run_fields(val, load_model(tiny_subtype_model_dir, subtype_floor=0.0)):
        d = np.hypot(*(o.xy - 64.0).T) if len(o.xy) else np.zeros(0)
        if len(d) and d.min() <= 7.5 / o.field.mpp:
            truth.append(int(o.field.atypical))
            score.append(float(o.atypical[int(np.argmin(d))]))
    bacc, t = bagged_balanced_cut(np.array(score), np.array(truth))
    stored = json.loads((folder / "model.json").read_text())
    assert stored["atypical_threshold"] == pytest.approx(t) == cfg["atypical_threshold"]
    assert stored["validation_metrics"]["subtype_balanced_accuracy"] == pytest.approx(bacc)
    assert stored["validation_metrics"]["atypical_threshold_before"] == before
    assert load_model(folder).atypical_threshold == pytest.approx(t)
    again = choose_thresholds(folder, stored, val, atypical=True, again=True)  # unchanged: the record stays
    assert again["atypical_threshold"] == stored["atypical_threshold"]
    assert again["validation_metrics"]["atypical_threshold_before"] == before


def test_a_second_model_gives_the_subtype_beside_the_detector(tiny_model_dir, tiny_subtype_model_dir, tmp_path):
    import shutil

    from mitoqp.export.onnx_export import attach_subtype

    folder = tmp_path / "joined"
    shutil.copytree(tiny_model_dir, folder)
    rng = np.random.default_rng(0)
    patches = np.stack([synthetic_field(rng, 64, atypical=i % 2 == 1)[0][16:48, 16:48] for i in range(8)])
    cfg = attach_subtype(folder, tiny_subtype_model_dir.parent / "run" / "best.pt", patches)
    assert cfg["outputs"] == ["mitosis", "atypical"] and cfg["subtype_model"]["parity"]["decisions_differ"] == 0
    joined, det, sub = load_model(folder, subtype_floor=0.0), load_model(tiny_model_dir), load_model(tiny_subtype_model_dir)
    assert joined.has_subtype and joined.atypical_threshold == sub.atypical_threshold
    out = joined.backend.predict(patches)
    np.testing.assert_allclose(out[:, 0], det.backend.predict(patches)[:, 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], sub.backend.predict(patches)[:, 1], atol=1e-6)
    # the subtype model is asked only where the detector reaches the floor: every detection keeps its subtype
    floor = float(np.median(out[:, 0]))
    gated = load_model(folder, subtype_floor=floor).backend.predict(patches)
    asked = out[:, 0] >= floor
    assert 0 < asked.sum() < len(asked) and np.isnan(gated[~asked, 1]).all()
    np.testing.assert_allclose(gated[asked], out[asked], atol=1e-6)
    assert not np.isnan(load_model(folder, subtype_floor=floor, tta=2).backend.predict(patches)[:, 0]).any()
    assert joined.sha256 != det.sha256  # a re-run redoes slides done without the subtype model
    with open(folder / "subtype.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_model(folder)


def test_replacing_the_subtype_model_drops_its_stale_precision_variants(tiny_model_dir, tiny_subtype_model_dir, tmp_path):
    """A new subtype model must not run beside the old one's INT8 file, nor count the old one's MACs."""
    import shutil

    from mitoqp.export.onnx_export import attach_subtype

    folder = tmp_path / "joined"
    shutil.copytree(tiny_model_dir, folder)
    patches = np.stack([synthetic_field(np.random.default_rng(i), 64)[0][16:48, 16:48] for i in range(4)])
    ckpt = tiny_subtype_model_dir.parent / "run" / "best.pt"
    first = attach_subtype(folder, ckpt, patches)
    for name in ("model", "subtype"):  # what an earlier `--precision int8` left in the folder
        shutil.copy(folder / f"{name}.onnx", folder / f"{name}.int8.onnx")
    first["precisions"] = {"int8": {"kept": True, "files": {f"{n}.onnx": {"file": f"{n}.int8.onnx", "sha256": "0" * 64}
                                                          for n in ("model", "subtype")}}}
    (folder / "model.json").write_text(json.dumps(first))
    second = attach_subtype(folder, ckpt, patches)
    assert "precisions" not in second and not list(folder.glob("*.int8.onnx"))
    assert second["macs_per_patch"] == first["macs_per_patch"]
    with pytest.raises(ValueError, match="no int8 model"):
        load_model(folder, precision="int8")


def test_export_adds_a_subtype_model_to_an_exported_folder(tiny_model_dir, tiny_subtype_model_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    sub = str(tiny_subtype_model_dir.parent / "run" / "best.pt")
    assert main(["export", "--subtype", sub, "-o", str(folder), "--amibr", str(tmp_path / "none")]) == 0
    assert load_model(folder).has_subtype
    assert main(["export", "-o", str(tmp_path / "empty")]) == 1
    assert main(["export", "--subtype", sub, "-o", str(tmp_path / "empty")]) == 1
    assert "holds no exported model" in capsys.readouterr().err


def test_a_new_detector_carries_over_the_subtype_model_of_an_exported_folder(tiny_model_dir, tiny_subtype_model_dir,
                                                                              tmp_path, capsys):
    """Re-exporting the default's detector keeps its subtype model, whose training checkpoint may be gone."""
    import shutil

    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(tiny_model_dir, old)
    shutil.copytree(tiny_model_dir, new)
    sub = str(tiny_subtype_model_dir.parent / "run" / "best.pt")
    assert main(["export", "--subtype", sub, "-o", str(old), "--amibr", str(tmp_path / "none")]) == 0
    assert main(["export", "--subtype", str(old), "-o", str(new), "--amibr", str(tmp_path / "none")]) == 0
    a, b = json.loads((old / "model.json").read_text()), json.loads((new / "model.json").read_text())
    for key in ("outputs", "class_names", "atypical_threshold", "macs_per_patch"):
        assert a[key] == b[key]
    assert b["subtype_model"]["sha256"] == a["subtype_model"]["sha256"] and b["subtype_model"]["carried_from"] == str(old)
    assert b["subtype_model"]["parity"]["decisions_differ"] == 0
    patches = np.stack([synthetic_field(np.random.default_rng(i), 64)[0][16:48, 16:48] for i in range(6)])
    np.testing.assert_allclose(load_model(new, subtype_floor=0.0).backend.predict(patches),
                               load_model(old, subtype_floor=0.0).backend.predict(patches), atol=1e-6)
    # a folder without one, the folder itself, or a subtype file that no longer matches its record: refused
    assert main(["export", "--subtype", str(tiny_model_dir), "-o", str(new)]) == 1
    assert "has no subtype model" in capsys.readouterr().err
    assert main(["export", "--subtype", str(new), "-o", str(new)]) == 1
    assert "is the folder being exported to" in capsys.readouterr().err
    with open(old / "subtype.onnx", "ab") as f:
        f.write(b"\0")
    assert main(["export", "--subtype", str(old), "-o", str(new)]) == 1
    assert "sha256" in capsys.readouterr().err


def test_several_subtype_models_are_averaged(tiny_model_dir, tiny_subtype_model_dir, tmp_path, capsys):
    """Repeated --subtype: the runtime averages the models' atypical outputs; each file is checked and hashed."""
    import shutil

    import torch

    from mitoqp.export.onnx_export import attach_subtype, attach_subtype_ensemble, main_export

    ckpt = tiny_subtype_model_dir.parent / "run" / "best.pt"
    other = torch.load(ckpt, map_location="cpu", weights_only=False)  # a second, different subtype model
    gen = torch.Generator().manual_seed(0)
    other["state_dict"] = {k: v * (1 + 0.3 * torch.randn(v.shape, generator=gen)) if v.ndim == 4 else v
                           for k, v in other["state_dict"].items()}
    torch.save(other, tmp_path / "other.pt")
    patches = np.stack([synthetic_field(np.random.default_rng(i), 64, atypical=i % 2 == 1)[0][16:48, 16:48]
                        for i in range(8)])
    singles = {}
    for name, source in (("a", ckpt), ("b", tmp_path / "other.pt")):
        shutil.copytree(tiny_model_dir, tmp_path / name)
        singles[name] = attach_subtype(tmp_path / name, source, patches)
    folder = tmp_path / "mean"
    shutil.copytree(tiny_model_dir, folder)
    cfg = attach_subtype_ensemble(folder, [ckpt, tmp_path / "other.pt", tmp_path / "a"], patches)  # a folder's too
    members = cfg["subtype_model"]["members"]
    assert [m["file"] for m in members] == ["subtype0.onnx", "subtype1.onnx", "subtype2.onnx"]
    assert all((folder / f"subtype{i}.pt").exists() for i in range(3)) and not (folder / "subtype.onnx").exists()
    assert members[2]["carried_from"] == str(tmp_path / "a")
    one = int(singles["a"]["subtype_model"]["macs_per_patch"])
    assert cfg["macs_per_patch"] == int(singles["a"]["macs_per_patch"]) + 2 * one
    a, b = (load_model(tmp_path / n, subtype_floor=0.0).backend.predict(patches)[:, 1] for n in "ab")
    assert np.abs(a - b).max() > 1e-3  # the two models differ, so the mean is a test
    out = load_model(folder, subtype_floor=0.0).backend.predict(patches)
    np.testing.assert_allclose(out[:, 1], (2 * a + b) / 3, atol=1e-6)
    assert load_model(folder).sha256 != load_model(tmp_path / "a").sha256
    # FP16 variants of every member file, checked at the ensemble's atypical threshold
    main_export([], folder, None, None, precisions=["fp16"])
    entry = json.loads((folder / "model.json").read_text())["precisions"]["fp16"]
    assert {"subtype0.onnx", "subtype1.onnx", "subtype2.onnx", "model.onnx"} == set(entry["files"])
    # the mean has no threshold of its own: the command asks for --rethreshold; nor is it carried as one model
    two = ["export", "-o", str(folder), "--subtype", str(ckpt), "--subtype", str(tmp_path / "other.pt")]
    assert main(two) == 1 and "--rethreshold" in capsys.readouterr().err
    assert main(["export", "--subtype", str(folder), "-o", str(tmp_path / "b")]) == 1
    assert "averaged subtype model" in capsys.readouterr().err
    with open(folder / "subtype1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_model(folder)
    # replaced by a single subtype model: the members' files go, their cost no longer counts
    single = attach_subtype(folder, ckpt, patches)
    assert not list(folder.glob("subtype[0-9]*")) and (folder / "subtype.onnx").exists()
    assert single["macs_per_patch"] == singles["a"]["macs_per_patch"] and load_model(folder).has_subtype


def test_a_run_asks_the_subtype_model_for_its_detections_and_nothing_else(tiny_model_dir, tiny_subtype_model_dir,
                                                                           tmp_path):
    """The subtype model costs as much per patch as the detector: a run asks it for its detections only."""
    import shutil

    from PIL import Image

    from mitoqp.export.onnx_export import attach_subtype
    from mitoqp.pipeline import Options, analyse_slide
    from mitoqp.runtime.backend import DihedralTTA
    from mitoqp.slide import open_slide

    folder = tmp_path / "joined"
    shutil.copytree(tiny_model_dir, folder)
    rng = np.random.default_rng(3)
    tiles = [synthetic_field(rng, 128, atypical=i % 3 == 0)[0] for i in range(16)]
    Image.fromarray(np.vstack([np.hstack(tiles[r * 4:r * 4 + 4]) for r in range(4)])).save(tmp_path / "f.png")
    attach_subtype(folder, tiny_subtype_model_dir.parent / "run" / "best.pt",
                   np.stack([t[48:80, 48:80] for t in tiles]))
    with open_slide(tmp_path / "f.png") as slide:
        every = analyse_slide(slide, load_model(folder, subtype_floor=0.0), Options(mpp=0.25))
        assert np.isfinite(every.atypical).all()
        t = float(np.median(every.scores))  # half the candidates become detections
        model = load_model(folder, threshold=t)
        assert model.subtype_floor == t and load_model(folder).subtype_floor == model.threshold
        run = analyse_slide(slide, model, Options(mpp=0.25, threshold=t))
        with pytest.raises(ValueError, match="subtype"):  # detections below the floor would lack their subtype
            analyse_slide(slide, model, Options(mpp=0.25, threshold=t / 2))
    np.testing.assert_array_equal(run.xy, every.xy)
    np.testing.assert_array_equal(run.scores, every.scores)
    assert 0 < run.count < len(run.scores)
    np.testing.assert_allclose(run.atypical[run.detected], every.atypical[run.detected], atol=1e-6)
    assert np.isnan(run.atypical[~run.detected]).all()  # never asked
    at = float(np.median(every.atypical[run.detected]))
    assert run.atypical_count(at) == int((run.detected & (every.atypical >= at)).sum()) > 0
    # with TTA the subtype model is asked where the averaged detector score reaches the threshold, over its own views
    patches = np.stack([tile[48:80, 48:80] for tile in tiles] + [tile[:32, :32] for tile in tiles])  # figures, tissue
    det = load_model(folder, tta=4, subtype_floor=0.0).backend.predict(patches)[:, 0]
    t4 = float(np.median(det))
    views = load_model(folder, tta=4, threshold=t4)
    out = views.backend.predict(patches)
    asked = det >= np.float32(t4)
    assert views.subtype_floor == t4 and 0 < asked.sum() < len(asked) and np.isnan(out[~asked, 1]).all()
    subtype_views = DihedralTTA(load_model(folder, subtype_floor=0.0).backend.subtype, 4)
    np.testing.assert_allclose(out[asked, 1], subtype_views.predict(patches[asked])[:, 1], atol=1e-6)
    # `mitoqp run --threshold` loads the model for that threshold: every figure written has its subtype
    run_dir = tmp_path / "out"
    assert main(["run", "-q", str(tmp_path / "f.png"), "-o", str(run_dir), "--model", str(folder), "--mpp", "0.25",
                 "--threshold", repr(t)]) == 0
    feats = json.loads((run_dir / "f.geojson").read_text())["features"]
    assert len(feats) == run.count and all("atypical_score" in f["properties"]["measurements"] for f in feats)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "ami-br").exists(), reason="../shared/data/ami-br is not present")
def test_evaluate_counts_the_candidates_the_model_scores_before_duplicates_are_dropped(tiny_model_dir, tmp_path):
    import shutil

    from mitoqp.candidates import CandidateParams, find_candidates
    from mitoqp.datasets import read_amibr
    from mitoqp.evaluate import markdown, run_fields, summarise
    from mitoqp.stain import hematoxylin

    folder = tmp_path / "m"  # a wider one-figure radius than merging, as the default's (8 um against 6 um)
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**config, "nms_um": 10.0}))
    model = load_model(folder)
    val = read_amibr(ROOT.parent / "shared" / "data" / "ami-br", None, {"validation"})[:40]
    outs = run_fields(val, model)
    params = CandidateParams(**model.config["candidates"])
    own = [len(find_candidates(hematoxylin(f.image()), f.mpp, params)) for f in val]
    # the front end's whole output as the model saw it (the runtime's window pads the field's edge, which can
    # move a blob there, so a field may differ from the bare image by one)
    assert max(abs(o.scored - n) for o, n in zip(outs, own)) <= 1 and abs(sum(o.scored for o in outs) - sum(own)) <= 0.08 * sum(own)
    assert all(o.scored >= len(o.xy) for o in outs) and sum(o.scored for o in outs) > sum(len(o.xy) for o in outs)
    assert all(len(o.scored_xy) == o.scored and all(p in map(tuple, o.scored_xy) for p in map(tuple, o.xy)) for o in outs)
    r = summarise(outs, model.threshold, 0)
    scored = np.mean([o.scored for o in outs])
    assert r["candidates_scored_per_field"] == pytest.approx(scored) and scored > r["candidates_per_field"]
    reach = [bool(len(o.scored_xy)) and np.hypot(*(o.scored_xy - fig).T).min() * o.field.mpp <= 7.5
             for o in outs for fig in o.field.figures]
    assert r["candidate_sensitivity_scored"]["7.5um"] == pytest.approx(np.mean(reach))
    assert np.mean(reach) >= r["candidate_sensitivity"]["7.5um"]
    report = {"model": {"id": "t"}, "threshold": model.threshold, "figure_density_per_mm2": 4.7, "sets": {"validation": r}}
    assert f"validation {scored:.2f}" in markdown(report)


# --- domain-adversarial training (DANN) ------------------------------------------------------


def test_gradient_reversal_and_its_schedule():
    x = torch.ones(3, 4, requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))  # identity forward, reversed and scaled back
    s = [dann_strength(p) for p in np.linspace(0, 1, 11)]
    assert s[0] == 0.0 and s[-1] > 0.99 and all(a < b for a, b in zip(s, s[1:]))


def test_domain_adversary_learns_the_sources_while_reversing_into_the_features():
    torch.manual_seed(0)
    z = torch.cat([torch.randn(32, 8) + 2, torch.randn(32, 8) - 2]).requires_grad_(True)  # two separable sources
    domain = torch.cat([torch.zeros(32), torch.ones(32), ]).long()
    domain[:4] = -1  # a slide's samples: not asked
    adv = DomainAdversary(8, 2)
    opt = torch.optim.SGD(adv.parameters(), lr=0.5)
    first = adv(z, domain, 1.0).item()
    for _ in range(50):
        opt.zero_grad()
        adv(z, domain, 1.0).backward()
        opt.step()
    assert adv(z, domain, 1.0).item() < first / 4  # the classifier tells the sources apart
    z.grad = None
    adv(z, domain, 1.0).backward()
    plain = torch.autograd.grad(torch.nn.functional.cross_entropy(adv.net(z[4:]), domain[4:]), z)[0][4:]
    assert torch.allclose(z.grad[4:], -plain, atol=1e-6) and not z.grad[:4].any()  # the features get the reverse


def test_source_domains_label_field_samples_and_skip_slides(tmp_path):
    import dataclasses

    fields = [dataclasses.replace(f, source=s) for f, s in
              zip(synthetic_fields(tmp_path, 3, "train", 0), ["tupac16", "midog21-xr", "tupac16"])]
    samples = SampleSet(np.zeros((6, 4, 4, 3), np.uint8), np.array([1, 0, 0, 1, 0, 0]), np.zeros(6, bool), np.zeros((6, 4)),
                        np.array([0, 1, 2, 2, 0, 0]), np.zeros((6, 2)), np.array([0, 0, 0, 0, 1, 0], bool))
    domains, names = source_domains(samples, fields, 5)  # the sixth sample came from beyond the fields
    assert names == ["midog21-xr", "tupac16"]
    assert domains.tolist() == [1, 0, 1, 1, -1, -1]


def test_tiny_run_with_the_domain_adversary_trains_and_exports_without_it(tmp_path):
    import dataclasses

    from mitoqp.export.onnx_export import export_model
    from mitoqp.patches import extract_patches
    from mitoqp.training.train import train

    tr = [dataclasses.replace(f, source=("a" if i % 2 else "b")) for i, f in enumerate(synthetic_fields(tmp_path, 16, "train", 0))]
    va = synthetic_fields(tmp_path, 4, "validation", 1)
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16], "se": True},
           "train": {"epochs": 2, "epoch_samples": 128, "batch": 32, "jitter": 4, "threads": 1, "domain_weight": 0.1}}
    logs = []
    train(cfg, tr, va, tmp_path / "run", log=logs.append)
    assert any(line.startswith("domain adversary (weight 0.1) over 2 sources: a ") for line in logs)
    assert sum("domain loss" in line and "(chance 0.693)" in line for line in logs) == 2  # one per epoch
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert not any("adversary" in k for k in ckpt["state_dict"])  # a training device only
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    assert export_model(tmp_path / "run" / "best.pt", tmp_path / "model", patches)["parity"]["decisions_differ"] == 0
    with pytest.raises(ValueError, match="two sources"):
        train(cfg, [dataclasses.replace(f, source="a") for f in tr], va, tmp_path / "one", log=lambda m: None)
