"""UTS: weakly supervised mitosis localisation with an uninformed teacher and a distilled student.

Fernandez-Martin et al. (../shared/docs/papers/uts-teacher-student.txt):
1. the teacher, a fully convolutional network, learns from image-level labels
   only (an image holds a figure or not), its image score the maximum of its
   probability map (Eq. 1), under strong augmentation (optical and grid
   distortion) that keeps it from memorising hard cases;
2. on the positive training images, the teacher's map is thresholded at the
   operating point of its image-level ROC on validation, each object's centroid
   is its probability-weighted mean position (Eq. 2), and an image is kept only
   if some centroid lies within tau of an annotated figure (Eqs. 4-5);
3. the student learns the same way, on the negatives and the kept positives,
   under weak augmentation (flips and rotations).

Where our data forces a change (also in configs/uts.toml): every AMi-Br field
is 128 px centred on a figure, so image-level negatives exist only as small
crops. Images are 48-px crops (12 um): positives hold a figure at least 12 px
inside; negatives lie at the field's edge with every known figure at least
16 px outside them, and around candidates of the slides' training halves.
There are no ImageNet weights, so the network trains from scratch (AdamW,
one-cycle, lr 1e-3, instead of Adam at 1e-4 from pretrained blocks). The epoch
is chosen by mean recall over 1-64 false detections per mm^2 on the validation
fields, the same criterion as every mitoqp recipe (the paper: image-level
classification). Detections at inference are the map's peaks (the runtime's
dense path) rather than centroids of the thresholded mask; tau is the
project's matching radius, 7.5 um (the paper's 30 px at its resolution).

Label type (Ji et al., ../shared/docs/papers/ji-data-and-modeling.txt, compare
tile-level labels with boxes): `train.labels = "points"` trains the same
network on the same crops, with the same strong augmentation (the points move
with the distortions), from the figure points instead of the image labels: a
centre map, 1 within `positive_um` of a point, not counted out to `ignore_um`,
under RDLM's focal loss. Points say where figures are, so there is nothing to
distil: the teacher is the model. `train.glass_share` ends that share of the
crops at glass-white, as fields and slide borders end in the runtime; without
it the point-trained map fires at the tissue's edge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mitoqp.datasets import Field
from mitoqp.metrics import match_detections, roc_auc
from mitoqp.patches import PAD_VALUE, extract_patches
from mitoqp.peaks import find_peaks
from mitoqp.training.dense_run import record_epoch, save_dense, start_dense
from mitoqp.training.fcn import WeakFCN, build_fcn, receptive_radius
from mitoqp.training.model import count_macs
from mitoqp.training.samples import SampleSet
from mitoqp.training.train import froc_summary


@dataclass
class WeakSet:
    """Images with image-level labels; the figure centres inside positives are kept only for distillation."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) 1: holds a mitotic figure
    figures: list  # per image, (k, 2) figure centres in its pixels (empty for negatives)

    def select(self, keep: np.ndarray) -> "WeakSet":
        idx = np.flatnonzero(keep)
        return WeakSet(self.images[idx], self.labels[idx], [self.figures[i] for i in idx])

    @staticmethod
    def concat(parts: list["WeakSet"]) -> "WeakSet":
        return WeakSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                       [f for p in parts for f in p.figures])


def field_images(fields: list[Field], size: int, rng: np.random.Generator, per_field: int = 2,
                 inside: int = 12, clearance: int = 16) -> WeakSet:
    """`per_field` positive and up to `per_field` negative crops of each field (see the module's note)."""
    images, labels, figures = [], [], []
    for f in fields:
        img = f.image()
        h, w = img.shape[:2]
        figs = np.asarray(f.figures, float).reshape(-1, 2)
        if len(figs) == 0:
            continue
        centre = figs[np.argmin(np.hypot(*(figs - [w / 2, h / 2]).T))]
        half = size // 2
        for _ in range(per_field):  # positives: the figure anywhere at least `inside` px from the crop's edge
            c = np.rint(centre + rng.uniform(-(half - inside), half - inside, 2))
            images.append(extract_patches(img, c[None], size)[0])
            labels.append(1)
            figures.append(figs - (c - half))
        # negatives: crops along the field's edge, fully inside it, every figure `clearance` px outside the crop
        tries = 0
        made = 0
        while made < per_field and tries < 20 * per_field:
            tries += 1
            c = np.array([rng.uniform(half, w - half), rng.uniform(half, h - half)])
            side = rng.integers(4)
            c[side % 2] = half if side < 2 else (w - half if side % 2 == 0 else h - half)
            c = np.rint(c)
            lo, hi = c - half - clearance, c + half + clearance
            if np.any(np.all((figs >= lo) & (figs < hi), axis=1)):
                continue
            images.append(extract_patches(img, c[None], size)[0])
            labels.append(0)
            figures.append(np.zeros((0, 2)))
            made += 1
    return WeakSet(np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
                   np.asarray(labels, np.int64), figures)


def slide_images(samples: SampleSet, size: int) -> WeakSet:
    """Negatives from real slides: the centre `size` px of the slide candidates' crops (no figures there)."""
    neg = np.flatnonzero(samples.labels == 0)
    o = (samples.crops.shape[1] - size) // 2
    return WeakSet(np.ascontiguousarray(samples.crops[neg, o:o + size, o:o + size]), np.zeros(len(neg), np.int64),
                   [np.zeros((0, 2))] * len(neg))


def dihedral(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k, flip = rng.integers(4), rng.integers(2)
    out = np.rot90(images, k, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if flip else out)


class StrongAugment:
    """The paper's strong augmentation: optical and grid distortion (albumentations), then flips and rotations."""

    def __init__(self, seed: int):
        try:
            import albumentations as A
        except ImportError:
            raise ValueError("the UTS teacher's strong augmentation needs albumentations: pip install 'mitoqp[train]'") from None
        self.seed = seed
        self.transform = A.Compose(self.distortions(), seed=seed)
        self.with_points = None

    @staticmethod
    def distortions() -> list:
        import albumentations as A

        return [A.OpticalDistortion(distort_limit=0.5, p=0.8), A.GridDistortion(num_steps=5, distort_limit=0.3, p=0.8)]

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.stack([self.transform(image=im)["image"] for im in images])
        return dihedral(out, rng)

    def distort_points(self, images: np.ndarray, figures: list) -> tuple[np.ndarray, list]:
        """The distortions alone, the figure points moved with them (for point labels; no flips yet)."""
        if self.with_points is None:
            import albumentations as A

            self.with_points = A.Compose(self.distortions(), seed=self.seed,
                                         keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
        out, moved = [], []
        for im, figs in zip(images, figures):
            figs = np.asarray(figs, float).reshape(-1, 2)
            r = self.with_points(image=im, keypoints=figs.astype(np.float32))
            pts = np.asarray(r["keypoints"], float).reshape(-1, 2)
            if len(pts) != len(figs):  # albumentations lost a point it could not map back: keep this image undistorted
                r["image"], pts = im, figs
            out.append(r["image"])
            moved.append(pts)
        return np.stack(out), moved


def glass_edges(images: np.ndarray, figures: list, share: float, rng: np.random.Generator, clear_px: float,
                min_px: int = 6) -> np.ndarray:
    """A copy of the images where a share ends at glass: a band along one side, up to half the image, glass-white.

    The runtime runs a field, and a slide's border, in a glass-white tile; crops of tissue alone never show a
    network that edge. The band stops `clear_px` short of every figure, so no label changes; an image where
    that leaves less than `min_px` of band stays whole.
    """
    images = images.copy()
    size = images.shape[1]
    for i in np.flatnonzero(rng.random(len(images)) < share):
        side = int(rng.integers(4))  # glass at left, right, top, bottom
        depth = int(rng.integers(min_px, size // 2 + 1))
        figs = np.asarray(figures[i], float).reshape(-1, 2)
        if len(figs):
            coord = figs[:, side // 2]  # x for left/right, y for top/bottom
            room = coord if side % 2 == 0 else size - coord
            depth = min(depth, int(np.floor(room.min() - clear_px)))
        if depth < min_px:
            continue
        band = slice(0, depth) if side % 2 == 0 else slice(size - depth, size)
        if side < 2:
            images[i, :, band] = PAD_VALUE
        else:
            images[i, band] = PAD_VALUE
    return images


def point_batch(images: np.ndarray, figures: list, augment: "StrongAugment | None", rng: np.random.Generator,
                stride: int, positive_px: float, ignore_px: float, glass_share: float = 0.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented images with their centre-map targets and weights (point labels)."""
    from mitoqp.training.pointmap import dihedral_pair, point_targets  # pointmap imports this module

    if augment is not None:
        images, figures = augment.distort_points(images, figures)
    if glass_share > 0:
        images = glass_edges(images, figures, glass_share, rng, ignore_px)
    target, weight = point_targets(figures, images.shape[1], stride, positive_px, ignore_px)
    images, (target, weight) = dihedral_pair(images, [target, weight], rng)
    return images, target, weight


def field_maps(model: WeakFCN, fields: list[Field], batch: int = 64, glass_px: int = 0) -> list[np.ndarray]:
    """The probability map of each whole field (all fields share a size); `glass_px` > 0 sets each field in that
    much glass-white first, as the runtime runs it (a multiple of the stride)."""
    maps = []
    cut = glass_px // model.stride
    model.eval()
    with torch.no_grad():
        for i in range(0, len(fields), batch):
            x = np.stack([f.image() for f in fields[i:i + batch]])
            x = np.pad(x, ((0, 0), (glass_px, glass_px), (glass_px, glass_px), (0, 0)), constant_values=PAD_VALUE)
            m = model(torch.from_numpy(x).permute(0, 3, 1, 2).float())[:, 0].numpy()
            maps += list(m[:, cut:m.shape[1] - cut, cut:m.shape[2] - cut])
    return maps


def localisation(model: WeakFCN, fields: list[Field], radius_um: float, min_distance_um: float,
                 floor: float = 0.05) -> dict:
    """Peaks of each validation field's map matched to its figures: the recipe's FROC, HPF-F1 and mean recall."""
    matches, area_mm2 = [], 0.0
    for f, m in zip(fields, field_maps(model, fields, glass_px=context_px(model))):  # as the runtime sees a field
        xy, s = find_peaks(m, floor, min_distance_um / (f.mpp * model.stride))
        xy = xy * model.stride + (model.stride - 1) / 2
        matches.append(match_detections(xy, s, f.figures, radius_um / f.mpp, f.lookalikes))
        area_mm2 += float(np.prod(m.shape)) * (model.stride * f.mpp / 1000) ** 2
    return froc_summary(matches, area_mm2)


def image_scores(model: WeakFCN, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Image-level scores on the maps' own scale (the maximum of each map), so a threshold on them applies to maps."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float()).amax(dim=(1, 2, 3))
                               .numpy() for i in range(0, len(images), batch)] or [np.zeros(0)])


def roc_operating_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The ROC operating point (Youden's J) of the image-level scores: the paper's mask threshold."""
    order = np.unique(scores)
    best, cut = -1.0, 0.5
    for t in order:
        j = (scores[labels == 1] >= t).mean() - (scores[labels == 0] >= t).mean()
        if j > best:
            best, cut = j, float(t)
    return cut


def distil(teacher: WeakFCN, positives: WeakSet, threshold: float, tau_px: float) -> np.ndarray:
    """Eqs. 2, 4, 5: keep a positive image iff a teacher object's weighted centroid lies within tau of a figure."""
    keep = np.zeros(len(positives.labels), bool)
    teacher.eval()
    s = teacher.stride
    with torch.no_grad():
        for i in range(0, len(keep), 256):
            x = torch.from_numpy(positives.images[i:i + 256]).permute(0, 3, 1, 2).float()
            for j, h in enumerate(teacher(x)[:, 0].numpy()):
                labels, n = ndimage.label(h >= threshold)
                if n == 0:
                    continue
                cy, cx = np.asarray(ndimage.center_of_mass(h, labels, range(1, n + 1))).reshape(-1, 2).T
                centroids = np.stack([cx * s + (s - 1) / 2, cy * s + (s - 1) / 2], axis=1)
                figs = positives.figures[i + j]
                if len(figs):
                    d = np.hypot(*(centroids[:, None, :] - figs[None, :, :]).transpose(2, 0, 1))
                    keep[i + j] = bool((d < tau_px).any())
    return keep


def fit(model: WeakFCN, train_set: WeakSet, val_images: WeakSet, val_fields: list[Field], t_cfg: dict, strong: bool,
        name: str, run_dir: Path, log, radius_um: float, min_distance_um: float) -> tuple[dict, dict]:
    """Train on image labels (class-balanced batches, BCE on the max-aggregated logit), or with `train.labels =
    "points"` on the same batches' figure points (centre map, focal loss); the best state by mean recall."""
    seed = int(t_cfg.get("seed", 0))
    rng = np.random.default_rng(seed)
    epochs, batch = int(t_cfg.get("epochs", 40)), int(t_cfg.get("batch", 64))
    steps = max(1, int(t_cfg.get("epoch_samples", 8000)) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=float(t_cfg.get("lr", 1e-3)), weight_decay=float(t_cfg.get("weight_decay", 1e-4)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(t_cfg.get("lr", 1e-3)), total_steps=epochs * steps)
    augment = StrongAugment(seed) if strong else None
    points = label_type(t_cfg) == "points"
    if points:
        from mitoqp.training.rdlm import rdlm_focal_loss  # it imports pointmap, which imports this module
    positive_px, ignore_px = float(t_cfg.get("positive_um", 3.0)) / 0.25, float(t_cfg.get("ignore_um", 6.0)) / 0.25
    glass_share = float(t_cfg.get("glass_share", 0.0))
    if glass_share and not points:
        raise ValueError("train.glass_share needs train.labels = \"points\" (image labels keep the paper's crops)")
    pos, neg = np.flatnonzero(train_set.labels == 1), np.flatnonzero(train_set.labels == 0)
    best, best_state = {"mean_recall": -1.0}, None
    for epoch in range(1, epochs + 1):
        model.train()
        te = time.time()
        losses = []
        for _ in range(steps):
            idx = np.concatenate([rng.choice(pos, batch // 2), rng.choice(neg, batch - batch // 2)])
            images = train_set.images[idx]
            if points:
                images, target, weight = point_batch(images, [train_set.figures[i] for i in idx], augment, rng,
                                                     model.stride, positive_px, ignore_px, glass_share)
                x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
                loss = rdlm_focal_loss(model.logit_maps(x)[:, 0], torch.from_numpy(target), torch.from_numpy(weight))
            else:
                images = augment(images, rng) if augment is not None else dihedral(images, rng)
                x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
                y = torch.from_numpy(train_set.labels[idx]).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model.image_logits(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        metrics = localisation(model, val_fields, radius_um, min_distance_um)
        metrics["image_auc"] = roc_auc(val_images.labels == 1, image_scores(model, val_images.images))
        metrics.update(stage=name, epoch=epoch, loss=float(np.mean(losses)), seconds=time.time() - te)
        log(f"{name} epoch {epoch}: loss {metrics['loss']:.4f} image AUC {metrics['image_auc']:.4f} HPF-F1 "
            f"{metrics['hpf_f1']:.3f} (recall {metrics['recall']:.3f}, {metrics['fp_per_mm2']:.1f} FP/mm2 at "
            f"t={metrics['threshold']:.3f}) mean recall {metrics['mean_recall']:.3f} {metrics['seconds']:.0f}s")
        best, best_state = record_epoch(metrics, run_dir, model, best, best_state)
    model.load_state_dict(best_state)
    return best, best_state


def label_type(t_cfg: dict) -> str:
    labels = str(t_cfg.get("labels", "image"))
    if labels not in ("image", "points"):
        raise ValueError(f"train.labels {labels!r}: choose image (the paper's) or points")
    return labels


def context_px(model: WeakFCN) -> int:
    """The input cut from each tile edge at run time: the receptive radius, rounded up to whole output pixels."""
    return -(-receptive_radius(model) // model.stride) * model.stride


def load_teacher(teacher: WeakFCN, path: Path) -> tuple[dict, dict]:
    """(validation metrics, state) of a teacher.pt that a run of this recipe wrote, loaded into `teacher`.

    Why: the student is what comes after 40 teacher epochs; a run stopped after the teacher goes on from here,
    and, with the same seed and data, trains the very student the whole run would have.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("method") != "uts" or ckpt.get("stage") != "teacher":
        raise ValueError(f"{path}: not a UTS teacher checkpoint (method {ckpt.get('method')}, stage {ckpt.get('stage')})")
    teacher.load_state_dict(ckpt["state_dict"])
    return dict(ckpt["val_metrics"]), ckpt["state_dict"]


def train_uts(cfg: dict, train_fields: list[Field], val_fields: list[Field], run_dir: Path, log=print,
              slide_samples: list[SampleSet] | None = None) -> dict:
    """Teacher, distillation, student; writes teacher.pt and best.pt (the student) into `run_dir`."""
    run = start_dense(cfg, run_dir)
    t_cfg, m_cfg, d_cfg, seed = run.train, run.model, run.dense, run.seed
    radius_um, min_distance_um = run.radius_um, run.min_distance_um
    size = int(m_cfg.get("image", 48))
    rng = np.random.default_rng(seed)
    t0 = time.time()
    per_field = int(t_cfg.get("images_per_field", 2))
    train_set = field_images(train_fields, size, rng, per_field)
    if slide_samples:
        train_set = WeakSet.concat([train_set, *[slide_images(s, size) for s in slide_samples]])
    val_images = field_images(val_fields, size, np.random.default_rng(seed + 1), 1)
    log(f"images of {size} px: train {int(train_set.labels.sum())} positive / {int((train_set.labels == 0).sum())} "
        f"negative, validation {int(val_images.labels.sum())} / {int((val_images.labels == 0).sum())} ({time.time() - t0:.0f}s)")

    def save(model: WeakFCN, metrics: dict, state: dict, path: Path, stage: str) -> None:
        save_dense(model, "uts", stage, cfg, metrics, state, path, context_px(model))

    teacher = build_fcn(m_cfg)
    log(f"model: {sum(p.numel() for p in teacher.parameters())} parameters, "
        f"{count_macs(teacher, int(d_cfg.get('tile', 512))) / 1e6:.1f} M MACs per {d_cfg.get('tile', 512)}-px tile, "
        f"receptive radius {receptive_radius(teacher)} px")
    if t_cfg.get("teacher_from"):  # a finished teacher: distil and train the student only
        t_best, t_state = load_teacher(teacher, Path(t_cfg["teacher_from"]))
        log(f"teacher from {t_cfg['teacher_from']} (epoch {t_best.get('epoch')}, mean recall {t_best['mean_recall']:.3f})")
    else:
        t_best, t_state = fit(teacher, train_set, val_images, val_fields, t_cfg, True, "teacher", run_dir, log,
                              radius_um, min_distance_um)
    save(teacher, t_best, t_state, run_dir / "teacher.pt", "teacher")
    if label_type(t_cfg) == "points":
        log(f"point labels: nothing to distil, the teacher is the model (mean recall {t_best['mean_recall']:.3f}, "
            f"HPF-F1 {t_best['hpf_f1']:.3f} at threshold {t_best['threshold']:.4f})")
        save(teacher, t_best, t_state, run_dir / "best.pt", "teacher")
        return t_best
    threshold = roc_operating_threshold(val_images.labels, image_scores(teacher, val_images.images))
    positive = train_set.labels == 1
    kept = distil(teacher, train_set.select(positive), threshold, radius_um / 0.25)
    keep = ~positive
    keep[np.flatnonzero(positive)[kept]] = True
    log(f"distillation at map threshold {threshold:.3f}: kept {int(kept.sum())} of {int(positive.sum())} positive images")
    torch.manual_seed(seed)
    student = build_fcn(m_cfg)
    s_best, s_state = fit(student, train_set.select(keep), val_images, val_fields, t_cfg, False, "student", run_dir, log,
                          radius_um, min_distance_um)
    s_best["distilled_positives"] = [int(kept.sum()), int(positive.sum())]
    save(student, s_best, s_state, run_dir / "best.pt", "student")
    log(f"teacher: mean recall {t_best['mean_recall']:.3f}, HPF-F1 {t_best['hpf_f1']:.3f}; "
        f"student: mean recall {s_best['mean_recall']:.3f}, HPF-F1 {s_best['hpf_f1']:.3f} at threshold {s_best['threshold']:.4f}")
    return s_best
