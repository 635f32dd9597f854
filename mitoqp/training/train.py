"""`mitoqp train CONFIG`: a recipe, from samples to the best checkpoint.

Fixed seeds; a run folder holding the config, a log, metrics per epoch and
the checkpoint of the best validation epoch (by HPF-equivalent F1, or by the
smoother mean recall over 1-64 false detections per mm^2). The decision
threshold (best HPF-equivalent F1 with a fitted false-detection rate,
metrics.smoothed_threshold; the atypical one, with a subtype head, the bagged best
balanced-accuracy cut, metrics.bagged_balanced_cut) is chosen on validation at that epoch and stored in the checkpoint.

MitDet's options: child classes and centre loss (InCDP), DGSB after a
parent-only first phase, SE blocks and EFDMix in the backbone; see configs/.
"""

from __future__ import annotations

import json
import random
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mitoqp.background import in_background
from mitoqp.candidates import CandidateParams
from mitoqp.datasets import Field, read_amibr, read_qupath_points
from mitoqp.datasets.amibr import check_sources
from mitoqp.roi import read_roi
from mitoqp.training.recipe import check_recipe
from mitoqp.metrics import MEAN_RECALL_LEVELS, Match, bagged_balanced_cut, froc, match_detections, roc_auc, smoothed_threshold
from mitoqp.peaks import suppress_duplicates
from mitoqp.training.augment import augment_batch, center_batch, match_borders, stain_augmenter
from mitoqp.training.dense_run import refuse_gpu
from mitoqp.training.distill import distill_loss, load_teacher, teacher_probabilities
from mitoqp.training.losses import (CenterLoss, DomainAdversary, child_class_weights, child_focal_loss, dann_strength,
                                    focal_loss, subtype_loss)
from mitoqp.training.model import build_model, count_macs
from mitoqp.training.samples import SampleSet, build_samples, concat_samples, slide_samples
from mitoqp.training.sampling import (LABEL_CHILD_PARENT, LABEL_CHILDREN, BatchSampler, dgsb_sampler, kmeans_children,
                                      label_children, source_domains, subtype_targets, weighted_sampler)

FIELD_AREA_MM2 = (128 * 0.25 / 1000) ** 2
# what picks the best epoch: the detector's HPF-equivalent F1 or mean recall over 1-64 FP/mm^2, or, for a model
# trained to be the subtype model, its atypical-vs-normal AUC on the validation figures (smoother than the
# balanced accuracy at one threshold: validation holds few atypical figures)
SELECT_BY = ("hpf_f1", "mean_recall", "subtype_auc")
DEVICES = ("auto", "cpu", "cuda")


def training_device(name: str) -> torch.device:
    """`train.device`: "auto" takes a CUDA GPU where PyTorch sees one; "cuda" insists (a clear error without)."""
    if name not in DEVICES:
        raise ValueError(f"train.device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device = \"cuda\", but PyTorch sees no CUDA GPU (a CPU-only PyTorch build, or no driver)")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _uts():
    from mitoqp.training.uts import train_uts
    return train_uts


def _rdlm():
    from mitoqp.training.rdlm import train_rdlm
    return train_rdlm


def _minugan():
    from mitoqp.training.minugan import train_minugan
    return train_minugan


# recipes whose `method` trains a dense model (imported only when used)
DENSE_TRAINERS = {"uts": _uts, "rdlm": _rdlm, "minugan": _minugan}


def load_config(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"cannot read config {path}: {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def score(model: torch.nn.Module, crops: np.ndarray, patch: int, batch: int = 512) -> np.ndarray:
    """Model outputs on the centre patches: (N,) mitosis probability, or (N, 2) with the atypical one."""
    model.eval()
    device = model_device(model)
    parts = [model(center_batch(crops[i:i + batch], patch).to(device)).cpu().numpy() for i in range(0, len(crops), batch)]
    return np.concatenate(parts) if parts else np.zeros(0)


@torch.no_grad()
def embed_and_score(model, crops: np.ndarray, patch: int, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(features, mitosis probability) of every crop's centre patch, for k-means and DGSB."""
    model.eval()
    device = model_device(model)
    feats, probs = [], []
    for i in range(0, len(crops), batch):
        z = model.embed(center_batch(crops[i:i + batch], patch).to(device))
        feats.append(z.cpu().numpy())
        probs.append(torch.sigmoid(model.head(z).squeeze(1)).cpu().numpy())
    return np.concatenate(feats), np.concatenate(probs)


def field_matches(samples: SampleSet, scores: np.ndarray, fields: list[Field], radius_px: float, nms_px: float) -> list[Match]:
    """One Match per field from all its scored candidates, after the runtime's suppression of duplicates."""
    out = []
    for k, f in enumerate(fields):
        sel = np.flatnonzero(samples.field_index == k)
        sel = sel[suppress_duplicates(samples.xy[sel], scores[sel], nms_px)]
        out.append(match_detections(samples.xy[sel], scores[sel], f.figures, radius_px, f.lookalikes))
    return out


def froc_summary(matches: list[Match], area_mm2: float) -> dict:
    """The operating point of `smoothed_threshold`, with `mean_recall` over 1-64 FP/mm^2."""
    points = froc(matches, area_mm2)
    best = smoothed_threshold(matches, area_mm2)
    best["mean_recall"] = float(np.mean([max((p["recall"] for p in points if p["fp_per_mm2"] <= level), default=0.0)
                                         for level in MEAN_RECALL_LEVELS]))
    return best


def validate(model, samples: SampleSet, fields: list[Field], patch: int, radius_px: float, nms_px: float) -> dict:
    """Validation metrics; the threshold maximises HPF-equivalent F1 with a fitted false-detection rate.

    `mean_recall` (recall averaged over 1-64 false detections per mm^2) is the smoother
    criterion for choosing an epoch: validation's 0.3 mm^2 make the F1 at one threshold noisy.
    """
    out = score(model, samples.crops, patch)
    scores = out[:, 0] if out.ndim == 2 else out
    best = froc_summary(field_matches(samples, scores, fields, radius_px, nms_px), FIELD_AREA_MM2 * len(fields))
    known = samples.labels >= 0
    best["auc"] = roc_auc(samples.labels[known] == 1, scores[known])
    if out.ndim == 2:
        sub = (samples.labels == 1) & (samples.atypical >= 0)
        best["subtype_balanced_accuracy"], best["atypical_threshold"] = bagged_balanced_cut(out[sub, 1], samples.atypical[sub])
        best["subtype_auc"] = roc_auc(samples.atypical[sub] == 1, out[sub, 1])
    return best


@dataclass
class Objective:
    """MitDet's two-level loss (eq. 10) plus the subtype head, with the recipe's weights."""

    gamma: float
    alpha: float
    center_weight: float
    child_weight: float  # lambda
    subtype_weight: float
    subtype_pos_weight: float
    center_parent: CenterLoss
    center_child: CenterLoss | None
    parent_of_child: torch.Tensor | None
    distill_weight: float = 0.0  # with a teacher: the weight of its soft targets beside the labels' focal loss
    distill_temperature: float = 1.0
    adversary: DomainAdversary | None = None  # DANN over the training sources (train.domain_weight > 0)
    domain_weight: float = 0.0
    domain_losses: list = field(default_factory=list)  # the adversary's cross-entropy per step, for the epoch's log

    def to(self, device: torch.device) -> "Objective":
        """The learnt centres and the child-to-parent map onto the training device."""
        self.center_parent.to(device)
        if self.center_child is not None:
            self.center_child.to(device)
        if self.parent_of_child is not None:
            self.parent_of_child = self.parent_of_child.to(device)
        if self.adversary is not None:
            self.adversary.to(device)
        return self

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, child: torch.Tensor | None, atypical: torch.Tensor,
                 soft: torch.Tensor | None = None, domain: torch.Tensor | None = None, strength: float = 0.0) -> torch.Tensor:
        z = model.embed(x)
        out = model.heads(z)
        loss = focal_loss(out["parent"], y, self.gamma, self.alpha)
        if soft is not None and self.distill_weight > 0:
            loss = loss + self.distill_weight * distill_loss(out["parent"], soft, self.distill_temperature)
        if self.center_weight > 0:
            loss = loss + self.center_weight * self.center_parent(z, y.long())
        if child is not None and "child" in out:
            w = child_class_weights(self.center_child.centers.detach(), self.parent_of_child)
            level2 = child_focal_loss(out["child"], child, w, self.gamma)
            if self.center_weight > 0:
                level2 = level2 + self.center_weight * self.center_child(z, child)
            loss = loss + self.child_weight * level2
        if "subtype" in out and self.subtype_weight > 0:
            loss = loss + self.subtype_weight * subtype_loss(out["subtype"], atypical, self.subtype_pos_weight)
        if self.adversary is not None and domain is not None:
            domain_loss = self.adversary(z, domain, strength)
            self.domain_losses.append(domain_loss.detach())
            loss = loss + self.domain_weight * domain_loss
        return loss


def train(cfg: dict, train_fields: list[Field], val_fields: list[Field], run_dir: Path, log=print,
          extra_samples: list[SampleSet] | None = None) -> dict:
    """Train the recipe `cfg`; returns the best epoch's metrics. Writes into `run_dir`."""
    t_cfg, m_cfg = cfg.get("train", {}), cfg.get("model", {})
    seed = int(t_cfg.get("seed", 0))
    seed_everything(seed)
    torch.set_num_threads(int(t_cfg.get("threads", torch.get_num_threads())))
    device = training_device(str(t_cfg.get("device", "auto")))
    cparams = CandidateParams(**cfg.get("candidates", {}))
    patch = int(m_cfg.get("patch", 96))
    jitter = int(t_cfg.get("jitter", 8))
    radius_px = float(cfg.get("match_radius_um", 7.5)) / 0.25
    nms_px = max(float(cfg.get("nms_um", cparams.merge_um)), cparams.merge_um) / 0.25
    run_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    tr = build_samples(train_fields, cparams, patch + 2 * jitter, radius_px)
    va = build_samples(val_fields, cparams, patch, radius_px, add_missed=False)
    n_field_samples = len(tr)
    if extra_samples:
        tr = concat_samples([tr, *extra_samples])
    log(f"samples: train {int((tr.labels == 1).sum())} pos / {int((tr.labels == 0).sum())} neg "
        f"({int(tr.from_slide.sum())} from slides, {int(tr.lookalike.sum())} look-alikes, "
        f"{int((tr.atypical == 1).sum())} atypical / {int((tr.atypical == 0).sum())} normal), "
        f"validation {int((va.labels == 1).sum())} pos / {int((va.labels == 0).sum())} neg ({time.time() - t0:.0f}s)")

    # InCDP child classes: from the labels, or (MitDet) k-means of the parent model's features after phase 1
    child_mode = str(t_cfg.get("child_classes", "none"))
    per_parent = int(t_cfg.get("child_per_class", 4))
    if child_mode not in ("none", "labels", "kmeans"):
        raise ValueError(f"train.child_classes must be none, labels or kmeans, not {child_mode!r}")
    n_child = {"none": 0, "labels": len(LABEL_CHILDREN), "kmeans": 2 * per_parent}[child_mode]
    phase1 = int(t_cfg.get("phase1_epochs", 0)) if (t_cfg.get("dgsb", False) or child_mode == "kmeans") else 0

    model = build_model(m_cfg, n_child)
    if t_cfg.get("init"):
        start_from(model, str(t_cfg["init"]), log)
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters, {count_macs(model, patch) / 1e6:.1f} M MACs per patch"
        f", training on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    model.to(device)
    gamma, alpha = float(t_cfg.get("focal_gamma", 2.0)), float(t_cfg.get("focal_alpha", 0.5))
    n_atyp, n_norm = int((tr.atypical == 1).sum()), int((tr.atypical == 0).sum())
    objective = Objective(
        gamma, alpha, float(t_cfg.get("center_weight", 0.0)), float(t_cfg.get("child_weight", 0.5)),
        float(t_cfg.get("subtype_weight", 0.05)), n_norm / max(n_atyp, 1), CenterLoss(2, model.embed_dim),
        CenterLoss(n_child, model.embed_dim) if n_child else None,
        torch.from_numpy(LABEL_CHILD_PARENT) if child_mode == "labels" else None).to(device)
    child = label_children(tr) if child_mode == "labels" else None
    soft_target = distillation_targets(t_cfg, tr, patch, log)
    objective.distill_weight = float(t_cfg.get("distill_weight", 1.0)) if soft_target is not None else 0.0
    objective.distill_temperature = float(t_cfg.get("distill_temperature", 1.0))
    domains, domain_names = source_domains(tr, train_fields, n_field_samples)
    objective.domain_weight = float(t_cfg.get("domain_weight", 0.0))
    if objective.domain_weight > 0:
        if len(domain_names) < 2:
            raise ValueError(f"train.domain_weight needs training fields from two sources or more, not {domain_names}")
        objective.adversary = DomainAdversary(model.embed_dim, len(domain_names)).to(device)
        log(f"domain adversary (weight {objective.domain_weight}) over {len(domain_names)} sources: "
            + ", ".join(f"{n} {int((domains == i).sum())}" for i, n in enumerate(domain_names)))

    epochs = int(t_cfg.get("epochs", 20))
    batch = int(t_cfg.get("batch", 128))
    steps = max(1, int(t_cfg.get("epoch_samples", 12000)) // batch)
    params = list(model.parameters()) + list(objective.center_parent.parameters())
    params += list(objective.center_child.parameters()) if objective.center_child is not None else []
    params += list(objective.adversary.parameters()) if objective.adversary is not None else []
    opt = torch.optim.AdamW(params, lr=float(t_cfg.get("lr", 2e-3)), weight_decay=float(t_cfg.get("weight_decay", 1e-4)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(t_cfg.get("lr", 2e-3)), total_steps=epochs * steps)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    stain_aug = stain_augmenter(t_cfg)
    sampler = weighted_sampler(tr, float(t_cfg.get("lookalike_weight", 3.0)), float(t_cfg.get("slide_weight", 3.0)),
                               str(t_cfg.get("negatives", "hard")), float(t_cfg.get("negative_share", 0.5)))
    subtype_target = subtype_targets(tr, train_fields, str(t_cfg.get("subtype_labels", "majority")))
    if t_cfg.get("subtype_labels", "majority") != "majority":
        soft = (subtype_target > 0) & (subtype_target < 1)
        log(f"subtype labels {t_cfg['subtype_labels']}: {int((subtype_target >= 0).sum())} figures trained on "
            f"(of {int((tr.atypical >= 0).sum())}), {int(soft.sum())} with a soft target")
    select = str(t_cfg.get("select", "hpf_f1"))
    if select not in SELECT_BY:
        raise ValueError(f"train.select must be one of {', '.join(SELECT_BY)}, not {select!r}")
    if select == "subtype_auc" and getattr(model, "subtype_head", None) is None:
        raise ValueError("train.select = \"subtype_auc\" needs a subtype head: set model.subtype = true")

    ema_decay = float(t_cfg.get("ema_decay", 0.0))
    # an exponential moving average of the weights (and BatchNorm statistics) steadies validation
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay),
                                               use_buffers=True) if ema_decay > 0 else None)
    reference = stain_reference(train_fields)
    best: dict = {select: -1.0}
    for epoch in range(1, epochs + 1):
        if phase1 and epoch == phase1 + 1:
            sampler, kmeans_child = second_phase(ema.module if ema is not None else model, tr, patch, t_cfg, sampler, log)
            sampler.neg_share = float(t_cfg.get("negative_share", 0.5))
            if kmeans_child is not None:
                child, parent_of_child = kmeans_child
                objective.parent_of_child = torch.from_numpy(parent_of_child).to(device)
        model.train()
        te = time.time()
        losses = []
        def drawn_batches():  # the sampling and augmentation of the epoch's batches, in order: the same draws
            for _ in range(steps):
                idx = sampler.draw(rng, batch)
                crops = match_borders(tr.crops[idx], tr.labels[idx], tr.valid[idx], rng, float(t_cfg.get("border_match", 0.5)))
                yield idx, augment_batch(crops, patch, t_cfg, rng, gen, stain_aug)

        # train.prefetch: the next batches are augmented on a worker thread while this one trains (one epoch at a
        # time, so a second phase's sampler is in place before any draw of its epoch). Off by default: on 2 cores
        # the thread competes with PyTorch's own (0.91x; benchmarks/RESULTS.md); it is for a GPU or many cores
        drawn = in_background(drawn_batches(), depth=2) if t_cfg.get("prefetch", False) else drawn_batches()
        for step, (idx, x) in enumerate(drawn):
            x = x.to(device)  # augmented on the CPU: the same draws whichever device trains
            y = torch.from_numpy(tr.labels[idx]).to(device)
            c = torch.from_numpy(child[idx]).to(device) if child is not None and objective.parent_of_child is not None else None
            soft = torch.from_numpy(soft_target[idx]).to(device) if soft_target is not None else None
            d = torch.from_numpy(domains[idx]).to(device) if objective.adversary is not None else None
            strength = dann_strength(((epoch - 1) * steps + step) / (epochs * steps))
            loss = objective(model, x, y, c, torch.from_numpy(subtype_target[idx]).to(device), soft, d, strength)
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
        extra = (f", subtype bal. acc. {metrics['subtype_balanced_accuracy']:.3f} AUC {metrics['subtype_auc']:.3f}"
                 if "subtype_balanced_accuracy" in metrics else "")
        if objective.domain_losses:  # near ln(sources): the features no longer tell the sources apart
            metrics["domain_loss"] = float(torch.stack(objective.domain_losses).mean())
            objective.domain_losses.clear()
            extra += f", domain loss {metrics['domain_loss']:.3f} (chance {np.log(len(domain_names)):.3f})"
        log(f"epoch {epoch}: loss {metrics['loss']:.4f} val AUC {metrics['auc']:.4f} HPF-F1 {metrics['hpf_f1']:.3f} "
            f"(recall {metrics['recall']:.3f}, {metrics['fp_per_mm2']:.1f} FP/mm2 at t={metrics['threshold']:.3f}) "
            f"mean recall {metrics['mean_recall']:.3f}{extra} {metrics['seconds']:.0f}s")
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        state = {"state_dict": {k: v.cpu() for k, v in judged.state_dict().items()}, "config": cfg, "threshold": metrics["threshold"],
                 "atypical_threshold": metrics.get("atypical_threshold"), "child_classes": n_child,
                 "candidates": asdict(cparams), "nms_um": nms_px * 0.25, "patch": patch, "val_metrics": metrics,
                 "macs": count_macs(judged, patch), "stain_reference": reference}
        if int(t_cfg.get("save_every", 0)) and epoch % int(t_cfg["save_every"]) == 0:
            torch.save(state, run_dir / f"epoch{epoch:03d}.pt")  # for finding where training saturates
        if (_finite(metrics[select]) > _finite(best[select]) or "epoch" not in best) and epoch > phase1:
            best = metrics
            torch.save(state, run_dir / "best.pt")
    log(f"best epoch {best['epoch']} by {select}: {best[select]:.3f}, HPF-F1 {best['hpf_f1']:.3f} at threshold {best['threshold']:.4f}")
    return best


def start_from(model: torch.nn.Module, path: str, log) -> None:
    """Fine-tuning (train.init): begin from a trained model's weights, which must be of the same network, so a lab
    adds its own annotated fields in a few epochs instead of training from scratch."""
    source = load_teacher(path, "train.init")
    if source.input_norm != model.input_norm:  # no weights tell this apart: the same tensors, other pixels
        raise ValueError(f"train.init: {path} was trained with model.input_norm = \"{source.input_norm}\", "
                         f"this recipe has \"{model.input_norm}\"")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"train.init: {path} is another network than this recipe's [model] "
                         f"({str(exc).splitlines()[0].rstrip(':.')})") from None
    log(f"weights from {path}")


def distillation_targets(t_cfg: dict, tr: SampleSet, patch: int, log) -> np.ndarray | None:
    """The teachers' mitosis probability for every training crop (train.teacher), or None without one."""
    paths = t_cfg.get("teacher") or []
    if not paths:
        return None
    t0 = time.time()
    teachers = [load_teacher(p) for p in paths]
    views = int(t_cfg.get("teacher_views", 1))
    soft = teacher_probabilities(teachers, tr.crops, patch, views)
    pos, neg = tr.labels == 1, tr.labels == 0
    log(f"distillation from {', '.join(map(str, paths))} ({views} view{'s' if views > 1 else ''}): teacher's mean "
        f"probability {soft[pos].mean():.3f} on figures, {soft[neg].mean():.3f} on negatives; "
        f"{int((soft[neg] >= 0.5).sum())} negatives it calls figures ({time.time() - t0:.0f}s)")
    return soft


def _finite(value: float) -> float:
    """A criterion that could not be measured (NaN: one subtype absent) never wins an epoch."""
    return value if np.isfinite(value) else -np.inf


def second_phase(model, tr: SampleSet, patch: int, t_cfg: dict, sampler: BatchSampler, log):
    """After the parent-only epochs: DGSB's sampler and InCDP's k-means child classes from the model's features.

    Returns (the sampler to use from now on, (child per sample, parent of each child) or None).
    """
    seed = int(t_cfg.get("seed", 0))
    feats, probs = embed_and_score(model, tr.crops, patch)
    neg = tr.labels == 0
    if t_cfg.get("dgsb", False):
        sampler, info = dgsb_sampler(tr, feats[neg], probs[neg], int(t_cfg.get("dgsb_clusters", 10)),
                                     float(t_cfg.get("dgsb_easy_below", 0.5)), float(t_cfg.get("dgsb_easy_keep", 0.1)), seed)
        log(f"DGSB: {info}")
    if t_cfg.get("child_classes", "none") != "kmeans":
        return sampler, None
    child, parent_of_child = kmeans_children(feats, tr.labels, int(t_cfg.get("child_per_class", 4)), seed)
    log(f"InCDP child classes (k-means): {np.bincount(child[child >= 0]).tolist()}")
    return sampler, (child, parent_of_child)


def stain_reference(fields: list[Field], max_fields: int = 400, seed: int = 0) -> dict | None:
    """The training data's Macenko H and E vectors and 99th-percentile densities: the target of --stain-normalise."""
    from mitoqp.stain_normalise import reference_from_images

    if not fields:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(fields), min(max_fields, len(fields)), replace=False)
    try:
        return reference_from_images([fields[i].image() for i in pick])
    except ValueError:
        return None


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """`section.key=value` settings over a recipe (values in TOML syntax), for seeds and ablations."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes section.key=value, not {item!r}")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # a bare word: a string
        *path, last = key.strip().split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part} is a setting, not a section")
        node[last] = parsed
    return cfg


def lab_fields(fields: list[Field], held_out: list[str], n: int) -> list[Field]:
    """`n` training fields of the held-out sources, drawn by a fixed seed whatever the run's seed: a lab's few
    annotated fields, to measure fine-tuning (train.init) on a centre the model was trained without."""
    pool = [f for f in fields if f.source in held_out and f.split == "train"]
    if n < 0 or n > len(pool):
        raise ValueError(f"data.keep_held_out must be within 0..{len(pool)} (the held-out training fields), not {n}")
    return [pool[i] for i in sorted(np.random.default_rng(0).choice(len(pool), n, replace=False))]


def train_from_config(config_path: Path, run_dir: Path, overrides: list[str] | None = None) -> dict:
    """The CLI entry: read the config's data, train, keep a copy of the config and a log."""
    cfg = apply_overrides(load_config(config_path), overrides or [])
    check_recipe(cfg, config_path)
    if cfg.get("method", "mitdet") in DENSE_TRAINERS:  # a device that cannot be had stops the run before reading data
        refuse_gpu(cfg.get("train", {}))
    else:
        training_device(str(cfg.get("train", {}).get("device", "auto")))
    data = cfg.get("data", {})
    if "amibr" not in data:
        raise ValueError(f"config {config_path} has no [data] amibr = \"path to AMi-Br\"")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(Path(config_path).read_text() + "".join(f"# --set {o}\n" for o in overrides or []))
    log_path = run_dir / "train.log"

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with log_path.open("a") as f:
            f.write(line + "\n")

    fields = read_amibr(Path(data["amibr"]), Path(data["midog_json"]) if data.get("midog_json") else None,
                        {"train", "validation"})
    limit = data.get("limit_fields")
    held_out = list(data.get("hold_out", []))
    check_sources(held_out)
    if held_out:  # a scanner the model never sees, not even to pick its epoch: `evaluate --splits holdout:KEY`
        log(f"holding out {', '.join(held_out)}: {sum(f.source in held_out for f in fields)} fields")
        lab = lab_fields(fields, held_out, int(data.get("keep_held_out", 0)))
        if lab:
            log(f"keeping {len(lab)} training fields of the held-out sources (a lab's own annotated fields)")
        fields = [f for f in fields if f.source not in held_out] + lab
    train_fields = [f for f in fields if f.split == "train"][:limit]
    val_fields = [f for f in fields if f.split == "validation"][:limit]
    log(f"config {config_path}: {len(train_fields)} training and {len(val_fields)} validation fields")
    t_cfg = cfg.get("train", {})
    log(f"seed {int(t_cfg.get('seed', 0))}, {int(t_cfg.get('threads', torch.get_num_threads()))} PyTorch threads, "
        f"torch {torch.__version__}: these repeat a run; another thread count sums in another order and is another run")
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
    method = cfg.get("method", "mitdet")
    if method in DENSE_TRAINERS:
        return DENSE_TRAINERS[method]()(cfg, train_fields, val_fields, run_dir, log, extra)
    return train(cfg, train_fields, val_fields, run_dir, log, extra)
