"""UTS's network (Fernandez-Martin et al., ../shared/docs/papers/uts-teacher-student.txt): a fully convolutional classifier.

The paper takes the first residual blocks of a ResNet-18, because mitosis
localisation needs spatial resolution and low-level features (its Fig. 6),
and classifies every position with a sigmoid ("instance-based" weak
supervision); the image score is the maximum over positions (its Eq. 1 with
max aggregation). No ImageNet weights exist here: the blocks are the project's
own residual blocks, trained from scratch, at output stride 4.

Input: float32 (N, 3, H, W) RGB 0..255 (normalisation inside the graph, like
every mitoqp model). `forward` gives (N, 1, H/4, W/4) score maps,
sigmoid(logit / 4): max-aggregated training drives the logits of figures past
17, where sigmoid rounds to exactly 1 in float32 and the peaks of a slide lose
their order; the temperature keeps them apart (up to a logit of about 66)
without changing which peak ranks above which. `smooth = k` (odd) averages the
logits over k x k positions before the sigmoid: a position that fires alone then
ranks below a figure's broad response.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mitoqp.training.model import ResidualBlock

STRIDE = 4
TEMPERATURE = 4.0  # of the exported score maps (training uses the logits)


class WeakFCN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (24, 32, 64, 96), mean: float = 0.5, std: float = 0.25,
                 smooth: int = 1):
        super().__init__()
        if smooth < 1 or smooth % 2 == 0:
            raise ValueError(f"model.smooth must be an odd number of positions >= 1, not {smooth}")
        self.smooth = smooth
        self.register_buffer("mean", torch.tensor(mean * 255.0))
        self.register_buffer("scale", torch.tensor(1.0 / (std * 255.0)))
        w = widths
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True))
        # stride 2 after the stem, 4 after the first stage; later stages keep the resolution (dilated context)
        self.stages = nn.Sequential(
            ResidualBlock(w[0], w[1], 2), ResidualBlock(w[1], w[1], 1),
            ResidualBlock(w[1], w[2], 1), ResidualBlock(w[2], w[2], 1),
            ResidualBlock(w[2], w[3], 1), ResidualBlock(w[3], w[3], 1),
        )
        self.classifier = nn.Conv2d(w[3], 1, 1)
        self.stride = STRIDE

    def logit_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stages(self.stem((x - self.mean) * self.scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logit_maps(x)
        if self.smooth > 1:
            z = F.avg_pool2d(z, self.smooth, 1, self.smooth // 2, count_include_pad=False)
        return torch.sigmoid(z / TEMPERATURE)

    def image_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The image-level logit: the maximum over positions (what Eq. 1's loss is computed on)."""
        return self.logit_maps(x).amax(dim=(1, 2, 3))


def build_fcn(cfg: dict) -> WeakFCN:
    return WeakFCN(tuple(cfg.get("widths", (24, 32, 64, 96))), smooth=int(cfg.get("smooth", 1)))


def receptive_radius(model: torch.nn.Module, size: int = 96, tries: int = 8) -> int:
    """Input pixels from an output position to the edge of what it sees: measured by a gradient, not guessed.

    A trained network can be dead at the probe's centre for one random input (every
    ReLU on the path off, so no gradient reaches the input); the next inputs are
    tried, and if none reaches it the whole probe's half-width is returned, an
    upper bound (callers pad by it, so too much costs time, never correctness).
    """
    model.eval()
    for seed in range(tries):
        x = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).requires_grad_(True)
        out = model.logit_maps(x)
        c = out.shape[-1] // 2
        out[0, 0, c, c].backward()
        cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0).flatten()
        if len(cols):
            return int(max(c * model.stride - cols.min().item(), cols.max().item() - c * model.stride))
    return size // 2
