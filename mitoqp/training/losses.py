"""Losses of the recipes: focal loss, centre loss and MitDet's two-level (InCDP) objective.

MitDet eq. 10: L = focal_parent + centre_parent + lambda * (weighted focal_child + centre_child).
The centre losses carry a weight here (`center_weight`): the paper's plain sum
assumes its own feature scale; on ours an unweighted centre loss swamps the rest.
Beside them, optionally, a domain-adversarial loss (DANN) over the training sources.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017; MitDet eq. 7): down-weights easy examples so hard ones dominate."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * ce).mean()


def child_focal_loss(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor, gamma: float) -> torch.Tensor:
    """MitDet eq. 9: softmax focal loss over child classes, each weighted by how hard its class is.

    `target` is the child index per sample, -1 where unknown (not counted).
    """
    known = target >= 0
    if not known.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[known], dim=1)
    t = target[known]
    logp_t = logp.gather(1, t[:, None]).squeeze(1)
    loss = -class_weight[t] * (1 - logp_t.exp()) ** gamma * logp_t
    return loss.mean()


class CenterLoss(nn.Module):
    """Wen et al. (2016), MitDet eq. 8: half the squared distance of each feature to its class centre.

    The centres are parameters learnt with the network. Labels of -1 are ignored.
    """

    def __init__(self, classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(classes, dim) * 0.01)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not known.any():
            return features.sum() * 0.0
        diff = features[known] - self.centers[labels[known]]
        return 0.5 * (diff ** 2).sum(dim=1).mean()


def child_class_weights(centers: torch.Tensor, parent_of_child: torch.Tensor) -> torch.Tensor:
    """MitDet's centre-distance weight: a child class far from the other parent's classes is easier, so lighter.

    Weight of class j is 1 / (distance from its centre to the nearest centre of the
    opposite parent), scaled so the weights average 1.
    """
    d = torch.cdist(centers, centers)
    opposite = parent_of_child[:, None] != parent_of_child[None, :]
    nearest = torch.where(opposite, d, torch.full_like(d, float("inf"))).min(dim=1).values
    w = 1.0 / nearest.clamp(min=1e-6)
    w = torch.where(torch.isfinite(w), w, torch.ones_like(w))
    return w * len(w) / w.sum()


def subtype_loss(logits: torch.Tensor, atypical: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Atypical vs normal on figures whose subtype is known (atypical: 1, normal: 0, unknown: -1).

    A target between 0 and 1 is the experts' agreement (a soft label). `pos_weight`
    balances the rarer atypical class, since the goal is balanced accuracy.
    """
    known = atypical >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], atypical[known].float(),
                                              pos_weight=torch.tensor(pos_weight, device=logits.device))


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by -strength on the way back (Ganin et al. 2016)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    return _ReverseGradient.apply(x, strength)


class DomainAdversary(nn.Module):
    """DANN's domain classifier: which training source (scanner, centre) a sample's features come from.

    Behind a gradient reversal, so the classifier learns to tell the sources apart
    while the network learns features it cannot tell apart: what is left is what
    the sources share. Training only; the exported model never has it.
    """

    def __init__(self, dim: int, domains: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, domains))

    def forward(self, features: torch.Tensor, domain: torch.Tensor, strength: float) -> torch.Tensor:
        """Cross-entropy over the samples of a known source (domain >= 0)."""
        known = domain >= 0
        if not known.any():
            return features.sum() * 0.0
        return F.cross_entropy(self.net(reverse_gradient(features[known], strength)), domain[known])


def dann_strength(progress: float) -> float:
    """DANN's schedule for the reversal: 0 at the start, rising to 1, so the adversary waits for real features."""
    return float(2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)
