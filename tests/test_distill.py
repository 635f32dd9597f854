"""Knowledge distillation (train.teacher): the loss, the teacher's views, loading, and a smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_fields  # noqa: E402
from mitoqp.training.distill import dihedral, distill_loss, load_teacher, teacher_probabilities  # noqa: E402


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distill_loss_is_zero_at_the_teacher_and_pulls_the_student_towards_it(temperature):
    teacher_p = torch.tensor([0.02, 0.3, 0.5, 0.9, 0.999])
    at_teacher = torch.logit(teacher_p)
    assert distill_loss(at_teacher, teacher_p, temperature).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(5, requires_grad=True)
    loss = distill_loss(student, teacher_p, temperature)
    assert loss.item() > 0
    loss.backward()
    # a descent step moves each logit towards the teacher's: down where the teacher says < 0.5, up where > 0.5
    step = -student.grad
    assert (torch.sign(step[[0, 1]]) < 0).all() and (torch.sign(step[[3, 4]]) > 0).all() and abs(step[2]) < 1e-6
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(student, teacher_p, 0.0)


def test_dihedral_views_are_the_eight_symmetries():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    views = [dihedral(x, k) for k in range(8)]
    assert len({v.numpy().tobytes() for v in views}) == 8
    assert torch.equal(dihedral(dihedral(x, 1), 3), x)


def test_teacher_from_a_checkpoint_or_a_folder_agrees_and_eight_views_are_rotation_invariant(tiny_model_dir, tmp_path):
    folder_teacher = load_teacher(tiny_model_dir)
    ckpt_teacher = load_teacher(tiny_model_dir.parent / "run" / "best.pt")
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(10, 40, 40, 3), dtype=np.uint8)
    a = teacher_probabilities([folder_teacher], crops, 32)
    b = teacher_probabilities([ckpt_teacher], crops, 32)
    np.testing.assert_allclose(a, b, atol=1e-6)
    eight = teacher_probabilities([folder_teacher], crops, 32, views=8)
    turned = teacher_probabilities([folder_teacher], np.ascontiguousarray(np.rot90(crops, 1, axes=(1, 2))), 32, views=8)
    np.testing.assert_allclose(eight, turned, atol=1e-5)
    # two teachers: the mean of their probabilities
    both = teacher_probabilities([folder_teacher, ckpt_teacher], crops, 32)
    np.testing.assert_allclose(both, a, atol=1e-6)
    with pytest.raises(ValueError, match="teacher_views"):
        teacher_probabilities([folder_teacher], crops, 32, views=3)
    with pytest.raises(ValueError, match="cannot load"):
        load_teacher(tmp_path / "nothing.pt")


def test_a_student_trains_on_its_teachers_probabilities(tiny_model_dir, tmp_path):
    from mitoqp.export.onnx_export import export_model
    from mitoqp.patches import extract_patches
    from mitoqp.training.train import train

    tr, va = synthetic_fields(tmp_path, 16, "train", 3), synthetic_fields(tmp_path, 6, "validation", 4)
    lines = []
    cfg = {"model": {"patch": 32, "widths": [8, 8, 8, 8], "input_pool": 2},
           "train": {"epochs": 2, "epoch_samples": 128, "batch": 32, "jitter": 4, "threads": 1, "lr": 0.01,
                     "teacher": [str(tiny_model_dir)], "teacher_views": 2, "distill_weight": 1.0,
                     "distill_temperature": 2.0}}
    best = train(cfg, tr, va, tmp_path / "run", log=lines.append)
    assert np.isfinite(best["loss"])
    assert any(line.startswith(f"distillation from {tiny_model_dir} (2 views)") for line in lines)
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    config = export_model(tmp_path / "run" / "best.pt", tmp_path / "student", patches)
    assert config["recipe"]["teacher"] == [str(tiny_model_dir)] and config["recipe"]["distill_temperature"] == 2.0
    assert json.loads((tmp_path / "student" / "model.json").read_text())["recipe"]["teacher_views"] == 2


def test_the_recipe_checks_the_teacher_settings(tmp_path):
    from mitoqp.training.recipe import check_recipe

    check_recipe({"train": {"teacher": ["a.pt"], "teacher_views": 8, "distill_weight": 0.5}}, tmp_path / "r.toml")
    with pytest.raises(ValueError, match="train.teacher is 'a.pt', not a list"):
        check_recipe({"train": {"teacher": "a.pt"}}, tmp_path / "r.toml")
    with pytest.raises(ValueError, match="did you mean train.teacher_views"):
        check_recipe({"train": {"teacher_view": 8}}, tmp_path / "r.toml")


def test_every_bundled_recipe_passes_the_checks_and_the_students_teacher_loads():
    from pathlib import Path

    from mitoqp.training.model import build_model
    from mitoqp.training.recipe import check_recipe
    from mitoqp.training.train import load_config

    root = Path(__file__).parent.parent
    for path in sorted((root / "configs").glob("*.toml")):
        check_recipe(load_config(path), path)
    student = load_config(root / "configs" / "student.toml")
    teacher = load_teacher(root / student["train"]["teacher"][0])
    assert not teacher.training
    # the student sees the patch at half resolution: about a quarter of the baseline network's multiply-accumulates
    from mitoqp.training.model import count_macs

    patch = student["model"]["patch"]
    baseline = load_config(root / "configs" / "baseline.toml")
    ratio = count_macs(build_model(student["model"]), patch) / count_macs(build_model(baseline["model"]), patch)
    assert 0.2 < ratio < 0.3
