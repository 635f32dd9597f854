"""Knowledge distillation: a student trained on a teacher's probabilities beside the labels.

Two uses: a smaller, faster detector that keeps the default's accuracy (issue 8),
and one model that learns what an ensemble or test-time augmentation of
several views knows (issue 7: a bigger teacher distilled into the default size).

The teacher's probabilities are computed once, before training, on the
un-augmented centre patch of every training crop, averaged over the teacher
members and over `views` dihedral views. Training augments geometry (the eight
dihedral views, a few pixels of shift) and stain, none of which changes
whether a patch shows a figure, so each crop keeps its soft target. That costs
one pass over the crops instead of a teacher forward per step and view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mitoqp.training.augment import center_batch
from mitoqp.training.model import build_model

VIEWS = (1, 2, 4, 8)


def load_teacher(path: str | Path, setting: str = "train.teacher") -> torch.nn.Module:
    """A patch model from a training checkpoint (best.pt) or an exported folder (its model.pt); `setting` names
    the recipe setting that asked for it in an error."""
    p = Path(path)
    file = p / "model.pt" if p.is_dir() else p
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
        if ckpt.get("kind", "patch") != "patch":
            raise ValueError(f"a {ckpt.get('kind')} model is not a patch model")
        m_cfg = ckpt["config"].get("model", {}) if "config" in ckpt else ckpt["model"]
        model = build_model(m_cfg, int(ckpt.get("child_classes", 0)))
        model.load_state_dict(ckpt["state_dict"])
    except (OSError, KeyError, RuntimeError, AttributeError) as exc:
        raise ValueError(f"{setting}: cannot load {file}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """View k (0-7) of an NCHW batch: k % 4 quarter turns, flipped when k >= 4."""
    x = torch.rot90(x, k % 4, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if k >= 4 else x


@torch.no_grad()
def teacher_probabilities(teachers: list[torch.nn.Module], crops: np.ndarray, patch: int, views: int = 1,
                          batch: int = 256) -> np.ndarray:
    """(N,) mitosis probability of each crop's centre patch, averaged over teachers and dihedral views."""
    if views not in VIEWS:
        raise ValueError(f"train.teacher_views must be one of {VIEWS}, not {views}")
    if not teachers:
        raise ValueError("no teacher to distil from")
    out = np.zeros(len(crops), np.float64)
    for i in range(0, len(crops), batch):
        x = center_batch(crops[i:i + batch], patch)
        total = torch.zeros(len(x), dtype=torch.float64)
        for t in teachers:
            for k in range(views):
                p = t(dihedral(x, k))
                total += (p[:, 0] if p.ndim == 2 else p).double()
        out[i:i + len(x)] = (total / (len(teachers) * views)).numpy()
    return out.astype(np.float32)


def distill_loss(student_logits: torch.Tensor, teacher_p: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Bernoulli KL(teacher || student) with both softened by `temperature`, times T^2 (Hinton et al. 2015).

    Zero when the student matches the teacher; the T^2 keeps its gradient's scale as T changes.
    """
    if temperature <= 0:
        raise ValueError(f"train.distill_temperature must be positive, not {temperature}")
    eps = 1e-6
    p = teacher_p.clamp(eps, 1 - eps)
    target = torch.sigmoid(torch.logit(p) / temperature)
    s = student_logits / temperature
    # KL(t || s) = BCE(s, t) - H(t)
    entropy = -(target * torch.log(target) + (1 - target) * torch.log1p(-target))
    kl = F.binary_cross_entropy_with_logits(s, target, reduction="none") - entropy
    return temperature ** 2 * kl.mean()
