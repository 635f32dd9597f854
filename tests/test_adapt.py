"""`mitoqp adapt`: batch-norm statistics moved onto a lab's unlabelled slides (relative AdaBN)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import CMU, TCGA, needs_slides, synthetic_fields

torch = pytest.importorskip("torch")

from mitoqp.cli import main  # noqa: E402
from mitoqp.export.adapt import (LayerStatistics, adapt_folder, add_reference, batchnorm_layers,  # noqa: E402
                                 early_layers, load_weights, sample_patches, shifted)
from mitoqp.runtime.model import load_model  # noqa: E402


@pytest.fixture()
def reference_dir(tiny_model_dir, tmp_path):
    """The tiny model's folder with the reference measured on its own training fields."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    fields = synthetic_fields(tmp_path, 24, "train", 0)  # the fields the fixture trained on
    add_reference(folder, fields, log=lambda m: None)
    return folder, fields


def tinted(tmp_path, fields, name: str) -> list:
    """The same fields as another scanner would give them: bluer and darker."""
    out = tmp_path / name
    out.mkdir()
    for f in fields:
        img = np.asarray(Image.open(f.path)).astype(np.float32)
        img = np.clip(img * np.array([0.8, 0.85, 1.0]) - 10, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(out / f.path.name)
    return sorted(out.glob("*.png"))


def test_reservoir_keeps_at_most_its_size_from_the_input():
    rng = np.random.default_rng(0)
    patches = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(3, axis=3)
    batches = [(None, None, patches[i:i + 7]) for i in range(0, 50, 7)]
    kept = sample_patches(iter(batches), 10, rng)
    assert kept.shape == (10, 1, 1, 3) and len(set(kept[:, 0, 0, 0])) == 10
    assert sample_patches(iter(batches), 80, rng)[:, 0, 0, 0].tolist() == list(range(50))
    assert sample_patches(iter([(None, None, patches[:0])]), 10, rng) is None  # no candidate at all
    counts = np.zeros(50)
    for _ in range(400):  # uniform: no part of the slide is favoured
        counts[sample_patches(iter(batches), 10, rng)[:, 0, 0, 0]] += 1
    assert counts[:25].sum() == pytest.approx(counts[25:].sum(), rel=0.15)


def test_shift_moves_trained_statistics_by_the_difference():
    trained = [(np.array([1.0, 2.0]), np.array([4.0, 1.0]))]
    reference = [(np.array([0.5, 0.5]), np.array([2.0, 2.0]))]
    target = [(np.array([1.5, 0.0]), np.array([1.0, 4.0]))]
    (m, v), = shifted(trained, reference, target)
    assert m.tolist() == [2.0, 1.5] and v.tolist() == [2.0, 2.0]
    (m, v), = shifted(trained, target, target)
    assert m.tolist() == [1.0, 2.0] and v.tolist() == [4.0, 1.0]


def test_statistics_leave_the_model_alone(tiny_model_dir):
    model, _ = load_weights(tiny_model_dir, json.loads((tiny_model_dir / "model.json").read_text()))
    before = [bn.running_mean.clone() for _, bn in batchnorm_layers(model)]
    stats = LayerStatistics(model)
    stats.add(np.random.default_rng(0).integers(0, 255, (300, 32, 32, 3), dtype=np.uint8))
    result = stats.result()
    assert stats.patches == 256 and len(result) == len(before)  # the partial batch after a full one is left out
    assert all(torch.equal(b, bn.running_mean) for b, (_, bn) in zip(before, batchnorm_layers(model)))
    assert not np.allclose(result[0][0], before[0].numpy())


def test_adapting_to_the_training_fields_changes_nothing(reference_dir, tmp_path):
    folder, fields = reference_dir
    config = adapt_folder(folder, [(f.path, 0.25) for f in fields], tmp_path / "same", log=lambda m: None)
    a, b = load_model(folder), load_model(tmp_path / "same")
    patches = np.stack([np.asarray(Image.open(f.path))[32:64, 32:64] for f in fields])
    assert np.abs(a.backend.predict(patches) - b.backend.predict(patches)).max() < 1e-4
    assert config["adapted"]["inputs"] == 24 and config["adapted"]["from"] == "tiny-synthetic"


def test_adapted_folder_runs_and_differs_on_another_scanner(reference_dir, tmp_path):
    folder, fields = reference_dir
    lab = tinted(tmp_path, fields, "lab")
    bad = tmp_path / "lab" / "broken.png"
    bad.write_bytes(b"not an image")
    glass = tmp_path / "lab" / "glass.png"  # readable, but no candidate in it
    Image.fromarray(np.full((128, 128, 3), 240, np.uint8)).save(glass)
    messages = []
    config = adapt_folder(folder, [(p, 0.25) for p in [glass, *lab, bad]], tmp_path / "adapted", log=messages.append)
    assert config["adapted"]["inputs"] == 25 and len(config["adapted"]["skipped"]) == 1
    assert "broken.png" in messages[0] and len(messages) == 1
    assert config["id"] == "tiny-synthetic-adapted" and config["parity"]["decisions_differ"] == 0
    adapted = load_model(tmp_path / "adapted")  # every sha256 checked
    source = load_model(folder)
    patches = np.stack([np.asarray(Image.open(p))[32:64, 32:64] for p in lab])
    assert np.abs(adapted.backend.predict(patches) - source.backend.predict(patches)).max() > 1e-3
    assert not list(tmp_path.glob(".adapted.*"))  # no temporary folder left


def test_early_blocks_move_only_the_first_layers(reference_dir, tmp_path):
    names = ["stem.1", "stages.0.body.1", "stages.0.skip.1", "stages.1.body.1", "stages.2.body.4"]
    assert early_layers(names, None) == [True] * 5
    assert early_layers(names, 0) == [True, False, False, False, False]
    assert early_layers(names, 2) == [True, True, True, True, False]
    with pytest.raises(ValueError, match="early-blocks"):
        early_layers(names, -1)
    folder, fields = reference_dir
    lab = tinted(tmp_path, fields, "lab")
    config = adapt_folder(folder, [(p, 0.25) for p in lab], tmp_path / "early", log=lambda m: None, early_blocks=1)
    source = batchnorm_layers(load_weights(folder, json.loads((folder / "model.json").read_text()))[0])
    early = batchnorm_layers(load_weights(tmp_path / "early", config)[0])
    moved = [not torch.equal(a.running_mean, b.running_mean) for (_, a), (_, b) in zip(source, early)]
    assert moved == early_layers([n for n, _ in source], 1) and 0 < sum(moved) < len(moved)
    assert config["adapted"]["layers"].startswith(f"{sum(moved)} of {len(moved)}")


def test_adapt_refuses_what_it_cannot_do(reference_dir, tiny_model_dir, tmp_path):
    folder, fields = reference_dir
    inputs = [(f.path, 0.25) for f in fields[:4]]
    with pytest.raises(ValueError, match="--adapt-reference"):
        adapt_folder(tiny_model_dir, inputs, tmp_path / "a", log=lambda m: None)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ValueError, match="exists"):
        adapt_folder(folder, inputs, tmp_path / "exists", log=lambda m: None)
    adapt_folder(folder, inputs, tmp_path / "once", log=lambda m: None)
    with pytest.raises(ValueError, match="already adapted"):
        adapt_folder(tmp_path / "once", inputs, tmp_path / "twice", log=lambda m: None)
    with pytest.raises(ValueError, match="no candidate patches"):
        adapt_folder(folder, [(tmp_path / "missing.png", 0.25)], tmp_path / "none", log=lambda m: None)
    assert not (tmp_path / "none").exists()


def test_cli_adapt_writes_a_folder_and_reports_errors_in_one_line(reference_dir, tmp_path, capsys):
    folder, fields = reference_dir
    lab = tinted(tmp_path, fields[:6], "lab")
    assert main(["adapt", str(tmp_path / "lab"), "--model", str(folder), "--mpp", "0.25",
                 "-o", str(tmp_path / "out"), "--id", "lab-model"]) == 0
    captured = capsys.readouterr()
    assert "lab-model: tiny-synthetic adapted to 6 inputs" in captured.out and "warning" not in captured.err
    assert load_model(tmp_path / "out").id == "lab-model" and len(lab) == 6
    assert main(["adapt", str(tmp_path / "lab"), "--model", str(folder), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "exists" in err[0]
    # a whole slide is warned about (validated on fields only); a missing one is skipped, leaving nothing to measure
    assert main(["adapt", str(tmp_path / "missing.svs"), "--model", str(folder), "-o", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("warning: 1 of the inputs are whole slides") and "missing.svs" in err[1]
    assert err[-1].startswith("error:") and not (tmp_path / "o2").exists()


@needs_slides
def test_adapt_streams_real_slides_and_skips_one_without_resolution(reference_dir, tmp_path):
    folder, _ = reference_dir
    messages = []
    config = adapt_folder(folder, [(CMU, None), (TCGA, None)], tmp_path / "slides", max_patches=512,
                          log=messages.append)
    assert config["adapted"]["inputs"] == 1 and config["adapted"]["patches"] == 256  # 256 of CMU's share, one batch
    assert len(messages) == 1 and "tcga-cr-7395" in messages[0] and "--mpp" in messages[0]
    load_model(tmp_path / "slides")


def test_bundled_default_carries_a_reference_for_its_own_network():
    from mitoqp.export.adapt import load_reference
    from mitoqp.runtime.model import default_model_dir

    folder = default_model_dir()
    config = json.loads((folder / "model.json").read_text())
    model, _ = load_weights(folder, config)
    layers = batchnorm_layers(model)
    reference = load_reference(folder, config, [n for n, _ in layers])  # sha256 and layer names checked
    assert [m.shape[0] for m, _ in reference] == [bn.num_features for _, bn in layers]
    assert all((v > 0).all() for _, v in reference)
