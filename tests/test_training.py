"""Training, export and the training traps: tiny runs in seconds, parity of the exported graph."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import AMIBR, MIDOG_JSON, needs_data, synthetic_fields  # noqa: E402
from mitoqp.export.onnx_export import export_model, load_checkpoint, parity  # noqa: E402
from mitoqp.patches import PAD_VALUE, extract_patches  # noqa: E402
from mitoqp.runtime.model import load_model  # noqa: E402
from mitoqp.training.augment import augment_batch, match_borders, scaled_views, zoom_windows  # noqa: E402
from mitoqp.training.train import focal_loss, train, train_from_config  # noqa: E402


def test_tiny_training_lowers_the_loss_and_exports(tmp_path):
    tr, va = synthetic_fields(tmp_path, 24, "train", 0), synthetic_fields(tmp_path, 8, "validation", 1)
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16]},
           "train": {"epochs": 4, "epoch_samples": 256, "batch": 32, "jitter": 4, "threads": 1, "lr": 0.01}}
    best = train(cfg, tr, va, tmp_path / "run", log=lambda m: None)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert best["auc"] > 0.9
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    config = export_model(tmp_path / "run" / "best.pt", tmp_path / "model", patches)
    assert config["parity"]["decisions_differ"] == 0 and config["parity"]["max_abs_diff"] < 1e-4
    model = load_model(tmp_path / "model")
    assert model.patch == 32 and model.mpp == 0.25 and 0 <= model.threshold <= 1


def test_training_device_auto_takes_a_gpu_only_where_torch_sees_one(monkeypatch):
    from mitoqp.training.train import training_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("auto").type == "cpu" and training_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        training_device("cuda")
    with pytest.raises(ValueError, match="train.device"):
        training_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device("auto").type == "cuda" and training_device("cpu").type == "cpu"


def test_device_setting_leaves_a_cpu_run_as_it_was(tmp_path, monkeypatch):
    """On a machine without a GPU, "auto" and "cpu" train the same weights: the device moves nothing else."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tr, va = synthetic_fields(tmp_path, 12, "train", 0), synthetic_fields(tmp_path, 4, "validation", 1)
    runs = []
    for device in ("auto", "cpu"):
        cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16], "se": True, "subtype": True},
               "train": {"epochs": 1, "epoch_samples": 64, "batch": 32, "jitter": 4, "threads": 1, "device": device,
                         "child_classes": "labels", "center_weight": 0.01}}
        runs.append(train(cfg, tr, va, tmp_path / device, log=lambda m: None))
        assert torch.load(tmp_path / device / "best.pt", weights_only=False)["state_dict"]["head.weight"].device.type == "cpu"
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["auc"] == runs[1]["auc"]


def test_prefetched_batches_train_the_same_weights(tmp_path):
    """train.prefetch only moves the augmentation to a worker thread: the same draws, the same weights, also
    across the second phase of DGSB, whose sampler changes between epochs."""
    tr, va = synthetic_fields(tmp_path, 12, "train", 0), synthetic_fields(tmp_path, 4, "validation", 1)
    weights = []
    for prefetch in (True, False):
        cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16], "se": True},
               "train": {"epochs": 3, "epoch_samples": 64, "batch": 32, "jitter": 4, "threads": 1, "prefetch": prefetch,
                         "scale_jitter": 0.15, "dgsb": True, "phase1_epochs": 1, "dgsb_clusters": 2,
                         "save_every": 3}}
        train(cfg, tr, va, tmp_path / str(prefetch), log=lambda m: None)
        weights.append(torch.load(tmp_path / str(prefetch) / "epoch003.pt", weights_only=False)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_dense_recipes_refuse_a_gpu_they_would_not_use(tmp_path):
    from mitoqp.training.dense_run import start_dense

    with pytest.raises(ValueError, match="dense methods"):
        start_dense({"train": {"device": "cuda"}}, tmp_path / "run")
    with pytest.raises(ValueError, match="train.init .* dense methods .* from scratch"):
        start_dense({"train": {"init": "mitoqp/models/default"}}, tmp_path / "run")
    assert start_dense({"train": {"device": "auto", "threads": 1}}, tmp_path / "run").seed == 0


def test_an_unavailable_device_stops_training_before_any_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "r.toml"
    cfg.write_text('[data]\namibr = "/nonexistent"\n[train]\ndevice = "cuda"\n')
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train_from_config(cfg, tmp_path / "run")
    cfg.write_text('method = "rdlm"\n[data]\namibr = "/nonexistent"\n[train]\ndevice = "cuda"\n')
    with pytest.raises(ValueError, match="dense methods"):
        train_from_config(cfg, tmp_path / "run")


def test_exported_graph_matches_pytorch_on_other_batch_sizes(tiny_model_dir):
    ckpt = next(tiny_model_dir.parent.glob("run/best.pt"))
    model, meta = load_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    for n in (1, 7, 64):
        check = parity(model, tiny_model_dir / "model.onnx", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), meta["threshold"])
        assert check["max_abs_diff"] < 1e-4 and check["decisions_differ"] == 0


def test_tampered_model_is_refused(tiny_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(tiny_model_dir, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_model(bad)


def test_focal_loss_reduces_to_weighted_cross_entropy():
    logits, target = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert focal_loss(logits, target, 0.0, 0.5).item() == pytest.approx(0.5 * bce.item(), rel=1e-5)
    assert focal_loss(logits, target, 2.0, 0.5) < focal_loss(logits, target, 0.0, 0.5)


def test_positives_get_the_padding_of_negatives():
    crops = np.zeros((4, 10, 10, 3), np.uint8)
    labels = np.array([1, 1, 0, 0], np.float32)
    valid = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [3, 0, 10, 10], [3, 0, 10, 10]])
    out = match_borders(crops, labels, valid, np.random.default_rng(0), p=1.0)
    assert np.all(out[:2, :, :3] == PAD_VALUE) and np.all(out[:2, :, 3:] == 0)
    assert np.all(out[2:] == 0)  # negatives untouched


def test_a_window_of_the_patch_size_is_a_plain_shifted_crop():
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 40, 40))).float()
    out = zoom_windows(crops, 32, torch.full((2,), 32.0), torch.tensor([[3.0, -2.0], [0.0, 0.0]]))
    assert torch.allclose(out[0], crops[0, :, 4 - 2:36 - 2, 4 + 3:36 + 3], atol=0.01)  # x right by 3, y up by 2
    assert torch.allclose(out[1], crops[1, :, 4:36, 4:36], atol=0.01)


def _disk_crops(n: int, size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    crops = np.full((n, size, size, 3), 230, np.uint8)
    crops[:, np.hypot(yy, xx) <= radius] = 40  # a dark figure at the centre of every crop
    return crops


def test_scale_jitter_magnifies_and_shrinks_within_its_range_and_keeps_the_figure_centred():
    patch, radius, scale = 48, 8.0, 0.15
    views = scaled_views(_disk_crops(400, 64, radius), patch, scale, np.random.default_rng(1)).numpy()
    dark = views[:, 0] < 135
    ratio = np.sqrt(dark.sum(axis=(1, 2)) / (np.pi * radius ** 2))  # apparent radius / true radius
    assert ratio.min() < 0.93 and ratio.max() > 1.07  # both ways, not only one
    assert ratio.min() > 1 / (1 + scale) - 0.05 and ratio.max() < 1 + scale + 0.05
    yy, xx = np.mgrid[:patch, :patch]
    cy = (dark * yy).sum(axis=(1, 2)) / dark.sum(axis=(1, 2)) - (patch - 1) / 2
    cx = (dark * xx).sum(axis=(1, 2)) / dark.sum(axis=(1, 2)) - (patch - 1) / 2
    assert np.abs(cy).max() <= 8.5 * (1 + scale) and np.abs(cx).max() <= 8.5 * (1 + scale)
    assert views.min() >= 0 and views.max() <= 255


def test_without_scale_jitter_the_batch_is_what_it_always_was():
    crops = _disk_crops(16, 64, 8.0)
    cfg = {"stain_sigma": 0.0, "stain_bias": 0.0, "brightness": 0.0, "contrast": 0.0}
    plain = augment_batch(crops, 48, cfg, np.random.default_rng(3), torch.Generator().manual_seed(3))
    zero = augment_batch(crops, 48, {**cfg, "scale_jitter": 0.0}, np.random.default_rng(3), torch.Generator().manual_seed(3))
    scaled = augment_batch(crops, 48, {**cfg, "scale_jitter": 0.15}, np.random.default_rng(3), torch.Generator().manual_seed(3))
    assert torch.equal(plain, zero) and not torch.equal(plain, scaled)
    assert scaled.shape == plain.shape == (16, 3, 48, 48)
    with pytest.raises(ValueError, match="scale_jitter"):
        augment_batch(crops, 48, {"scale_jitter": -0.1}, np.random.default_rng(3), torch.Generator())

    from pathlib import Path

    from mitoqp.training.recipe import check_recipe
    from mitoqp.training.train import apply_overrides, load_config

    recipe = Path(__file__).parent.parent / "configs" / "baseline.toml"
    check_recipe(apply_overrides(load_config(recipe), ["train.scale_jitter=0.15"]), recipe)  # a recipe option


@needs_data
def test_tiny_training_run_on_real_fields(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'[data]\namibr = "{AMIBR}"\nmidog_json = "{MIDOG_JSON}"\nlimit_fields = 40\n'
                   '[model]\npatch = 64\nwidths = [8, 16, 16, 32]\n[train]\nepochs = 2\nepoch_samples = 256\nbatch = 64\nthreads = 2\n')
    best = train_from_config(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "train.log").exists()
    assert (tmp_path / "run" / "config.toml").read_text() == cfg.read_text()
    assert 0 <= best["threshold"] <= 1 and best["auc"] > 0.6
    assert "seed 0, 2 PyTorch threads, torch " in (tmp_path / "run" / "train.log").read_text()  # what repeats the run


def test_samples_from_a_lab_annotated_slide(tmp_path):
    """QuPath points on a slide become positives; other candidates negatives; a point no candidate finds is added."""
    from conftest import paint_blob, stain_rgb
    from mitoqp.candidates import CandidateParams
    from mitoqp.synthetic_slide import write_svs_like
    from mitoqp.training.samples import slide_samples

    img = np.empty((700, 900, 3), np.uint8)
    img[:] = stain_rgb(0.02, 0.25)
    figures = [(150.0, 150.0), (600.0, 400.0)]
    for x, y in figures:
        paint_blob(img, x, y, 8, 8, 1.1)
    for x, y in [(400, 150), (150, 500), (750, 600), (300, 330)]:
        paint_blob(img, x, y, 11, 7, 0.5)
    path = tmp_path / "lab.svs"
    write_svs_like(path, lambda x, y, w, h: img[y:y + h, x:x + w], 900, 700, 0.25, tile=256, levels=1, compression="zlib")
    points = tmp_path / "points.geojson"
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
              "properties": {"classification": {"name": "Mitotic figure", "color": [255, 0, 0]}}}
             for x, y in figures + [(820.0, 80.0)]]  # the last one lies on empty stroma: no candidate there
    points.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    from mitoqp.datasets import read_qupath_points

    s = slide_samples(path, None, CandidateParams(), 112, figures=read_qupath_points(points))
    assert int((s.labels == 1).sum()) == 3 and int((s.labels == 0).sum()) == 4
    assert s.crops.shape[1:] == (112, 112, 3) and s.from_slide.sum() == 4
    # a region leaves out the right-hand half: one figure and one nucleus fewer, the stroma point too
    half = slide_samples(path, None, CandidateParams(), 112, region=[0, 0, 0.5, 1], figures=read_qupath_points(points))
    assert int((half.labels == 1).sum()) == 1 and int((half.labels == 0).sum()) == 3


@needs_data
def test_training_sees_the_candidates_the_runtime_finds():
    from mitoqp.datasets import read_amibr
    from mitoqp.pipeline import Options, halo_for, prepare, window_candidates
    from mitoqp.slide import ImageField
    from mitoqp.training.samples import field_candidates
    from mitoqp.candidates import CandidateParams

    params = CandidateParams()
    for f in read_amibr(AMIBR, MIDOG_JSON, {"validation"})[:40]:
        with ImageField(f.path) as slide:
            prep = prepare(slide, 0.25, halo_for(96, params), Options(mpp=0.25, use_tissue_mask=False))
            runtime = np.concatenate([win.to_level0(c.xy) for win, c in window_candidates(slide, prep, params, 1)])
        train_side = field_candidates(f.image(), 0.25, params)
        np.testing.assert_allclose(np.sort(train_side, axis=0), np.sort(runtime, axis=0), atol=1e-6)


def test_samples_from_a_lab_annotated_field_image(tmp_path):
    """A lab's own 40x field (PNG) with QuPath points trains like a slide: give its resolution."""
    from conftest import paint_blob, stain_rgb
    from mitoqp.candidates import CandidateParams
    from mitoqp.datasets import read_qupath_points
    from mitoqp.training.samples import slide_samples
    from PIL import Image

    img = np.empty((300, 400, 3), np.uint8)
    img[:] = stain_rgb(0.02, 0.25)
    paint_blob(img, 100, 100, 8, 8, 1.1)
    for x, y in [(300, 80), (250, 220)]:
        paint_blob(img, x, y, 11, 7, 0.5)
    Image.fromarray(img).save(tmp_path / "field.png")
    (tmp_path / "points.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [100, 100]},
         "properties": {"classification": {"name": "Mitotic figure", "color": [255, 0, 0]}}}]}))
    s = slide_samples(tmp_path / "field.png", 0.25, CandidateParams(), 112, figures=read_qupath_points(tmp_path / "points.geojson"))
    assert int((s.labels == 1).sum()) == 1 and int((s.labels == 0).sum()) == 2


def test_a_held_out_source_is_recorded_in_the_exported_model(tmp_path):
    tr, va = synthetic_fields(tmp_path, 16, "train", 0), synthetic_fields(tmp_path, 8, "validation", 1)
    cfg = {"data": {"hold_out": ["midog21-xr"]}, "model": {"patch": 32, "widths": [8, 8, 16, 16]},
           "train": {"epochs": 1, "epoch_samples": 128, "batch": 32, "jitter": 4, "threads": 1}}
    train(cfg, tr, va, tmp_path / "run", log=lambda m: None)
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    config = export_model(tmp_path / "run" / "best.pt", tmp_path / "model", patches)
    assert config["held_out_sources"] == ["midog21-xr"]
    assert config["training_data"].endswith("without MIDOG21 Hamamatsu XR")


@needs_data
def test_a_held_out_scanner_is_neither_trained_on_nor_chosen_by(tmp_path, monkeypatch):
    import mitoqp.training.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, tr, va, *a: seen.update(train=tr, validation=va) or {})
    cfg = tmp_path / "held.toml"
    cfg.write_text(f'[data]\namibr = "{AMIBR}"\nmidog_json = "{MIDOG_JSON}"\nhold_out = ["midog21-xr"]\n')
    train_from_config(cfg, tmp_path / "run")
    assert len(seen["train"]) == 3169 - 398 and len(seen["validation"]) == 291 - 14
    assert not any(f.source == "midog21-xr" for f in seen["train"] + seen["validation"])
    assert "holding out midog21-xr: 412 fields" in (tmp_path / "run" / "train.log").read_text()
    cfg.write_text(f'[data]\namibr = "{AMIBR}"\nhold_out = ["midog21-gt450"]\n')
    with pytest.raises(ValueError, match="unknown source"):
        train_from_config(cfg, tmp_path / "run2")


def _augment_batch_applies(cfg: dict) -> None:
    """The recipe passes an augmentation through: the same seed gives the same batch, and not the plain one."""
    crops = _disk_crops(8, 64, 8.0)
    a = augment_batch(crops, 48, cfg, np.random.default_rng(3), torch.Generator().manual_seed(3))
    b = augment_batch(crops, 48, cfg, np.random.default_rng(3), torch.Generator().manual_seed(3))
    c = augment_batch(crops, 48, {}, np.random.default_rng(3), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_jpeg_jitter_recompresses_the_share_it_is_given_and_nothing_else():
    from mitoqp.training.augment import jpeg_jitter

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (64, 3, 32, 32)).astype(np.float32))
    assert jpeg_jitter(x, 0.0, 50, np.random.default_rng(1)) is x  # off: the same tensor
    y = jpeg_jitter(x, 0.5, 30, np.random.default_rng(1))
    changed = (y != x).flatten(1).any(1)
    assert 16 <= int(changed.sum()) <= 48  # about half, drawn per patch
    assert y.min() >= 0 and y.max() <= 255 and torch.equal(y, y.round())
    # JPEG at quality 95 of a smooth picture stays close to it; at 1..95 on noise it cannot
    smooth = torch.full((4, 3, 32, 32), 120.0)
    assert (jpeg_jitter(smooth, 1.0, 95, rng) - smooth).abs().max() <= 2
    with pytest.raises(ValueError, match="jpeg_quality"):
        jpeg_jitter(x, 0.5, 0, rng)
    _augment_batch_applies({"jpeg_p": 1.0, "jpeg_quality": 40})


def test_amplitude_mix_keeps_each_patch_phase_and_moves_its_amplitude_towards_a_partner():
    import torch.nn.functional as F

    from mitoqp.training.augment import amplitude_mix

    noise = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    soft = F.avg_pool2d(F.pad(noise[:1], (2, 2, 2, 2), mode="circular"), 5, stride=1)  # blurred: little fine detail
    x = torch.cat([128 + 40 * soft, 128 + 15 * noise[1:]])  # a soft texture and a sharp one, far from 0 and 255
    assert amplitude_mix(x, 0.0, 1.0, torch.Generator().manual_seed(0)) is x  # off: the same tensor, no draw
    moved = 0
    for seed in range(12):
        y = amplitude_mix(x, 1.0, 1.0, torch.Generator().manual_seed(seed))
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255
        fx, fy = torch.fft.fft2(x.double()), torch.fft.fft2(y.double())
        low, high = torch.minimum(fx[0].abs(), fx[1].abs()), torch.maximum(fx[0].abs(), fx[1].abs())
        assert bool(((fy.abs() >= low - 1e-2) & (fy.abs() <= high + 1e-2)).all())  # between its own and the partner's
        strong = fx.abs() > 1.0  # where the phase is defined, it is the patch's own
        turn = torch.remainder(fy.angle() - fx.angle() + np.pi, 2 * np.pi) - np.pi
        assert float(turn[strong & (fy.abs() > 1.0)].abs().max()) < 1e-3
        moved += int(not torch.allclose(y, x, atol=0.5))
    assert moved >= 4  # a partner other than itself, at a share above nothing, most of the time
    with pytest.raises(ValueError, match="amp_mix_strength"):
        amplitude_mix(x, 0.5, 1.5, torch.Generator())
    _augment_batch_applies({"amp_mix_p": 1.0, "amp_mix_strength": 1.0})

    from pathlib import Path

    from mitoqp.training.recipe import check_recipe
    from mitoqp.training.train import apply_overrides, load_config

    recipe = Path(__file__).parent.parent / "configs" / "baseline.toml"
    check_recipe(apply_overrides(load_config(recipe), ["train.amp_mix_p=0.5", "train.amp_mix_strength=1.0"]), recipe)


def test_fine_tuning_starts_from_the_given_model_and_refuses_another_network(tmp_path, tiny_model_dir):
    from mitoqp.training.model import build_model
    from mitoqp.training.train import start_from

    source = torch.load(tiny_model_dir / "model.pt", map_location="cpu", weights_only=False)
    model = build_model({"patch": 32, "widths": [8, 8, 16, 16]}, 0)
    assert not all(torch.equal(v, source["state_dict"][k]) for k, v in model.state_dict().items())
    said = []
    start_from(model, str(tiny_model_dir), said.append)  # an exported folder (its model.pt) or a best.pt
    assert all(torch.equal(v, source["state_dict"][k]) for k, v in model.state_dict().items())
    assert said == [f"weights from {tiny_model_dir}"]
    with pytest.raises(ValueError, match="train.init: .* another network"):
        start_from(build_model({"patch": 32, "widths": [8, 8, 16, 32]}, 0), str(tiny_model_dir), said.append)
    with pytest.raises(ValueError, match='train.init: .*model.input_norm = "global", this recipe has "patch"'):
        start_from(build_model({"patch": 32, "widths": [8, 8, 16, 16], "input_norm": "patch"}, 0), str(tiny_model_dir),
                   said.append)
    with pytest.raises(ValueError, match="train.init: cannot load"):
        start_from(model, str(tmp_path / "missing.pt"), said.append)
    # a fine-tuning run: its first epoch starts from the model, so it is already good after one short epoch
    tr, va = synthetic_fields(tmp_path, 24, "train", 0), synthetic_fields(tmp_path, 8, "validation", 1)
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16]},
           "train": {"epochs": 1, "epoch_samples": 32, "batch": 32, "jitter": 4, "threads": 1, "lr": 1e-5,
                     "init": str(tiny_model_dir)}}
    tuned = train(cfg, tr, va, tmp_path / "tuned", log=lambda m: None)
    cold = train({**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "init"}}, tr, va, tmp_path / "cold",
                 log=lambda m: None)
    assert tuned["auc"] > 0.9 and tuned["auc"] > cold["auc"] and tuned["loss"] < cold["loss"] / 2


def test_a_lab_keeps_a_fixed_draw_of_the_held_out_training_fields_and_is_no_longer_held_out(tmp_path):
    from dataclasses import replace

    from mitoqp.training.train import lab_fields

    fields = synthetic_fields(tmp_path, 12, "train", 0) + synthetic_fields(tmp_path, 4, "validation", 1)
    fields = [replace(f, source="tupac16" if i % 2 else "midog21-a") for i, f in enumerate(fields)]
    lab = lab_fields(fields, ["tupac16"], 4)
    assert len(lab) == 4 and all(f.source == "tupac16" and f.split == "train" for f in lab)
    assert [f.name for f in lab] == [f.name for f in lab_fields(fields, ["tupac16"], 4)]  # the same fields every run
    assert lab_fields(fields, ["tupac16"], 0) == []
    with pytest.raises(ValueError, match="keep_held_out must be within 0..6"):
        lab_fields(fields, ["tupac16"], 7)
    # the exported model does not claim the source as held out (holdout:KEY would score the fields it trained on)
    tr, va = synthetic_fields(tmp_path, 16, "train", 2), synthetic_fields(tmp_path, 6, "validation", 3)
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16]}, "data": {"hold_out": ["tupac16"], "keep_held_out": 4},
           "train": {"epochs": 1, "epoch_samples": 64, "batch": 32, "jitter": 4, "threads": 1}}
    train(cfg, tr, va, tmp_path / "run", log=lambda m: None)
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    config = export_model(tmp_path / "run" / "best.pt", tmp_path / "model", patches)
    assert "held_out_sources" not in config and "only 4 training fields" in config["training_data"]
    cfg["data"]["keep_held_out"] = 0
    train(cfg, tr, va, tmp_path / "run0", log=lambda m: None)
    assert export_model(tmp_path / "run0" / "best.pt", tmp_path / "model0", patches)["held_out_sources"] == ["tupac16"]
