"""The classifier: a compact residual CNN sized for CPU inference, with MitDet's options.

Input: float32 (N, 3, P, P) RGB in 0..255 (normalisation is inside the
graph, so every backend feeds raw pixels). `forward` gives (N,) mitosis
probabilities, or (N, 2) [mitosis, atypical] when the model has a subtype head.

Options (all off in the baseline): squeeze-excitation attention in every
residual block, EFDMix after the stem and the first stage (training only), a
child-class head for InCDP, a subtype head (atypical vs normal figure), and an
input pooled by `input_pool` inside the graph (the cheap prefilter of a cascade
sees the same patch at half the resolution, a quarter of the pixels), and
`input_norm = "patch"`: each patch standardised per colour channel by its own
mean and spread, so a scanner's global colour cast and contrast do not reach
the network (the default, "global", uses one fixed mean and spread), or
`input_norm = "od"`: each pixel to optical density first (-ln((x + 1) / 256),
where stain amount and illumination are a scale and an offset, Beer-Lambert),
then standardised per patch the same way.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): reweights channels by their pooled response."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class EFDMix(nn.Module):
    """Exact feature distribution mixing (Zhang et al. 2022; MitDet eq. 6), a training-time style augmentation.

    Each sample's channel values, kept in their rank order, are moved towards the
    sorted values of another sample in the batch: w = u + (1 - mu) * (v_sorted[rank(u)] - <u>),
    with <.> the stop-gradient and mu ~ Beta(alpha, alpha) per sample. Identity in eval mode.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1):
        super().__init__()
        self.p, self.alpha = p, alpha

    def mix(self, x: torch.Tensor, mu: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        values, order = torch.sort(flat, dim=-1)
        rank = order.argsort(dim=-1)
        matched = values[perm].gather(-1, rank)
        out = flat + (1 - mu.reshape(n, 1, 1)) * (matched - flat.detach())
        return out.reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0 or x.shape[0] < 2 or torch.rand(1).item() > self.p:
            return x
        mu = torch.distributions.Beta(self.alpha, self.alpha).sample((x.shape[0],)).to(x)
        return self.mix(x, mu, torch.randperm(x.shape[0], device=x.device))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, se: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        if se:
            self.body.append(SqueezeExcite(cout))
        self.skip = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class CompactResNet(nn.Module):
    """Stem at 1/2 resolution, then stages that halve resolution and widen."""

    def __init__(self, widths: tuple[int, ...] = (16, 24, 48, 96), mean: float = 0.5, std: float = 0.25,
                 se: bool = False, efdmix_p: float = 0.0, efdmix_alpha: float = 0.1,
                 child_classes: int = 0, subtype: bool = False, input_pool: int = 1, input_norm: str = "global"):
        super().__init__()
        if input_norm not in ("global", "patch", "od"):
            raise ValueError(f"input_norm must be 'global', 'patch' or 'od', not {input_norm!r}")
        self.input_norm = input_norm
        self.register_buffer("mean", torch.tensor(mean * 255.0))
        self.register_buffer("scale", torch.tensor(1.0 / (std * 255.0)))
        self.pool = nn.AvgPool2d(input_pool) if input_pool > 1 else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages += [ResidualBlock(cin, cout, 2, se), ResidualBlock(cout, cout, 1, se)]
        if efdmix_p > 0:  # after the stem and after the first stage, where style lives (EFDMix paper)
            stages = [EFDMix(efdmix_p, efdmix_alpha), *stages[:2], EFDMix(efdmix_p, efdmix_alpha), *stages[2:]]
        self.stages = nn.Sequential(*stages)
        self.embed_dim = widths[-1]
        self.head = nn.Linear(widths[-1], 1)
        self.child_head = nn.Linear(widths[-1], child_classes) if child_classes else None
        self.subtype_head = nn.Linear(widths[-1], 1) if subtype else None

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels 0..255 to the network's input: fixed statistics, or each patch's own per channel."""
        if self.input_norm == "global":
            return (x - self.mean) * self.scale
        floor = 4.0  # a flat patch stays finite: a spread of 2 grey levels
        if self.input_norm == "od":
            x = -torch.log((x + 1.0) * (1.0 / 256.0))
            floor = 1e-4  # a spread of 0.01 OD, about one grey level in mid-tone tissue
        mu = x.mean(dim=(2, 3), keepdim=True)
        spread = (x - mu).square().mean(dim=(2, 3), keepdim=True).add(floor).sqrt()
        return (x - mu) / spread

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) pooled features: what the centre loss pulls together and k-means clusters."""
        x = self.pool(self.normalise(x))
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def heads(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"parent": self.head(z).squeeze(1)}
        if self.child_head is not None:
            out["child"] = self.child_head(z)
        if self.subtype_head is not None:
            out["subtype"] = self.subtype_head(z).squeeze(1)
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        p = torch.sigmoid(self.head(z).squeeze(1))
        if self.subtype_head is None:
            return p
        return torch.stack([p, torch.sigmoid(self.subtype_head(z).squeeze(1))], dim=1)


def count_macs(model: nn.Module, size: int) -> int:
    """Multiply-accumulates of one patch (convolutions and linear layers)."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            macs += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return macs


def build_model(cfg: dict, child_classes: int | None = None) -> CompactResNet:
    """The model a recipe's [model] table describes; `child_classes` as the checkpoint or the sampler set it."""
    return CompactResNet(tuple(cfg.get("widths", (16, 24, 48, 96))), se=bool(cfg.get("se", False)),
                         efdmix_p=float(cfg.get("efdmix_p", 0.0)), efdmix_alpha=float(cfg.get("efdmix_alpha", 0.1)),
                         child_classes=int(child_classes if child_classes is not None else cfg.get("child_classes", 0)),
                         subtype=bool(cfg.get("subtype", False)), input_pool=int(cfg.get("input_pool", 1)),
                         input_norm=str(cfg.get("input_norm", "global")))
