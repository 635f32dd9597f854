"""RDLM: the GLB-calibrated FPN trained with the paper's focal loss (Ali et al., ../shared/docs/papers/rdlm-glb-fpn.txt).

The loss is the paper's Eq. 7, FL = -a z (1-p)^g log p - (1-a)(1-z) p^g log(1-p),
with its best setting a = 0.5, g = 0.5 (its Table 1), on every position of the
centre map; as in the focal loss paper it cites, the sum is divided by the
number of positive positions. Targets: positions within 3 um of a figure are
1, a ring out to 6 um is not counted (a centre map cannot say where a figure
ends), everything else is 0 (real nuclei, look-alikes and slide tissue).
Where our data forced changes from the paper, configs/rdlm.toml says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mitoqp.datasets import Field
from mitoqp.training.dense_run import save_dense, start_dense
from mitoqp.training.fpn import build_fpn
from mitoqp.training.model import count_macs
from mitoqp.training.pointmap import (dihedral_pair, effective_context, fit_dense, load_crop_source,
                                      point_targets, report_centre_cue, to_input)
from mitoqp.training.samples import SampleSet


def rdlm_focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5,
                    gamma: float = 0.5) -> torch.Tensor:
    """Eq. 7 summed over counted positions, divided by the number of positives (at least 1)."""
    p = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)  # d/dp of p^g is infinite at 0 for g < 1
    logp, log1p = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    loss = -alpha * target * (1 - p) ** gamma * logp - (1 - alpha) * (1 - target) * p ** gamma * log1p
    return (loss * weight).sum() / torch.clamp((target * weight).sum(), min=1.0)


def train_rdlm(cfg: dict, train_fields: list[Field], val_fields: list[Field], run_dir: Path, log=print,
               slide_samples: list[SampleSet] | None = None) -> dict:
    run = start_dense(cfg, run_dir)
    t_cfg, m_cfg, d_cfg = run.train, run.model, run.dense
    radius_um, min_distance_um = run.radius_um, run.min_distance_um
    size = int(m_cfg.get("crop", 96))
    positive_px, ignore_px = float(t_cfg.get("positive_um", 3.0)) / 0.25, float(t_cfg.get("ignore_um", 6.0)) / 0.25
    alpha, gamma = float(t_cfg.get("focal_alpha", 0.5)), float(t_cfg.get("focal_gamma", 0.5))
    source = load_crop_source(train_fields, slide_samples, size, log)
    model = build_fpn(m_cfg)
    context = effective_context(model, int(d_cfg.get("context_probe", 768)))
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters, {count_macs(model, 512) / 1e6:.1f} M MACs "
        f"per 512-px tile, {'GLB' if model.glb else 'no GLB'}, effective context {context} px (at initialisation)")
    opt = torch.optim.AdamW(model.parameters(), lr=float(t_cfg.get("lr", 2e-3)), weight_decay=float(t_cfg.get("weight_decay", 1e-4)))

    def step(crops: np.ndarray, figures: list, rng: np.random.Generator, gen: torch.Generator) -> float:
        target, weight = point_targets(figures, size, model.stride, positive_px, ignore_px)
        crops, (target, weight) = dihedral_pair(crops, [target, weight], rng)
        logits = model.logit_maps(to_input(crops, t_cfg, gen))[:, 0]
        loss = rdlm_focal_loss(logits, torch.from_numpy(target), torch.from_numpy(weight), alpha, gamma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    best, state = fit_dense(model, step, source, val_fields, t_cfg, size, "rdlm", run_dir, log, radius_um,
                            min_distance_um, [opt])
    context = effective_context(model, int(d_cfg.get("context_probe", 768)))
    report_centre_cue(model, val_fields, source, radius_um, best, log)
    save_dense(model, "rdlm", "final", cfg, best, state, run_dir / "best.pt", context)
    log(f"rdlm: mean recall {best['mean_recall']:.3f}, HPF-F1 {best['hpf_f1']:.3f} at threshold {best['threshold']:.4f} "
        f"(epoch {best['epoch']}), effective context {context} px")
    return best
