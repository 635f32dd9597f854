"""Which samples a batch holds: class balance, MitDet's DGSB, and the child classes of InCDP.

DGSB (diversity-guided sample balancing) clusters the negatives and draws each
cluster equally often (1st sampler), after dropping the negatives a first
model already rejects with confidence (2nd sampler). MitDet clusters features
of an ImageNet ResNet38; no pretrained weights are to be had here, so the
features come from the recipe's own model after its parent-only phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2

from mitoqp.training.samples import SampleSet

# child classes from the labels we have (child_classes = "labels")
LABEL_CHILDREN = ("normal figure", "atypical figure", "look-alike", "slide candidate", "other nucleus")
LABEL_CHILD_PARENT = np.array([1, 1, 0, 0, 0])


@dataclass
class BatchSampler:
    """Positives and negatives, a share `neg_share` of each batch negative; negatives drawn with probabilities `neg_p`."""

    pos: np.ndarray
    neg: np.ndarray
    neg_p: np.ndarray
    neg_share: float = 0.5

    def draw(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        n_neg = int(round(batch * self.neg_share))
        return np.concatenate([rng.choice(self.pos, batch - n_neg), rng.choice(self.neg, n_neg, p=self.neg_p)])


NEGATIVE_POLICIES = ("hard", "random")


def weighted_sampler(samples: SampleSet, lookalike_weight: float, slide_weight: float, negatives: str = "hard",
                     neg_share: float = 0.5) -> BatchSampler:
    """Which negatives a batch holds (Ji et al.'s negative sampling, ../shared/docs/papers/ji-data-and-modeling.txt).

    "hard" (the baseline): labelled look-alikes and slide candidates are drawn
    more often than other negatives. "random": every negative candidate equally
    often. `neg_share` is the negatives' share of a batch (Ji et al.'s
    negative:positive ratio r:1 is r / (r + 1); 0.5 is 1:1).
    """
    if negatives not in NEGATIVE_POLICIES:
        raise ValueError(f"train.negatives must be one of {', '.join(NEGATIVE_POLICIES)}, not {negatives!r}")
    if not 0 < neg_share < 1:
        raise ValueError(f"train.negative_share must lie between 0 and 1, not {neg_share}")
    pos, neg = np.flatnonzero(samples.labels == 1), np.flatnonzero(samples.labels == 0)
    w = np.ones(len(neg))
    if negatives == "hard":
        w = np.where(samples.lookalike[neg], lookalike_weight, w)
        w = np.where(samples.from_slide[neg], slide_weight, w)
    return BatchSampler(pos, neg, w / w.sum(), neg_share)


SUBTYPE_LABELS = ("majority", "unanimous", "agreement")


def subtype_targets(samples: SampleSet, fields: list, policy: str = "majority") -> np.ndarray:
    """The subtype head's target per sample from the three AMi-Br experts' votes (-1: not trained on).

    Ji et al.'s label aggregation: "majority" (the dataset's label), "unanimous"
    (only figures all three experts agree on; the disputed are left out) and
    "agreement" (the share of experts who call it atypical, a soft target: their
    agreement-score regression). Fields without votes keep their majority label.
    """
    if policy not in SUBTYPE_LABELS:
        raise ValueError(f"train.subtype_labels must be one of {', '.join(SUBTYPE_LABELS)}, not {policy!r}")
    target = samples.atypical.astype(np.float32)
    known = (samples.atypical >= 0) & (samples.field_index >= 0) & ~samples.from_slide
    if policy == "majority" or not known.any():
        return target
    votes = np.array([getattr(f, "atypical_votes", -1) for f in fields])[samples.field_index[known]]
    voted = votes >= 0
    idx = np.flatnonzero(known)[voted]
    if policy == "unanimous":
        target[idx] = np.where((votes[voted] == 0) | (votes[voted] == 3), target[idx], -1.0)
    else:
        target[idx] = votes[voted] / 3.0
    return target


def kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster index per row (k-means++ on standardised features); k is capped by the rows."""
    k = max(1, min(k, len(features)))
    if k == 1:
        return np.zeros(len(features), int)
    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    _, assign = kmeans2(z.astype(np.float64), k, minit="++", seed=np.random.default_rng(seed))
    return assign


def dgsb_sampler(samples: SampleSet, features: np.ndarray, neg_prob: np.ndarray, clusters: int, easy_below: float,
                 easy_keep: float, seed: int) -> tuple[BatchSampler, dict]:
    """DGSB over the negatives: equal draws per feature cluster among the negatives left after dropping easy ones.

    `features` and `neg_prob` (the first model's mitosis probability) are per negative, in the
    order of `samples.labels == 0`. A negative with probability below `easy_below` is easy; a
    share `easy_keep` of them stays (MitDet drops all; our negatives are too few for that).
    """
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(samples.labels == 1), np.flatnonzero(samples.labels == 0)
    assign = kmeans(features, clusters, seed)
    kept = (neg_prob >= easy_below) | (rng.random(len(neg)) < easy_keep)
    w = np.zeros(len(neg))
    live = [c for c in np.unique(assign) if (kept & (assign == c)).any()]
    for c in live:
        members = kept & (assign == c)
        w[members] = 1.0 / (len(live) * members.sum())
    info = {"clusters": [int((assign == c).sum()) for c in range(assign.max() + 1)],
            "kept_per_cluster": [int((kept & (assign == c)).sum()) for c in range(assign.max() + 1)],
            "hard": int((neg_prob >= easy_below).sum()), "kept": int(kept.sum()), "negatives": int(len(neg))}
    return BatchSampler(pos, neg, w / w.sum()), info


def label_children(samples: SampleSet) -> np.ndarray:
    """Child class per sample from what we know of it (LABEL_CHILDREN); -1 where unknown or untrained."""
    child = np.full(len(samples), -1, int)
    pos = samples.labels == 1
    child[pos & (samples.atypical == 0)] = 0
    child[pos & (samples.atypical == 1)] = 1
    neg = samples.labels == 0
    child[neg] = 4
    child[neg & samples.from_slide] = 3
    child[neg & samples.lookalike] = 2
    return child


def kmeans_children(features: np.ndarray, labels: np.ndarray, per_parent: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MitDet's child classes: k-means of the parent model's features within each parent class.

    Returns (child per sample, -1 for samples of neither class; parent of each child class).
    Negatives' children are 0..T-1 and positives' T..2T-1, as in the paper.
    """
    child = np.full(len(labels), -1, int)
    parents = []
    for parent in (0, 1):
        idx = np.flatnonzero(labels == parent)
        if len(idx) == 0:
            continue
        assign = kmeans(features[idx], per_parent, seed + parent)
        child[idx] = len(parents) + assign
        parents += [parent] * (assign.max() + 1)
    return child, np.array(parents)


def source_domains(samples: SampleSet, fields: list, n_field_samples: int) -> tuple[np.ndarray, list[str]]:
    """Each sample's training source as an index into the returned names, for the domain adversary.

    The first `n_field_samples` samples come from `fields`; the rest (slides, a lab's
    annotated images) and fields of no known source get -1 and are not asked about.
    """
    names = sorted({f.source for f in fields if f.source})
    index = {name: i for i, name in enumerate(names)}
    per_field = np.array([index.get(f.source, -1) for f in fields] or [-1], np.int64)
    out = np.full(len(samples), -1, np.int64)
    out[:n_field_samples] = per_field[samples.field_index[:n_field_samples]]
    out[samples.from_slide] = -1
    return out, names
