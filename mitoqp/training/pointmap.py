"""Training dense models from point labels: crops with their figures, target maps, the epoch loop.

Shared by the dense recipes that learn a map from where the figures are (RDLM,
MiNuGAN); UTS learns from image labels and draws its own images.

Every AMi-Br field is 128 px centred on a figure. A network whose view spans
the field (RDLM's pyramid sees ~300 px) learns "the middle of the tissue is a
mitosis" from plain crops of fields: a crop of 96 px holds its figure within
16 px of its centre, and a few training steps of RDLM scored 0.94 validation
recall at no false detection that way. So a training crop is composed: a
rectangle of random size cut from a field, holding its figure at a random
place, pasted at a random place onto tissue from the real slides' training
halves (no figures there). Neither the crop's nor the rectangle's middle says
where a figure is. Plain slide crops are the rest of each batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mitoqp.datasets import Field
from mitoqp.patches import PAD_VALUE, extract_patches
from mitoqp.training.augment import hed_jitter
from mitoqp.training.dense_run import record_epoch
from mitoqp.training.samples import SampleSet
from mitoqp.training.uts import field_maps, localisation

FIELD = 128  # px: AMi-Br fields


@dataclass
class CropSource:
    """What training crops are cut from: whole fields with their figures, and figure-free slide crops."""

    fields: np.ndarray  # (F, FIELD, FIELD, 3) uint8
    figures: list  # per field, (k, 2) figure centres in its pixels
    negatives: np.ndarray  # (M, T, T, 3) uint8, no figure

    @staticmethod
    def build(fields: list[Field], slide_samples: list[SampleSet] | None = None) -> "CropSource":
        images, figures = [], []
        for f in fields:
            img = f.image()
            if img.shape[:2] != (FIELD, FIELD):  # a field of another size: its centre FIELD px
                off = np.array([img.shape[1] // 2 - FIELD // 2, img.shape[0] // 2 - FIELD // 2])
                img = extract_patches(img, np.array([[img.shape[1] / 2, img.shape[0] / 2]]), FIELD)[0]
                figs = np.asarray(f.figures, float).reshape(-1, 2) - off
            else:
                figs = np.asarray(f.figures, float).reshape(-1, 2)
            images.append(img)
            figures.append(figs)
        negs = [s.crops[s.labels == 0] for s in slide_samples or [] if (s.labels == 0).any()]
        size = min((n.shape[1] for n in negs), default=FIELD)
        negs = [n[:, (n.shape[1] - size) // 2:(n.shape[1] - size) // 2 + size,
                  (n.shape[2] - size) // 2:(n.shape[2] - size) // 2 + size] for n in negs]
        return CropSource(np.stack(images), figures,
                          np.concatenate(negs) if negs else np.zeros((0, size, size, 3), np.uint8))

    def draw(self, size: int, batch: int, slide_share: float, rng: np.random.Generator,
             min_rect: int = 40, margin: int = 8, glass_share: float = 0.0) -> tuple[np.ndarray, list]:
        """`batch` composed crops of `size` px (see the module's note), a share `slide_share` slide tissue only.

        A share `glass_share` of the crops is glass (the runtime's padding white)
        with a rectangle of tissue on it: a slide's tissue ends at glass, and a
        field run alone sits in a glass-white tile. The same share of the slide
        crops gets it too, a rectangle of figure-free slide tissue on glass; were
        only field rectangles put on glass, tissue on glass would always hold a
        figure, and the network would learn that instead.
        Returns the crops and the figure centres in each crop's pixels.
        """
        n_slide = int(round(batch * slide_share)) if len(self.negatives) else 0
        out = np.empty((batch, size, size, 3), np.uint8)
        figures = []
        for i in range(batch):
            if i >= batch - n_slide:
                out[i] = self.background(size, rng)
                if glass_share > 0 and rng.random() < glass_share:  # a rectangle of the slide tissue, on glass
                    w, h = (int(v) for v in rng.integers(min_rect, min(size, FIELD) + 1, 2))
                    rx, ry = (int(v) for v in rng.integers(0, [size - w + 1, size - h + 1]))
                    cx, cy = (int(v) for v in rng.integers(0, [size - w + 1, size - h + 1]))
                    rect = out[i, ry:ry + h, rx:rx + w].copy()
                    out[i] = PAD_VALUE
                    out[i, cy:cy + h, cx:cx + w] = rect
                figures.append(np.zeros((0, 2)))
                continue
            glass = rng.random() < glass_share
            out[i] = PAD_VALUE if glass else self.background(size, rng)
            j = int(rng.integers(0, len(self.fields)))
            figs = self.figures[j]
            w, h = (int(v) for v in rng.integers(min_rect, min(size, FIELD) + 1, 2))
            f = figs[np.argmin(np.hypot(*(figs - FIELD / 2).T))] if len(figs) else np.array([FIELD / 2, FIELD / 2])
            fx, fy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)  # figure's place in the rectangle
            rx = int(np.clip(np.rint(f[0] - fx), 0, FIELD - w))
            ry = int(np.clip(np.rint(f[1] - fy), 0, FIELD - h))
            cx, cy = (int(v) for v in rng.integers(0, [size - w + 1, size - h + 1]))
            out[i, cy:cy + h, cx:cx + w] = self.fields[j, ry:ry + h, rx:rx + w]
            inside = np.all((figs >= [rx, ry]) & (figs < [rx + w, ry + h]), axis=1) if len(figs) else np.zeros(0, bool)
            figures.append(figs[inside] - [rx - cx, ry - cy])
        return out, figures

    def background(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Figure-free tissue: a random window of a slide crop (tiled when crops are smaller), or glass."""
        if len(self.negatives) == 0:
            return np.full((size, size, 3), 240, np.uint8)
        t = self.negatives.shape[1]
        reps = -(-size // t)
        tile = np.concatenate([np.concatenate([self.negatives[int(rng.integers(len(self.negatives)))] for _ in range(reps)], 1)
                               for _ in range(reps)], 0) if reps > 1 else self.negatives[int(rng.integers(len(self.negatives)))]
        x0, y0 = rng.integers(0, tile.shape[0] - size + 1, 2)
        return tile[y0:y0 + size, x0:x0 + size]


def load_crop_source(fields: list[Field], slide_samples: list[SampleSet] | None, size: int, log) -> CropSource:
    """The crops a dense recipe draws from, and the log line that says how many."""
    t0 = time.time()
    source = CropSource.build(fields, slide_samples)
    log(f"crops of {size} px from {len(source.fields)} fields and {len(source.negatives)} slide crops "
        f"({time.time() - t0:.0f}s)")
    return source


def point_targets(figures: list, size: int, stride: int, positive_px: float, ignore_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: 1 within `positive_px` of a figure, weight 0 in the ring out to `ignore_px` (unsure), else 0."""
    n = size // stride
    c = np.arange(n) * stride + (stride - 1) / 2
    gx, gy = np.meshgrid(c, c)
    target = np.zeros((len(figures), n, n), np.float32)
    weight = np.ones((len(figures), n, n), np.float32)
    for i, figs in enumerate(figures):
        if len(figs) == 0:
            continue
        d = np.min(np.hypot(gx[None] - figs[:, 0, None, None], gy[None] - figs[:, 1, None, None]), axis=0)
        target[i] = d <= positive_px
        weight[i] = (d <= positive_px) | (d > ignore_px)
    return target, weight


def dihedral_pair(images: np.ndarray, maps: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """The same rotation and flip of (N, H, W, C) images and of (N, h, w) maps."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))

    def t(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(1, 2))
        return np.ascontiguousarray(a[:, :, ::-1] if flip else a)

    return t(images), [t(m) for m in maps]


def to_input(images: np.ndarray, t_cfg: dict, gen: torch.Generator) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float 0..255 with the recipes' stain jitter."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return hed_jitter(x, float(t_cfg.get("stain_sigma", 0.05)), float(t_cfg.get("stain_bias", 0.05)), gen)


def fit_dense(model: torch.nn.Module, step: Callable[[np.ndarray, list, np.random.Generator, torch.Generator], float], source: CropSource,
              val_fields: list[Field], t_cfg: dict, size: int, name: str, run_dir: Path, log, radius_um: float,
              min_distance_um: float, optimisers: list) -> tuple[dict, dict]:
    """Epochs of `step(crops, figures, rng, gen) -> loss`; after each, localisation on the validation fields.

    The state with the best mean recall over 1-64 false detections per mm^2 is kept, as in every mitoqp recipe.
    `train.ema_decay` > 0 judges and keeps an exponential moving average of the weights instead (buffers too),
    which steadies a network whose weights swing from step to step, as a GAN's generator does.
    """
    seed = int(t_cfg.get("seed", 0))
    ema_decay = float(t_cfg.get("ema_decay", 0.0))
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay),
                                               use_buffers=True) if ema_decay > 0 else None)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    epochs, batch = int(t_cfg.get("epochs", 30)), int(t_cfg.get("batch", 32))
    steps = max(1, int(t_cfg.get("epoch_samples", 4000)) // batch)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=o.param_groups[0]["lr"], total_steps=epochs * steps)
              for o in optimisers]
    best, best_state = {"mean_recall": -1.0}, None
    for epoch in range(1, epochs + 1):
        te = time.time()
        losses = []
        for _ in range(steps):
            crops, figures = source.draw(size, batch, float(t_cfg.get("slide_share", 0.25)), rng,
                                         glass_share=float(t_cfg.get("glass_share", 0.0)))
            model.train()
            losses.append(step(crops, figures, rng, gen))
            for s in scheds:
                s.step()
            if ema is not None:
                ema.update_parameters(model)
        judged = ema.module if ema is not None else model
        metrics = localisation(judged, val_fields, radius_um, min_distance_um)
        metrics.update(stage=name, epoch=epoch, loss=float(np.mean(losses)), seconds=time.time() - te)
        log(f"{name} epoch {epoch}: loss {metrics['loss']:.4f} HPF-F1 {metrics['hpf_f1']:.3f} (recall "
            f"{metrics['recall']:.3f}, {metrics['fp_per_mm2']:.1f} FP/mm2 at t={metrics['threshold']:.3f}) "
            f"mean recall {metrics['mean_recall']:.3f} {metrics['seconds']:.0f}s")
        best, best_state = record_epoch(metrics, run_dir, judged, best, best_state)
    model.load_state_dict(best_state)
    return best, best_state


def effective_context(model: torch.nn.Module, size: int = 768, mass: float = 0.999, multiple: int = 32) -> int:
    """Input pixels from an output position out to where `mass` of its input gradient lies, rounded up to `multiple`.

    A deep pyramid's theoretical receptive field spans hundreds of pixels of
    which the outermost carry almost nothing; cutting tiles at the effective
    radius instead keeps seams within what the rest contributes (measured in
    tests) at a fraction of the overlap.
    """
    x = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_(True)
    model.eval()
    out = model.logit_maps(x)
    c = out.shape[-1] // 2
    out[0, 0, c, c].backward()
    g = x.grad.abs().sum(dim=(0, 1)).numpy()
    centre = c * model.stride + (model.stride - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    r = np.maximum(np.abs(xx - centre), np.abs(yy - centre)).ravel()
    order = np.argsort(r)
    cum = np.cumsum(g.ravel()[order]) / g.sum()
    radius = float(r[order][min(np.searchsorted(cum, mass), len(order) - 1)])
    return int(-(-np.ceil(radius) // multiple) * multiple)


@dataclass
class WindowField:
    """A window cut from a field, held in memory (what `localisation` needs of a Field)."""

    pixels: np.ndarray
    figures: np.ndarray
    lookalikes: np.ndarray
    mpp: float

    def image(self) -> np.ndarray:
        return self.pixels


def embedded_fields(fields: list[Field], source: CropSource, canvas: int, rng: np.random.Generator) -> list[WindowField]:
    """Each field pasted at a random place onto figure-free slide tissue of `canvas` px.

    The check of a dense model's honesty on fields centred on their figure: one
    that learnt "the middle of the tissue is a mitosis" loses recall here (the
    tissue no longer ends at the field's edge); one that looks at the figure
    does not. Its FROC counts the whole canvas as area.
    """
    out = []
    for f in fields:
        img = f.image()
        h, w = img.shape[:2]
        x0, y0 = (int(v) for v in rng.integers(0, [canvas - w + 1, canvas - h + 1]))
        pixels = source.background(canvas, rng).copy()
        pixels[y0:y0 + h, x0:x0 + w] = img[..., :3]
        shift = np.array([x0, y0])
        out.append(WindowField(pixels, np.asarray(f.figures, float).reshape(-1, 2) + shift,
                               np.asarray(f.lookalikes, float).reshape(-1, 2) + shift, f.mpp))
    return out


def centre_cue_check(model: torch.nn.Module, fields: list[Field], source: CropSource, radius_um: float,
                     threshold: float, canvas: int = 256, seed: int = 0) -> dict:
    """Does the model score a figure for where it sits in the field? The fields as they are, and pasted onto tissue.

    Per field: the figure's score (the map's maximum within the match radius of
    it), whether it reaches `threshold`, and whether it is the top of the map
    (above everything farther than twice the radius from it). A model that
    learnt "the middle of the tissue is a mitosis" tops its map at the figure in
    a field centred on it, but not once the tissue goes on past the field's
    edge; one that looks at the figure does both. (A FROC of the pasted canvases
    would mostly count false detections on the artificial seams: not used.)
    """
    pasted = embedded_fields(fields, source, canvas, np.random.default_rng(seed))
    out = {"plain": {"score": [], "top": []}, "pasted": {"score": [], "top": []}}
    for f, e, m_plain, m_moved in zip(fields, pasted, field_maps(model, fields), field_maps(model, pasted)):
        figs = np.asarray(f.figures, float).reshape(-1, 2)
        if not len(figs):
            continue
        k = int(np.argmin(np.hypot(*(figs - np.median(figs, 0)).T)))
        r = radius_um / (f.mpp * model.stride)
        for key, c, m in (("plain", figs[k], m_plain), ("pasted", e.figures[k], m_moved)):
            yy, xx = np.mgrid[:m.shape[0], :m.shape[1]]
            d = np.hypot(xx - c[0] / model.stride, yy - c[1] / model.stride)
            score = float(m[d <= r].max())
            out[key]["score"].append(score)
            out[key]["top"].append(bool(score > m[d > 2 * r].max(initial=0.0)))
    summary = {"figures": len(out["plain"]["score"]), "threshold": threshold}
    for key in ("plain", "pasted"):
        sc = np.array(out[key]["score"])
        summary[key] = {"median_score": float(np.median(sc)), "detected": float((sc >= threshold).mean()),
                        "top_of_map": float(np.mean(out[key]["top"]))}
    return summary


def report_centre_cue(model: torch.nn.Module, fields: list[Field], source: CropSource, radius_um: float, best: dict,
                      log) -> None:
    """`centre_cue_check` at the kept state's threshold, logged and stored in its metrics."""
    check = centre_cue_check(model, fields, source, radius_um, best["threshold"])
    best["centre_cue_check"] = check
    log(f"centre-cue check on validation: figures detected {check['plain']['detected']:.3f} in their fields, "
        f"{check['pasted']['detected']:.3f} pasted onto slide tissue; top of the map {check['plain']['top_of_map']:.3f} / "
        f"{check['pasted']['top_of_map']:.3f}")
