"""The baseline classifier: a compact residual CNN sized for CPU inference.

Input: float32 (N, 3, P, P) RGB in 0..255 (normalisation is inside the
graph, so every backend feeds raw pixels). Output: (N,) mitosis probability.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class CompactResNet(nn.Module):
    """Stem at 1/2 resolution, then stages that halve resolution and widen."""

    def __init__(self, widths: tuple[int, ...] = (16, 24, 48, 96), mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean * 255.0))
        self.register_buffer("scale", torch.tensor(1.0 / (std * 255.0)))
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages += [ResidualBlock(cin, cout, 2), ResidualBlock(cout, cout, 1)]
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.scale
        x = self.stages(self.stem(x))
        return self.head(x.mean(dim=(2, 3))).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


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
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return macs


def build_model(cfg: dict) -> CompactResNet:
    return CompactResNet(tuple(cfg.get("widths", (16, 24, 48, 96))))
