"""MiNuGAN's networks (Razavi et al., ../shared/docs/papers/minugan.txt): a pix2pixHD generator and its critics.

Generator, coarse to fine as in pix2pixHD: a global generator G1 on the image
at half resolution (a 7x7 convolution, three stride-2 convolutions, nine
residual blocks, three upsampling convolutions) and a local enhancer G2 at
full resolution (a 7x7 and a stride-2 convolution, G1's features added as the
skip connection, three residual blocks, one upsampling convolution, a 7x7
convolution) ending in tanh: one channel for mitoses, one for nuclei.
Discriminators: three PatchGANs on the image and masks at 1, 1/2 and 1/4 scale.

Our adaptations: batch normalisation instead of instance normalisation (an
instance norm takes its statistics from whatever window it is given, so a
slide cut into tiles would be normalised differently at every tile; batch norm
in eval mode is a fixed map and tiles exactly); widths sized for a CPU. For
the runtime, `forward` turns the tanh masks into probabilities ((t + 1) / 2)
and averages them over a 4-um box at output stride 2: the mitosis map then
peaks near the middle of each segmented figure, which is what the paper's
"centroid of every object" gives, and a peak's value says how much of a figure
is there, so detections rank. `score = "logit"` averages the last
convolution's output instead and applies the sigmoid after: tanh saturates, so
averaged masks of confident figures and confident look-alikes all sit near 1
and rank by little; averaged logits keep the margin ((tanh(z) + 1) / 2 is
sigmoid(2z), so single pixels score the same either way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 2
MULTIPLE = 32
SMOOTH_PX = 17  # the box (px at 0.25 um/px) the output masks are averaged over: about 4 um
SCORES = ("tanh", "logit")  # what is averaged over the box: the masks, or their logits (sigmoid after)
CHANNELS = ("mitosis", "nuclei")


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), conv_bn(cin, cout, 3))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Pix2PixHDGenerator(nn.Module):
    def __init__(self, ngf: int = 16, global_blocks: int = 9, local_blocks: int = 3, mean: float = 0.5,
                 std: float = 0.25, score: str = "tanh"):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown MiNuGAN score {score!r} (choose from {', '.join(SCORES)})")
        self.score = score
        self.register_buffer("mean", torch.tensor(mean * 255.0))
        self.register_buffer("scale", torch.tensor(1.0 / (std * 255.0)))
        g = 2 * ngf  # G1's first width
        self.g1_down = nn.Sequential(conv_bn(3, g, 7), conv_bn(g, 2 * g, 3, 2), conv_bn(2 * g, 4 * g, 3, 2),
                                     conv_bn(4 * g, 4 * g, 3, 2))
        self.g1_blocks = nn.Sequential(*[ResBlock(4 * g) for _ in range(global_blocks)])
        self.g1_up = nn.Sequential(up_bn(4 * g, 4 * g), up_bn(4 * g, 2 * g), up_bn(2 * g, g))
        self.g2_down = nn.Sequential(conv_bn(3, ngf, 7), conv_bn(ngf, g, 3, 2))
        self.g2_blocks = nn.Sequential(*[ResBlock(g) for _ in range(local_blocks)])
        self.g2_up = nn.Sequential(up_bn(g, ngf), nn.Conv2d(ngf, len(CHANNELS), 7, 1, 3))
        self.stride = STRIDE

    def pre_tanh(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W): the last convolution's output, before the tanh."""
        x = (x - self.mean) * self.scale
        coarse = self.g1_up(self.g1_blocks(self.g1_down(F.avg_pool2d(x, 2))))
        return self.g2_up(self.g2_blocks(self.g2_down(x) + coarse))

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) tanh masks in -1..1: mitosis, nuclei (what the discriminators judge)."""
        return torch.tanh(self.pre_tanh(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.score == "logit":
            z = F.avg_pool2d(2 * self.pre_tanh(x), SMOOTH_PX, STRIDE, SMOOTH_PX // 2, count_include_pad=False)
            return torch.sigmoid(z)
        p = (self.masks(x) + 1) / 2
        return F.avg_pool2d(p, SMOOTH_PX, STRIDE, SMOOTH_PX // 2, count_include_pad=False)

    def logit_maps(self, x: torch.Tensor) -> torch.Tensor:
        """What an output position depends on (for measuring the context a tile needs)."""
        return self.forward(x)


class PatchDiscriminator(nn.Module):
    """pix2pixHD's 70x70 PatchGAN; returns every layer's output (the last is the verdict) for feature matching."""

    def __init__(self, cin: int, ndf: int = 32):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cin, ndf, 4, 2, 2), nn.LeakyReLU(0.2, True)),
            nn.Sequential(nn.Conv2d(ndf, 2 * ndf, 4, 2, 2), nn.InstanceNorm2d(2 * ndf), nn.LeakyReLU(0.2, True)),
            nn.Sequential(nn.Conv2d(2 * ndf, 4 * ndf, 4, 1, 2), nn.InstanceNorm2d(4 * ndf), nn.LeakyReLU(0.2, True)),
            nn.Conv2d(4 * ndf, 1, 4, 1, 2),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class MultiscaleDiscriminator(nn.Module):
    """`scales` PatchGANs, each on the (image, masks) pair downsampled once more than the last."""

    def __init__(self, cin: int = 3 + len(CHANNELS), ndf: int = 32, scales: int = 3):
        super().__init__()
        self.critics = nn.ModuleList([PatchDiscriminator(cin, ndf) for _ in range(scales)])

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, d in enumerate(self.critics):
            out.append(d(x))
            if i + 1 < len(self.critics):
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        return out


def build_generator(cfg: dict) -> Pix2PixHDGenerator:
    return Pix2PixHDGenerator(int(cfg.get("ngf", 16)), int(cfg.get("global_blocks", 9)), int(cfg.get("local_blocks", 3)),
                              score=str(cfg.get("score", "tanh")))


def build_discriminator(cfg: dict) -> MultiscaleDiscriminator:
    return MultiscaleDiscriminator(ndf=int(cfg.get("ndf", 32)), scales=int(cfg.get("discriminators", 3)))
