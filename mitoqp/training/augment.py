"""Training augmentation on uint8 crops, batched in torch.

Random centre jitter, flips and right-angle rotations, optionally a random
magnification (`scale_jitter`), a Fourier amplitude mix between patches
(`amp_mix_p`), stain augmentation and brightness/contrast.
Stain augmentation is either HED-space jitter (scale and shift of each
stain's density, Tellez et al. 2018) or `MacenkoStainAugment`,
which draws new H and E vectors and densities from the spread measured on the
real training slides (`mitoqp stain-survey`), widened by a factor. Positives
also get the padding geometry of random negatives, so the classifier cannot
tell the classes by their borders.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mitoqp.patches import PAD_VALUE
from mitoqp.stain import RUIFROK_STAIN_FROM_OD, stain_matrix

_STAIN_FROM_OD = torch.tensor(RUIFROK_STAIN_FROM_OD, dtype=torch.float32)
_OD_FROM_STAIN = torch.tensor(stain_matrix(), dtype=torch.float32)


def match_borders(crops: np.ndarray, labels: np.ndarray, valid: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Copy of `crops` where a share `p` of positives is padded like a randomly drawn negative."""
    crops = crops.copy()
    neg = np.flatnonzero(labels == 0)
    if len(neg) == 0:
        return crops
    size = crops.shape[1]
    for i in np.flatnonzero((labels == 1) & (rng.random(len(labels)) < p)):
        x0, y0, x1, y1 = valid[rng.choice(neg)]
        if x0 == 0 and y0 == 0 and x1 == size and y1 == size:
            continue
        keep = crops[i, y0:y1, x0:x1].copy()
        crops[i] = PAD_VALUE
        crops[i, y0:y1, x0:x1] = keep
    return crops


def hed_jitter(x: torch.Tensor, sigma: float, bias: float, gen: torch.Generator) -> torch.Tensor:
    """x: (N, 3, H, W) float 0..255. Scales and shifts each stain's density per sample."""
    n = x.shape[0]
    od = -torch.log10(torch.clamp(x, min=1.0) / 255.0)
    stains = torch.einsum("nchw,cs->nshw", od, _STAIN_FROM_OD)
    alpha = 1 + (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * sigma
    beta = (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * bias
    background = (od.sum(1, keepdim=True) < 0.05)  # leave glass and padding white
    stains = stains * alpha + beta * (~background)
    od = torch.einsum("nshw,sc->nchw", stains, _OD_FROM_STAIN)
    return torch.clamp(255.0 * torch.pow(10.0, -od), 0, 255)


class MacenkoStainAugment:
    """Recolour each sample with H and E vectors and densities drawn around the training slides' own.

    Densities are taken with the training mean vectors, scaled by a draw from the
    slides' spread of 99th-percentile densities, and recomposed with vectors drawn
    from the slides' spread of Macenko vectors; both spreads are multiplied by `exceed`.
    """

    def __init__(self, survey: dict, exceed: float):
        t = survey["training"]
        self.h_mean, self.e_mean = torch.tensor(t["h_mean"]), torch.tensor(t["e_mean"])
        self.h_std, self.e_std = torch.tensor(t["h_std"]) * exceed, torch.tensor(t["e_std"]) * exceed
        self.log_scale_std = torch.tensor(t["log_max_conc_std"]) * exceed
        ref = stain_matrix(np.array([t["h_mean"], t["e_mean"]]))
        self.stain_from_od = torch.tensor(np.linalg.inv(ref), dtype=torch.float32)

    def draw_matrices(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 3, 3) rgb-from-stain matrices: H, E drawn, and their normalised cross product."""
        h = (self.h_mean + torch.randn(n, 3, generator=gen) * self.h_std).abs()
        e = (self.e_mean + torch.randn(n, 3, generator=gen) * self.e_std).abs()
        h, e = F.normalize(h, dim=1), F.normalize(e, dim=1)
        return torch.stack([h, e, F.normalize(torch.linalg.cross(h, e), dim=1)], dim=1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        od = -torch.log10(torch.clamp(x, min=1.0) / 255.0)
        stains = torch.einsum("nchw,cs->nshw", od, self.stain_from_od)
        scale = torch.ones(n, 3, 1, 1)
        scale[:, :2, 0, 0] = torch.exp(torch.randn(n, 2, generator=gen) * self.log_scale_std)
        new = torch.einsum("nshw,nsc->nchw", stains * scale, self.draw_matrices(n, gen))
        background = od.sum(1, keepdim=True) < 0.05  # glass and padding stay as they are
        new = torch.where(background, od, new)
        return torch.clamp(255.0 * torch.pow(10.0, -new), 0, 255)


def stain_augmenter(cfg: dict) -> MacenkoStainAugment | None:
    """The recipe's Macenko augmentation (`stain_aug = "macenko"`, with its `stain_survey` file), else None."""
    if cfg.get("stain_aug", "hed") == "hed":
        return None
    if cfg["stain_aug"] != "macenko":
        raise ValueError(f"train.stain_aug must be hed or macenko, not {cfg['stain_aug']!r}")
    import json

    path = cfg.get("stain_survey", "configs/stain_survey.json")
    try:
        survey = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the stain survey {path} (make it with mitoqp stain-survey): {exc}") from None
    return MacenkoStainAugment(survey, float(cfg.get("stain_exceed", 1.5)))


def lowres_jitter(x: torch.Tensor, p: float, max_factor: float, gen: torch.Generator) -> torch.Tensor:
    """Blur a share `p` of the batch as a scan at up to `max_factor` times coarser resolution would be (20x optics)."""
    if p <= 0:
        return x
    sel = torch.rand(x.shape[0], generator=gen) < p
    if not sel.any():
        return x
    f = 1 + float(torch.rand(1, generator=gen)) * (max_factor - 1)
    size = x.shape[-1]
    small = F.interpolate(x[sel], size=max(4, int(round(size / f))), mode="bilinear", antialias=True, align_corners=False)
    x = x.clone()
    x[sel] = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return x


def zoom_windows(crops: torch.Tensor, patch: int, side: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) -> (N, 3, patch, patch): the square of `side` source pixels centred `offset` (N, 2; x, y)
    pixels from each crop's centre, resampled bilinearly to `patch` pixels."""
    n, s = crops.shape[0], crops.shape[-1]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = side / s
    theta[:, :, 2] = 2 * offset / s
    grid = F.affine_grid(theta, [n, 3, patch, patch], align_corners=False)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)


def scaled_views(crops: np.ndarray, patch: int, scale: float, rng: np.random.Generator) -> torch.Tensor:
    """Random views at a magnification drawn log-uniformly within 1/(1 + scale) .. 1 + scale.

    Scanners differ in pixel size (MIDOG 2021's from 0.23 to 0.26 um) and tumours in nuclear size; the
    runtime resamples to 0.25 um/px by the file's own resolution, so what is left is this spread. The
    source window never leaves the crop: the centre shift shrinks as the window grows.
    """
    n, s = crops.shape[0], crops.shape[1]
    limit = np.log(1 + scale)
    zoom = np.maximum(np.exp(rng.uniform(-limit, limit, n)), patch / s)
    side = patch / zoom
    room = np.minimum((s - side) / 2, (s - patch) / 2)
    offset = rng.uniform(-1, 1, (n, 2)) * room[:, None]
    t = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    x = zoom_windows(t, patch, torch.from_numpy(side).float(), torch.from_numpy(offset).float())
    turns, mirror = rng.integers(4, size=n), rng.random(n) < 0.5
    for k in range(1, 4):
        sel = np.flatnonzero(turns == k)
        x[sel] = torch.rot90(x[sel], k, dims=(2, 3))
    x[mirror] = torch.flip(x[mirror], dims=(3,))
    return x.round()


def amplitude_mix(x: torch.Tensor, p: float, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Give a share `p` of the batch part of another patch's Fourier amplitude, keeping its own phase.

    FACT's amplitude mix (Xu et al., CVPR 2021): the phase holds where the nuclei and their edges are, the
    amplitude much of what a scanner changes (contrast at each scale, sharpness, colour balance), so a
    figure is seen with the look of another source. Each chosen patch takes (1 - l) of its own amplitude
    and l of a random batch partner's, l ~ U(0, `strength`), per channel; the result is clamped to 0..255.
    The recipe's default strength is 0.5, not FACT's 1: looked at on AMi-Br training patches, a whole
    partner's amplitude (l near 1) sometimes leaves a figure unreadable, a half never did.
    """
    if p <= 0:
        return x
    if not 0 < strength <= 1:
        raise ValueError(f"train.amp_mix_strength must be within (0, 1], not {strength}")
    n = x.shape[0]
    sel = torch.rand(n, generator=gen) < p
    partner = torch.randperm(n, generator=gen)
    share = torch.rand(n, 1, 1, 1, generator=gen) * strength
    if not sel.any():
        return x
    own = torch.fft.fft2(x[sel])
    other = torch.fft.fft2(x[partner[sel]]).abs()
    amplitude = (1 - share[sel]) * own.abs() + share[sel] * other
    x = x.clone()
    x[sel] = torch.fft.ifft2(torch.polar(amplitude, own.angle())).real.clamp(0, 255)
    return x


def augment_batch(crops: np.ndarray, patch: int, cfg: dict, rng: np.random.Generator, gen: torch.Generator,
                  stain: MacenkoStainAugment | None = None) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, patch, patch) float 0..255, augmented."""
    n, s = crops.shape[0], crops.shape[1]
    scale = float(cfg.get("scale_jitter", 0.0))
    if scale < 0:
        raise ValueError(f"train.scale_jitter must be >= 0, not {scale}")
    if scale > 0:
        x = scaled_views(crops, patch, scale, rng)
    else:
        jitter = (s - patch) // 2
        out = np.empty((n, patch, patch, 3), np.uint8)
        offs = rng.integers(0, 2 * jitter + 1, size=(n, 2)) if jitter > 0 else np.zeros((n, 2), int)
        for i in range(n):
            c = crops[i, offs[i, 1]:offs[i, 1] + patch, offs[i, 0]:offs[i, 0] + patch]
            c = np.rot90(c, rng.integers(4))
            out[i] = c[:, ::-1] if rng.random() < 0.5 else c
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float()
    x = amplitude_mix(x, cfg.get("amp_mix_p", 0.0), cfg.get("amp_mix_strength", 0.5), gen)
    x = stain(x, gen) if stain is not None else hed_jitter(x, cfg.get("stain_sigma", 0.05), cfg.get("stain_bias", 0.05), gen)
    x = lowres_jitter(x, cfg.get("lowres_p", 0.0), cfg.get("lowres_factor", 2.0), gen)
    bright = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.get("brightness", 0.1) * 255
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.get("contrast", 0.1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.clamp((x - mean) * contrast + mean + bright, 0, 255)
    return jpeg_jitter(x, cfg.get("jpeg_p", 0.0), int(cfg.get("jpeg_quality", 50)), rng)


def jpeg_jitter(x: torch.Tensor, p: float, lowest: int, rng: np.random.Generator) -> torch.Tensor:
    """Re-encode a share `p` of the batch as JPEG at a quality drawn from `lowest`..95: scanners store their
    tiles as JPEG at different qualities (Aperio's default is 70), and a model trained on one compression
    sees another's block edges and lost detail as new."""
    if p <= 0:
        return x
    if not 1 <= lowest <= 95:
        raise ValueError(f"train.jpeg_quality must be within 1..95, not {lowest}")
    sel = np.flatnonzero(rng.random(x.shape[0]) < p)
    if not len(sel):
        return x
    x = x.clone()
    pixels = x[sel].round().byte().permute(0, 2, 3, 1).numpy()
    for k, (i, q) in enumerate(zip(sel, rng.integers(lowest, 96, len(sel)))):
        buf = io.BytesIO()
        Image.fromarray(pixels[k]).save(buf, format="JPEG", quality=int(q))
        x[i] = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float()
    return x


def center_batch(crops: np.ndarray, patch: int) -> torch.Tensor:
    """The un-augmented centre patch of each crop, as the runtime would see it."""
    o = (crops.shape[1] - patch) // 2
    c = crops[:, o:o + patch, o:o + patch]
    return torch.from_numpy(np.ascontiguousarray(c)).permute(0, 3, 1, 2).float()
