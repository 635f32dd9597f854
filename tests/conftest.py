"""Shared fixtures: the real data beside the project (skipped when absent), synthetic fields, small models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mitoqp.datasets import Field
from mitoqp.stain import stain_matrix

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
AMIBR = SHARED / "ami-br"
MIDOG_JSON = SHARED / "annotations" / "midog2021.json"
SLIDES = SHARED / "slides"
CMU = SLIDES / "cmu-1-small-region.svs"
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"

needs_data = pytest.mark.skipif(not AMIBR.exists(), reason="../shared/data/ami-br is not present")
needs_slides = pytest.mark.skipif(not CMU.exists(), reason="../shared/data/slides is not present")

_M = stain_matrix()


def stain_rgb(h: float, e: float = 0.1) -> np.ndarray:
    """The RGB colour of tissue with hematoxylin density h and eosin e (Ruifrok vectors)."""
    od = h * _M[0] + e * _M[1]
    return np.clip(255 * 10 ** (-od), 0, 255).astype(np.uint8)


def paint_blob(img: np.ndarray, x: float, y: float, rx: float, ry: float, h: float) -> None:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    inside = ((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2 <= 1
    img[inside] = stain_rgb(h)


def synthetic_field(rng: np.random.Generator, size: int = 128, atypical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image, figures): eosin background, pale oval nuclei, one dark compact 'figure' at the centre.

    An atypical figure gets two extra dark lobes (a tripolar look).
    """
    img = np.empty((size, size, 3), np.uint8)
    img[:] = stain_rgb(0.02, 0.25)
    for _ in range(4):
        x, y = rng.uniform(10, size - 10, 2)
        if np.hypot(x - size / 2, y - size / 2) < 40:
            continue
        paint_blob(img, x, y, rng.uniform(9, 13), rng.uniform(6, 8), rng.uniform(0.4, 0.55))
    paint_blob(img, size / 2, size / 2, 7, 7, 1.1)
    if atypical:
        paint_blob(img, size / 2 + 8, size / 2 - 5, 3, 3, 1.1)
        paint_blob(img, size / 2 - 8, size / 2 - 5, 3, 3, 1.1)
    return img, np.array([[size / 2, size / 2]])


def synthetic_fields(tmp: Path, n: int, split: str, seed: int, subtypes: bool = False) -> list[Field]:
    """`subtypes`: every other field's figure is atypical."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atypical = subtypes and i % 2 == 1
        img, figs = synthetic_field(rng, atypical=atypical)
        path = tmp / f"{split}_{i}.png"
        Image.fromarray(img).save(path)
        out.append(Field(f"{split}_{i}", path, "synthetic", split, figs, atypical=atypical))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small model trained for seconds on synthetic fields and exported: a real model, never a fake."""
    pytest.importorskip("torch")
    from mitoqp.export.onnx_export import export_model
    from mitoqp.training.train import train
    from mitoqp.patches import extract_patches

    tmp = tmp_path_factory.mktemp("tiny")
    tr, va = synthetic_fields(tmp, 24, "train", 0), synthetic_fields(tmp, 8, "validation", 1)
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16]},
           "train": {"epochs": 3, "epoch_samples": 256, "batch": 32, "jitter": 4, "threads": 1, "lr": 0.01}}
    train(cfg, tr, va, tmp / "run", log=lambda m: None)
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    export_model(tmp / "run" / "best.pt", tmp / "model", patches, {"id": "tiny-synthetic"})
    return tmp / "model"


# the full MitDet recipe at smoke size: every option on
FULL_RECIPE = {
    "model": {"patch": 32, "widths": [8, 8, 16, 16], "se": True, "efdmix_p": 0.5, "subtype": True},
    "train": {"epochs": 4, "epoch_samples": 256, "batch": 32, "jitter": 4, "threads": 1, "lr": 0.01,
              "child_classes": "kmeans", "child_per_class": 2, "phase1_epochs": 1, "dgsb": True, "dgsb_clusters": 3,
              "center_weight": 0.01, "select": "mean_recall", "stain_aug": "macenko",
              "stain_survey": str(ROOT / "configs" / "stain_survey.json")},
}


@pytest.fixture(scope="session")
def tiny_subtype_model_dir(tmp_path_factory) -> Path:
    """The full recipe trained for seconds on synthetic fields with atypical figures, and exported."""
    pytest.importorskip("torch")
    from mitoqp.export.onnx_export import export_model
    from mitoqp.training.train import train
    from mitoqp.patches import extract_patches

    tmp = tmp_path_factory.mktemp("tiny_subtype")
    tr, va = synthetic_fields(tmp, 24, "train", 0, True), synthetic_fields(tmp, 8, "validation", 1, True)
    train(FULL_RECIPE, tr, va, tmp / "run", log=lambda m: None)
    patches = np.concatenate([extract_patches(f.image(), f.figures, 32) for f in va])
    export_model(tmp / "run" / "best.pt", tmp / "model", patches, {"id": "tiny-subtype"})
    return tmp / "model"


@pytest.fixture(scope="session")
def default_model():
    from mitoqp.runtime.model import load_model

    return load_model()
