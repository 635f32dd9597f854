"""MiNuGAN: a conditional GAN that segments mitoses and nuclei together (Razavi et al., ../shared/docs/papers/minugan.txt).

Labels. The paper trains on pixel masks of nuclei and mitoses drawn by hand;
ours are points. Nuclei masks are pseudo masks from the front end's
hematoxylin density (`nuclei_masks`: the candidates' smoothed density above
half their threshold, holes filled, specks dropped); a mitosis mask is the pseudo
nucleus under a figure's point, cut to a 6-um disc, or a 3-um disc where the
density finds no nucleus there; the classes exclude each other, as in the
paper's label maps. The model card shows what these masks look like.

Losses, as the paper gives them: the adversarial loss of three multiscale
discriminators with the focal term, E[(1-D)^g log D] + E[D^g log(1-D)]
(g = 2, its final setting), and pix2pixHD's feature matching weighted by
lambda (2: its best row, Table 2). The paper also puts "a focal loss in the
generator, after the last hidden layer"; we read that as a pixel focal loss of
the generated masks against the label masks, the supervised term a
segmentation GAN needs to converge from scratch in a CPU budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mitoqp.blob_kernels import dense_mask
from mitoqp.candidates import CandidateParams
from mitoqp.datasets import Field
from mitoqp.stain import hematoxylin
from mitoqp.training.dense_run import save_dense, start_dense
from mitoqp.training.minugan_net import build_discriminator, build_generator
from mitoqp.training.model import count_macs
from mitoqp.training.pointmap import (dihedral_pair, effective_context, fit_dense, load_crop_source,
                                      report_centre_cue, to_input)
from mitoqp.training.samples import SampleSet

MPP = 0.25


NUCLEI_OD = 0.15  # hematoxylin density (log10) of a nucleus pixel: half the candidates' 0.3, which keeps dense blobs only


def nuclei_masks(crops: np.ndarray, threshold: float = NUCLEI_OD, params: CandidateParams = CandidateParams(),
                 mpp: float = MPP) -> np.ndarray:
    """(N, H, W) bool pseudo nuclei: the front end's smoothed density above `threshold`, holes filled, specks dropped."""
    out = np.zeros(crops.shape[:3], bool)
    min_px = params.min_area_um2 / mpp ** 2
    for i, c in enumerate(crops):
        mask, _ = dense_mask(hematoxylin(c), params.sigma_um / mpp, threshold)
        mask = ndimage.binary_fill_holes(mask)
        labels, n = ndimage.label(mask)
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            mask = (sizes >= min_px)[labels] & (labels > 0)
        out[i] = mask
    return out


def label_masks(crops: np.ndarray, figures: list, nucleus_um: float = 6.0, fallback_um: float = 3.0,
                mpp: float = MPP) -> np.ndarray:
    """(N, 2, H, W) float32 targets (mitosis, nuclei), exclusive classes (see the module's note)."""
    nuclei = nuclei_masks(crops, mpp=mpp)
    n, h, w = nuclei.shape
    yy, xx = np.mgrid[:h, :w]
    mitosis = np.zeros_like(nuclei)
    for i, figs in enumerate(figures):
        labels, _ = ndimage.label(nuclei[i])
        for x, y in figs:
            d = np.hypot(xx - x, yy - y)
            ids = np.unique(labels[d <= 1.5 / mpp])  # a nucleus within 1.5 um of the point
            ids = ids[ids > 0]
            part = np.isin(labels, ids) & (d <= nucleus_um / mpp) if len(ids) else np.zeros_like(mitosis[i])
            mitosis[i] |= part if part.any() else d <= fallback_um / mpp
    return np.stack([mitosis, nuclei & ~mitosis], axis=1).astype(np.float32)


def label_overview(crops: np.ndarray, figures: list, path: Path) -> None:
    """A strip of crops above the same crops with their label masks (nuclei red, mitoses green), for the model card."""
    from PIL import Image

    target = label_masks(crops, figures)
    over = crops.astype(np.float32).copy()
    for c, colour in ((1, (230, 40, 40)), (0, (40, 220, 40))):
        m = target[:, c, :, :, None] > 0.5
        over = np.where(m, 0.45 * over + 0.55 * np.array(colour, np.float32), over)
    strip = np.concatenate([np.concatenate(list(crops), 1), np.concatenate(list(over.astype(np.uint8)), 1)], 0)
    Image.fromarray(strip).save(path)


def focal_bce(logits: torch.Tensor, target: float, gamma: float) -> torch.Tensor:
    """The paper's focal adversarial term for one side: -(1-p_t)^g log p_t, averaged (p_t: probability of `target`)."""
    logp = F.logsigmoid(logits if target == 1.0 else -logits)
    return -(((1 - logp.exp()).clamp(min=1e-6)) ** gamma * logp).mean()


def pixel_focal(masks: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float = 0.75) -> torch.Tensor:
    """Focal loss of the generated masks (tanh, -1..1) against the label masks, per class then averaged."""
    p = ((masks + 1) / 2).clamp(1e-5, 1 - 1e-5)
    p_t = torch.where(target > 0.5, p, 1 - p)
    a_t = torch.where(target > 0.5, alpha, 1 - alpha)
    return (-a_t * (1 - p_t) ** gamma * torch.log(p_t)).mean(dim=(0, 2, 3)).sum()


def train_minugan(cfg: dict, train_fields: list[Field], val_fields: list[Field], run_dir: Path, log=print,
                  slide_samples: list[SampleSet] | None = None) -> dict:
    run = start_dense(cfg, run_dir)
    t_cfg, m_cfg, d_cfg, seed = run.train, run.model, run.dense, run.seed
    radius_um, min_distance_um = run.radius_um, run.min_distance_um
    size = int(m_cfg.get("crop", 96))
    gamma_gan, lam = float(t_cfg.get("gan_gamma", 2.0)), float(t_cfg.get("feature_matching", 2.0))
    gamma_pix, w_pix = float(t_cfg.get("pixel_gamma", 2.0)), float(t_cfg.get("pixel_weight", 10.0))
    source = load_crop_source(train_fields, slide_samples, size, log)
    crops, figures = source.draw(size, 8, 0.0, np.random.default_rng(seed + 7))
    label_overview(crops, figures, run_dir / "labels.png")
    gen_net, disc = build_generator(m_cfg), build_discriminator(m_cfg)
    log(f"generator: {sum(p.numel() for p in gen_net.parameters())} parameters, "
        f"{count_macs(gen_net, 512) / 1e6:.1f} M MACs per 512-px tile; discriminators: "
        f"{sum(p.numel() for p in disc.parameters())} parameters, {len(disc.critics)} scales")
    lr = float(t_cfg.get("lr", 2e-3))
    opt_g = torch.optim.AdamW(gen_net.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=float(t_cfg.get("weight_decay", 1e-4)))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=lr / 2, betas=(0.5, 0.999))

    def step(crops: np.ndarray, figures: list, rng: np.random.Generator, gen: torch.Generator) -> float:
        target = label_masks(crops, figures)
        crops, (mit, nuc) = dihedral_pair(crops, [target[:, 0], target[:, 1]], rng)
        target = torch.from_numpy(np.stack([mit, nuc], 1))
        x = to_input(crops, t_cfg, gen)
        image = x / 127.5 - 1
        fake = gen_net.masks(x)
        # discriminators: real pairs towards 1, generated towards 0
        disc.train()
        d_real = disc(torch.cat([image, target * 2 - 1], 1))
        d_fake = disc(torch.cat([image, fake.detach()], 1))
        loss_d = sum(focal_bce(r[-1], 1.0, gamma_gan) + focal_bce(f[-1], 0.0, gamma_gan) for r, f in zip(d_real, d_fake)) / 2
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        # generator: fool every critic, match its features on real pairs, and the pixel focal loss
        d_gen = disc(torch.cat([image, fake], 1))
        adv = sum(focal_bce(g[-1], 1.0, gamma_gan) for g in d_gen)
        fm = sum(F.l1_loss(g, r.detach()) for gs, rs in zip(d_gen, d_real) for g, r in zip(gs[:-1], rs[:-1]))
        loss_g = adv + lam * fm / len(d_gen) + w_pix * pixel_focal(fake, target, gamma_pix)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        return loss_g.item()

    best, state = fit_dense(gen_net, step, source, val_fields, t_cfg, size, "minugan", run_dir, log, radius_um,
                            min_distance_um, [opt_g, opt_d])
    context = effective_context(gen_net, int(d_cfg.get("context_probe", 768)))
    report_centre_cue(gen_net, val_fields, source, radius_um, best, log)
    save_dense(gen_net, "minugan", "final", cfg, best, state, run_dir / "best.pt", context, ["mitosis", "nuclei"])
    log(f"minugan: mean recall {best['mean_recall']:.3f}, HPF-F1 {best['hpf_f1']:.3f} at threshold "
        f"{best['threshold']:.4f} (epoch {best['epoch']}), effective context {context} px")
    return best
