"""RDLM's network (Ali et al., ../shared/docs/papers/rdlm-glb-fpn.txt): an FPN calibrated by a global feature bank.

The encoder's last layer of each phase, EN_1..EN_s (strides 4..32), feeds the
FPN's top-down pathway (lateral 1x1 convolutions, nearest upsampling, 3x3
smoothing), giving the decoder levels CAL_1..CAL_s. The global feature bank
(GLB) adds to every decoder level what the whole encoder saw:
- vault layer (Eq. 1): VL = f_A[f_EN1(EN_1) + sum_i f_ENi(up(EN_i))], 3x3
  convolutions of k channels per phase, f_A of m channels;
- gain layers (Eq. 2): GAIN_i = down(f_GAIN_i(VL)), a 3x3 convolution of
  stride 2 (stride 1 for the level of VL's own size) and downsampling to CAL_i;
- calibration (Eq. 3): CAL_i = CAL_i + GAIN_i.

Our adaptation: labels are points and every figure is about one size, so the
head is one centre-probability map at stride 4, from the calibrated levels
summed there (as a semantic FPN head does), instead of the paper's region
proposal network and box head on every level;
figures are its peaks, like every dense mitoqp model. The encoder is the
project's own residual blocks from scratch (no ImageNet ResNet-50 here), and
k = m = 32 rather than 256, to stay a few MB and CPU-sized.

Input: float32 (N, 3, H, W) RGB 0..255, H and W multiples of 32. `forward`
gives (N, 1, H/4, W/4) probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mitoqp.training.model import ResidualBlock

STRIDE = 4
MULTIPLE = 32  # input sides must be multiples of the coarsest stride


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GLBFPN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (24, 32, 64, 96, 128), k: int = 32, m: int = 32, glb: bool = True,
                 mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean * 255.0))
        self.register_buffer("scale", torch.tensor(1.0 / (std * 255.0)))
        w = widths
        self.stem = conv3x3(3, w[0], 2)
        # phases EN_1..EN_4 at strides 4, 8, 16, 32
        self.phases = nn.ModuleList([
            nn.Sequential(ResidualBlock(w[i], w[i + 1], 2), ResidualBlock(w[i + 1], w[i + 1], 1))
            for i in range(len(w) - 1)
        ])
        self.lateral = nn.ModuleList([nn.Conv2d(c, k, 1) for c in w[1:]])
        self.smooth = nn.ModuleList([conv3x3(k, k) for _ in w[1:]])
        self.glb = glb
        if glb:
            self.vault_in = nn.ModuleList([conv3x3(c, k) for c in w[1:]])  # f_ENi
            self.vault = conv3x3(k, m)  # f_A
            self.gain = nn.ModuleList([conv3x3(m, k, 1 if i == 0 else 2) for i in range(len(w) - 1)])  # f_GAINi
        self.head = nn.Sequential(conv3x3(k, k), nn.Conv2d(k, 1, 1))
        self.stride = STRIDE

    def logit_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem((x - self.mean) * self.scale)
        encoder = []
        for phase in self.phases:
            x = phase(x)
            encoder.append(x)
        # FPN top-down pathway
        top = self.lateral[-1](encoder[-1])
        levels = [top]
        for i in range(len(encoder) - 2, -1, -1):
            top = self.lateral[i](encoder[i]) + F.interpolate(top, scale_factor=2.0, mode="nearest")
            levels.insert(0, top)
        cal = [s(p) for s, p in zip(self.smooth, levels)]
        if self.glb:
            vl = self.vault_in[0](encoder[0])
            for i in range(1, len(encoder)):
                vl = vl + F.interpolate(self.vault_in[i](encoder[i]), scale_factor=float(2 ** i), mode="nearest")
            vl = self.vault(vl)
            for i in range(len(cal)):
                g = self.gain[i](vl)
                if i > 1:
                    g = F.max_pool2d(g, 2 ** (i - 1))
                cal[i] = cal[i] + g
        # every (calibrated) level reaches the one head: summed at stride 4, as a semantic FPN head does
        fused = cal[0]
        for i in range(1, len(cal)):
            fused = fused + F.interpolate(cal[i], scale_factor=float(2 ** i), mode="nearest")
        return self.head(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit_maps(x))


def build_fpn(cfg: dict) -> GLBFPN:
    return GLBFPN(tuple(cfg.get("widths", (24, 32, 64, 96, 128))), int(cfg.get("k", 32)), int(cfg.get("m", 32)),
                  bool(cfg.get("glb", True)))
