"""UTS: the weakly supervised FCN, its images, the teacher's distillation, and the recipe end to end at smoke size."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_fields  # noqa: E402
from mitoqp.training.fcn import WeakFCN, receptive_radius  # noqa: E402
from mitoqp.training.uts import WeakSet, distil, field_images, roc_operating_threshold  # noqa: E402


def test_fcn_gives_maps_at_stride_4_and_a_max_image_logit():
    model = WeakFCN((8, 8, 16, 16)).eval()
    x = torch.rand(2, 3, 64, 48) * 255
    maps = model(x)
    assert maps.shape == (2, 1, 16, 12) and ((maps >= 0) & (maps <= 1)).all()
    logit = model.image_logits(x)
    assert logit.shape == (2,) and torch.allclose(torch.sigmoid(logit / 4), maps.amax(dim=(1, 2, 3)), atol=1e-6)
    # scores keep their order where sigmoid(logit) rounds to 1 in float32
    big = torch.tensor([20.0, 30.0, 40.0])
    assert torch.sigmoid(big).unique().numel() == 1 and torch.sigmoid(big / 4).unique().numel() == 3
    assert 20 < receptive_radius(model) < 64


def test_smoothed_maps_average_the_logits_before_the_sigmoid():
    from mitoqp.training.fcn import build_fcn

    torch.manual_seed(0)
    plain = build_fcn({"widths": [8, 8, 16, 16]}).eval()
    smooth = build_fcn({"widths": [8, 8, 16, 16], "smooth": 3}).eval()
    smooth.load_state_dict(plain.state_dict())  # the same weights: only the score changes
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        z = plain.logit_maps(x)
        expected = torch.sigmoid(torch.nn.functional.avg_pool2d(z, 3, 1, 1, count_include_pad=False) / 4)
        assert smooth(x).shape == plain(x).shape and torch.allclose(smooth(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="odd number"):
        build_fcn({"smooth": 2})


def test_receptive_radius_of_a_dead_centre_is_the_probes_half_width():
    """A trained network whose centre passes no gradient once crashed a 72-epoch RDLM run's check (numel 0)."""
    model = WeakFCN((8, 8, 16, 16))
    live = receptive_radius(model)
    with torch.no_grad():
        model.classifier.weight.zero_()  # no gradient reaches the input from any position
    assert receptive_radius(model, size=96) == 48 > live


def test_field_images_hold_the_figure_or_keep_clear_of_every_figure(tmp_path):
    fields = synthetic_fields(tmp_path, 12, "train", 0)
    ws = field_images(fields, 48, np.random.default_rng(0), per_field=2)
    pos, neg = ws.labels == 1, ws.labels == 0
    assert pos.sum() == 24 and 0 < neg.sum() <= 24 and ws.images.shape[1:] == (48, 48, 3)
    for lab, figs in zip(ws.labels, ws.figures):
        inside = np.all((figs >= 12) & (figs <= 36), axis=1) if len(figs) else np.zeros(0, bool)
        if lab == 1:
            assert inside.any()  # the field's figure at least 12 px inside
        else:
            assert len(figs) == 0


class MapModel(torch.nn.Module):
    """Fixed probability maps (a teacher whose objects sit where the test puts them)."""

    stride = 4

    def __init__(self, maps):
        super().__init__()
        self.maps = torch.from_numpy(maps)

    def forward(self, x):
        return self.maps[: len(x)]


def test_distillation_keeps_positives_whose_teacher_object_meets_a_figure():
    maps = np.zeros((3, 1, 12, 12), np.float32)
    maps[0, 0, 5:7, 5:7] = 0.9  # object centre (5.5, 5.5) -> 23.5 px: on the figure
    maps[1, 0, 0:2, 9:11] = 0.9  # object at (9.5, 0.5) -> (39.5, 3.5): 25 px from the figure
    ws = WeakSet(np.zeros((3, 48, 48, 3), np.uint8), np.ones(3, np.int64),
                 [np.array([[24.0, 24.0]]), np.array([[24.0, 24.0]]), np.array([[24.0, 24.0]])])
    assert distil(MapModel(maps), ws, 0.5, tau_px=30 / 4).tolist() == [True, False, False]  # the third: no object


def test_roc_operating_point_separates_the_classes():
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert roc_operating_threshold(labels, np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])) == pytest.approx(0.6)


def test_uts_recipe_trains_exports_and_runs_as_a_dense_model(tmp_path):
    from PIL import Image

    from mitoqp.cli import main
    from mitoqp.export.onnx_export import export_model
    from mitoqp.patches import extract_patches
    from mitoqp.training.uts import train_uts

    tr, va = synthetic_fields(tmp_path, 16, "train", 0), synthetic_fields(tmp_path, 6, "validation", 1)
    cfg = {"method": "uts", "model": {"image": 48, "widths": [8, 8, 16, 16]}, "dense": {"tile": 128},
           "train": {"epochs": 2, "epoch_samples": 64, "batch": 16, "threads": 1, "lr": 0.01}}
    logs = []
    best = train_uts(cfg, tr, va, tmp_path / "run", logs.append)
    assert (tmp_path / "run" / "teacher.pt").exists() and (tmp_path / "run" / "best.pt").exists()
    assert any("distillation" in m for m in logs) and len(best["distilled_positives"]) == 2
    # a run that starts from the finished teacher trains the very same student
    again = train_uts({**cfg, "train": {**cfg["train"], "teacher_from": str(tmp_path / "run" / "teacher.pt")}},
                      tr, va, tmp_path / "resumed", logs.append)
    assert not any(m.startswith("teacher epoch") for m in logs[logs.index(next(m for m in logs if "teacher from" in m)):])
    first, second = (torch.load(tmp_path / d / "best.pt", weights_only=False)["state_dict"] for d in ("run", "resumed"))
    assert all(torch.equal(first[k], second[k]) for k in first) and again["mean_recall"] == best["mean_recall"]
    from mitoqp.training.recipe import check_recipe

    check_recipe({"train": {"teacher_from": "runs/x/teacher.pt"}}, tmp_path / "uts.toml")  # `--set` reaches it
    with pytest.raises(ValueError, match="not a UTS teacher"):
        train_uts({**cfg, "train": {**cfg["train"], "teacher_from": str(tmp_path / "run" / "best.pt")}},
                  tr, va, tmp_path / "bad", logs.append)
    patches = np.concatenate([extract_patches(f.image(), f.figures, 128) for f in va])
    config = export_model(tmp_path / "run" / "best.pt", tmp_path / "model", patches, {"id": "uts-smoke"})
    assert config["kind"] == "dense" and config["parity"]["decisions_differ"] == 0
    assert config["dense"]["output_stride"] == 4 and config["dense"]["context_px"] % 4 == 0
    assert 0 < config["dense"]["context_px"] < 64
    Image.fromarray(np.hstack([va[0].image(), va[1].image()])).save(tmp_path / "field.png")
    assert main(["run", "-q", str(tmp_path / "field.png"), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "model"),
                 "--mpp", "0.25"]) == 0
    rec = json.loads((tmp_path / "out" / "field.result.json").read_text())
    assert rec["status"] == "ok" and rec["candidates"] >= rec["mitotic_count"] >= 0
    assert json.loads((tmp_path / "out" / "field.geojson").read_text())["type"] == "FeatureCollection"
    from mitoqp.runtime.model import load_model

    ort, pt = load_model(tmp_path / "model"), load_model(tmp_path / "model", backend="torch")
    x = patches[:5]
    assert np.abs(ort.backend.predict(x) - pt.backend.predict(x)).max() < 1e-5


def test_point_labels_move_with_the_strong_augmentation():
    """The distortions move each figure point with the pixels; the centre map then follows the same flips."""
    from mitoqp.training.uts import StrongAugment, point_batch

    rng = np.random.default_rng(0)
    images, figures = np.zeros((6, 48, 48, 3), np.uint8), []
    for i in range(6):
        x, y = rng.integers(12, 36, 2)
        images[i, y - 3:y + 3, x - 3:x + 3] = 255
        figures.append(np.array([[x - 0.5, y - 0.5]]))
    aug = StrongAugment(0)
    moved_images, moved = aug.distort_points(images, figures)
    for im, pts in zip(moved_images, moved):
        ys, xs = np.nonzero(im[..., 0] > 128)
        assert np.hypot(xs.mean() - pts[0, 0], ys.mean() - pts[0, 1]) < 4  # 1 um; targets reach 3 um
    out, target, weight = point_batch(images, figures, aug, rng, 4, 3 / 0.25, 6 / 0.25)
    assert out.shape == images.shape and target.shape == weight.shape == (6, 12, 12)
    for im, t in zip(out, target):  # the map's positives lie on the (moved, flipped) blob
        ys, xs = np.nonzero(t > 0)
        by, bx = np.nonzero(im[..., 0] > 128)
        assert len(xs) and np.hypot(xs.mean() * 4 + 1.5 - bx.mean(), ys.mean() * 4 + 1.5 - by.mean()) < 4


def test_glass_edges_whiten_one_side_and_stay_clear_of_every_figure():
    from mitoqp.training.uts import glass_edges

    rng = np.random.default_rng(0)
    images = np.full((200, 48, 48, 3), 100, np.uint8)
    figures = [np.array([[rng.uniform(12, 36), rng.uniform(12, 36)]]) if i % 2 else np.zeros((0, 2)) for i in range(200)]
    out = glass_edges(images, figures, 1.0, rng, clear_px=6)
    assert (images == 100).all()  # a copy
    cut = 0
    for im, figs in zip(out, figures):
        white = (im == 255).all(axis=2)
        if not white.any():
            continue
        cut += 1
        cols, rows = white.all(axis=0), white.all(axis=1)
        band = cols if cols.any() else rows  # one straight band from one side
        assert white.sum() == band.sum() * 48 and (band[0] or band[-1]) and 6 <= band.sum() <= 24
        idx = np.flatnonzero(band)
        assert idx.max() - idx.min() + 1 == len(idx)
        for x, y in figs:
            c = x if cols.any() else y
            assert np.abs(idx + 0.5 - c).min() >= 6  # the figure and its surroundings stay tissue
    assert cut > 150
    assert (glass_edges(images, figures, 0.0, rng, 6) == images).all()


def test_the_training_check_runs_each_field_in_glass_as_the_runtime_does(tmp_path):
    from mitoqp.training.uts import context_px, field_maps

    torch.manual_seed(0)
    model = WeakFCN((8, 8, 16, 16)).eval()
    fields = synthetic_fields(tmp_path, 2, "validation", 0)
    maps = field_maps(model, fields, glass_px=context_px(model))
    with torch.no_grad():
        bare = model(torch.from_numpy(np.stack([f.image() for f in fields])).permute(0, 3, 1, 2).float())[:, 0].numpy()
    assert maps[0].shape == bare[0].shape
    r = context_px(model) // 4
    inner = slice(r, bare.shape[1] - r)
    assert np.allclose(maps[0][inner, inner], bare[0][inner, inner], atol=1e-6)  # aligned: same pixels seen
    assert not np.allclose(maps[0], bare[0], atol=1e-4)  # the edges see glass, not the network's zero padding


def test_uts_recipe_with_point_labels_trains_one_model_without_distillation(tmp_path):
    from mitoqp.training.uts import train_uts

    tr, va = synthetic_fields(tmp_path, 12, "train", 0), synthetic_fields(tmp_path, 4, "validation", 1)
    cfg = {"method": "uts", "model": {"image": 48, "widths": [8, 8, 16, 16]}, "dense": {"tile": 128},
           "train": {"epochs": 1, "epoch_samples": 32, "batch": 16, "threads": 1, "lr": 0.01, "labels": "points",
                     "glass_share": 0.3}}
    logs = []
    best = train_uts(cfg, tr, va, tmp_path / "run", logs.append)
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "teacher.pt").exists()
    assert any("nothing to distil" in m for m in logs) and not any("distillation at" in m for m in logs)
    assert np.isfinite(best["loss"]) and "distilled_positives" not in best
    cfg["train"]["labels"] = "boxes"
    with pytest.raises(ValueError, match="train.labels"):
        train_uts(cfg, tr, va, tmp_path / "run2", logs.append)
    cfg["train"]["labels"] = "image"
    with pytest.raises(ValueError, match="glass_share"):
        train_uts(cfg, tr, va, tmp_path / "run3", logs.append)
