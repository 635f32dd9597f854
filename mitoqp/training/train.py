"""`mitoqp train CONFIG`: the baseline recipe, from samples to the best checkpoint.

Fixed seeds; a run folder holding the config, a log, metrics per epoch and
the checkpoint with the best validation HPF-equivalent F1. The decision
threshold is chosen on validation at that epoch and stored in the checkpoint.
"""

from __future__ import annotations

import json
import random
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mitoqp.candidates import CandidateParams
from mitoqp.datasets import Field, read_amibr, read_qupath_points
from mitoqp.roi import read_roi
from mitoqp.metrics import Match, best_threshold, match_detections, roc_auc
from mitoqp.pipeline import suppress_duplicates
from mitoqp.training.augment import augment_batch, center_batch, match_borders
from mitoqp.training.model import build_model, count_macs
from mitoqp.training.samples import SampleSet, build_samples, concat_samples, slide_samples

FIELD_AREA_MM2 = (128 * 0.25 / 1000) ** 2


def load_config(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from None


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017): down-weights easy examples so hard negatives dominate."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * ce).mean()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def score(model: torch.nn.Module, crops: np.ndarray, patch: int, batch: int = 512) -> np.ndarray:
    model.eval()
    return np.concatenate([model(center_batch(crops[i:i + batch], patch)).numpy() for i in range(0, len(crops), batch)] + [np.zeros(0)])


def field_matches(samples: SampleSet, scores: np.ndarray, fields: list[Field], radius_px: float, nms_px: float) -> list[Match]:
    """One Match per field from all its scored candidates, after the runtime's suppression of duplicates."""
    out = []
    for k, f in enumerate(fields):
        sel = np.flatnonzero(samples.field_index == k)
        sel = sel[suppress_duplicates(samples.xy[sel], scores[sel], nms_px)]
        out.append(match_detections(samples.xy[sel], scores[sel], f.figures, radius_px, f.lookalikes))
    return out


def validate(model, samples: SampleSet, fields: list[Field], patch: int, radius_px: float, nms_px: float) -> dict:
    scores = score(model, samples.crops, patch)
    best = best_threshold(field_matches(samples, scores, fields, radius_px, nms_px), FIELD_AREA_MM2 * len(fields))
    known = samples.labels >= 0
    best["auc"] = roc_auc(samples.labels[known] == 1, scores[known])
    return best


def train(cfg: dict, train_fields: list[Field], val_fields: list[Field], run_dir: Path, log=print,
          extra_samples: list[SampleSet] | None = None) -> dict:
    """Train the recipe `cfg`; returns the best epoch's metrics. Writes into `run_dir`."""
    t_cfg, m_cfg = cfg.get("train", {}), cfg.get("model", {})
    seed_everything(int(t_cfg.get("seed", 0)))
    torch.set_num_threads(int(t_cfg.get("threads", torch.get_num_threads())))
    cparams = CandidateParams(**cfg.get("candidates", {}))
    patch = int(m_cfg.get("patch", 96))
    jitter = int(t_cfg.get("jitter", 8))
    radius_px = float(cfg.get("match_radius_um", 7.5)) / 0.25
    nms_px = max(float(cfg.get("nms_um", cparams.merge_um)), cparams.merge_um) / 0.25
    run_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    tr = build_samples(train_fields, cparams, patch + 2 * jitter, radius_px)
    va = build_samples(val_fields, cparams, patch, radius_px, add_missed=False)
    if extra_samples:
        tr = concat_samples([tr, *extra_samples])
    log(f"samples: train {int((tr.labels == 1).sum())} pos / {int((tr.labels == 0).sum())} neg "
        f"({int(tr.from_slide.sum())} from slides, {int(tr.lookalike.sum())} look-alikes), "
        f"validation {int((va.labels == 1).sum())} pos / {int((va.labels == 0).sum())} neg ({time.time() - t0:.0f}s)")

    model = build_model(m_cfg)
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters, {count_macs(model, patch) / 1e6:.1f} M MACs per patch")
    epochs = int(t_cfg.get("epochs", 20))
    batch = int(t_cfg.get("batch", 128))
    steps = max(1, int(t_cfg.get("epoch_samples", 12000)) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=float(t_cfg.get("lr", 2e-3)), weight_decay=float(t_cfg.get("weight_decay", 1e-4)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(t_cfg.get("lr", 2e-3)), total_steps=epochs * steps)
    rng = np.random.default_rng(int(t_cfg.get("seed", 0)))
    gen = torch.Generator().manual_seed(int(t_cfg.get("seed", 0)))
    pos, neg = np.flatnonzero(tr.labels == 1), np.flatnonzero(tr.labels == 0)
    # class-balanced batches; among negatives, labelled look-alikes and slide candidates are drawn more often
    neg_w = np.where(tr.lookalike[neg], float(t_cfg.get("lookalike_weight", 3.0)), 1.0)
    neg_w = np.where(tr.from_slide[neg], float(t_cfg.get("slide_weight", 3.0)), neg_w)
    neg_w /= neg_w.sum()
    gamma, alpha = float(t_cfg.get("focal_gamma", 2.0)), float(t_cfg.get("focal_alpha", 0.5))

    ema_decay = float(t_cfg.get("ema_decay", 0.0))
    # an exponential moving average of the weights (and BatchNorm statistics) steadies validation
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay),
                                               use_buffers=True) if ema_decay > 0 else None)
    best: dict = {"hpf_f1": -1.0}
    for epoch in range(1, epochs + 1):
        model.train()
        te = time.time()
        losses = []
        for _ in range(steps):
            idx = np.concatenate([rng.choice(pos, batch // 2), rng.choice(neg, batch - batch // 2, p=neg_w)])
            crops = match_borders(tr.crops[idx], tr.labels[idx], tr.valid[idx], rng, float(t_cfg.get("border_match", 0.5)))
            x = augment_batch(crops, patch, t_cfg, rng, gen)
            y = torch.from_numpy(tr.labels[idx])
            loss = focal_loss(model.logits(x), y, gamma, alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
        judged = ema.module if ema is not None else model
        metrics = validate(judged, va, val_fields, patch, radius_px, nms_px)
        metrics.update(epoch=epoch, loss=float(np.mean(losses)), seconds=time.time() - te)
        log(f"epoch {epoch}: loss {metrics['loss']:.4f} val AUC {metrics['auc']:.4f} HPF-F1 {metrics['hpf_f1']:.3f} "
            f"(recall {metrics['recall']:.3f}, {metrics['fp_per_mm2']:.1f} FP/mm2 at t={metrics['threshold']:.3f}) {metrics['seconds']:.0f}s")
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if metrics["hpf_f1"] > best["hpf_f1"]:
            best = metrics
            torch.save({
                "state_dict": judged.state_dict(), "config": cfg, "threshold": metrics["threshold"],
                "candidates": asdict(cparams), "nms_um": nms_px * 0.25, "patch": patch, "val_metrics": metrics,
                "macs": count_macs(judged, patch),
            }, run_dir / "best.pt")
    log(f"best epoch {best['epoch']}: HPF-F1 {best['hpf_f1']:.3f} at threshold {best['threshold']:.4f}")
    return best


def train_from_config(config_path: Path, run_dir: Path) -> dict:
    """The CLI entry: read the config's data, train, keep a copy of the config and a log."""
    cfg = load_config(config_path)
    data = cfg.get("data", {})
    if "amibr" not in data:
        raise ValueError(f"config {config_path} has no [data] amibr = \"path to AMi-Br\"")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(Path(config_path).read_text())
    log_path = run_dir / "train.log"

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with log_path.open("a") as f:
            f.write(line + "\n")

    fields = read_amibr(Path(data["amibr"]), Path(data["midog_json"]) if data.get("midog_json") else None,
                        {"train", "validation"})
    limit = data.get("limit_fields")
    train_fields = [f for f in fields if f.split == "train"][:limit]
    val_fields = [f for f in fields if f.split == "validation"][:limit]
    log(f"config {config_path}: {len(train_fields)} training and {len(val_fields)} validation fields")
    cparams = CandidateParams(**cfg.get("candidates", {}))
    crop = int(cfg.get("model", {}).get("patch", 96)) + 2 * int(cfg.get("train", {}).get("jitter", 8))
    extra = []
    for s in data.get("slides", []):
        if not Path(s["path"]).exists():
            log(f"slide {s['path']} not found: no samples from it")
            continue
        figures = read_qupath_points(Path(s["annotations"])) if s.get("annotations") else None
        roi = read_roi(Path(s["roi"])) if s.get("roi") else None
        extra.append(slide_samples(Path(s["path"]), s.get("mpp"), cparams, crop, float(cfg.get("match_radius_um", 7.5)),
                                   s.get("train_region"), figures, roi))
        got = extra[-1]
        log(f"slide {s['path']}: {int((got.labels == 1).sum())} positives, {int((got.labels == 0).sum())} negatives "
            f"(region {s.get('train_region', 'whole')}{', annotations ' + s['annotations'] if s.get('annotations') else ''})")
    return train(cfg, train_fields, val_fields, run_dir, log, extra)
