"""Detection metrics judged the way a slide would be: per mm^2, not per field.

A field centred on a figure holds about a thousand figures per mm^2; tumour
holds about five. Precision measured on fields is therefore meaningless for a
slide; recall against false detections per mm^2 is not, and the
HPF-equivalent F1 recomputes precision at MIDOG21's figure density.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# False detections per mm^2 over which `mean recall`, the smooth criterion that picks epochs, is averaged.
MEAN_RECALL_LEVELS = (1, 2, 4, 8, 16, 32, 64)

# The highest-scoring false detections the tail of the false-detection rate is fitted to (smoothed_threshold).
TAIL_NEGATIVES = 20

# MIDOG 2021 training set: 1,721 figures on 150 labelled breast regions of 7215x5412 px at 0.25 um/px.
MIDOG21_FIGURES_PER_MM2 = 1721 / (150 * 7215 * 5412 * 0.25**2 * 1e-6)


@dataclass
class Match:
    """One field's outcome: which detections matched a figure, which figures were found."""

    det_scores: np.ndarray  # (D,)
    det_is_tp: np.ndarray  # (D,) bool
    det_on_lookalike: np.ndarray  # (D,) bool, unmatched detections on a labelled look-alike
    fig_best_score: np.ndarray  # (F,) score of the matched detection, -inf if none


def match_detections(
    det_xy: np.ndarray,
    det_scores: np.ndarray,
    figures: np.ndarray,
    radius_px: float,
    lookalikes: np.ndarray | None = None,
) -> Match:
    """One-to-one matching of detections to figures within `radius_px` (Hungarian, by score then distance).

    Every detection is considered: apply a threshold afterwards by score. The
    assignment maximises the number of matches and prefers higher scores.
    """
    det_xy = np.asarray(det_xy, dtype=np.float64).reshape(-1, 2)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    figures = np.asarray(figures, dtype=np.float64).reshape(-1, 2)
    nd, nf = len(det_xy), len(figures)
    is_tp = np.zeros(nd, bool)
    best = np.full(nf, -np.inf)
    if nd and nf:
        dist = np.hypot(*(det_xy[:, None, :] - figures[None, :, :]).transpose(2, 0, 1))
        ok = dist <= radius_px
        # big reward for any match, then prefer high scores, then short distances
        cost = np.where(ok, -(1e6 + det_scores[:, None] * 1e3 - dist / radius_px), 0.0)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if ok[r, c]:
                is_tp[r] = True
                best[c] = det_scores[r]
    on_lookalike = np.zeros(nd, bool)
    if lookalikes is not None and len(lookalikes) and nd:
        la = np.asarray(lookalikes, dtype=np.float64).reshape(-1, 2)
        d = np.hypot(*(det_xy[:, None, :] - la[None, :, :]).transpose(2, 0, 1)).min(axis=1)
        on_lookalike = (~is_tp) & (d <= radius_px)
    return Match(det_scores, is_tp, on_lookalike, best)


def hpf_equivalent(recall: float, fp_per_mm2: float, density: float = MIDOG21_FIGURES_PER_MM2) -> tuple[float, float]:
    """(precision, F1) of a detector with this recall and false-detection rate on tumour of `density` figures/mm^2."""
    tp = recall * density
    precision = tp / (tp + fp_per_mm2) if tp + fp_per_mm2 > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, f1


def operating_point(matches: list[Match], area_mm2: float, threshold: float) -> dict:
    """Recall, false detections per mm^2, field P/R/F1 and HPF-equivalent F1 at one threshold."""
    n_fig = sum(len(m.fig_best_score) for m in matches)
    tp = sum(int((m.fig_best_score >= threshold).sum()) for m in matches)
    fp = sum(int(((m.det_scores >= threshold) & ~m.det_is_tp).sum()) for m in matches)
    fp_la = sum(int(((m.det_scores >= threshold) & m.det_on_lookalike).sum()) for m in matches)
    recall = tp / n_fig if n_fig else 0.0
    fp_mm2 = fp / area_mm2 if area_mm2 > 0 else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    hpf_p, hpf_f1 = hpf_equivalent(recall, fp_mm2)
    return {
        "threshold": float(threshold), "figures": n_fig, "tp": tp, "fp": fp, "fp_on_lookalikes": fp_la,
        "recall": recall, "fp_per_mm2": fp_mm2, "field_precision": precision, "field_f1": f1,
        "hpf_precision": hpf_p, "hpf_f1": hpf_f1,
    }


def froc(matches: list[Match], area_mm2: float, thresholds: np.ndarray | None = None) -> list[dict]:
    """Operating points over thresholds (default: midway between distinct detection scores).

    Midpoints give the same counts as the scores themselves, but a threshold
    never sits on a score, where float rounding in another backend could flip it.
    """
    if thresholds is None:
        scores = np.unique(np.concatenate([m.det_scores for m in matches] + [np.zeros(0)]))
        thresholds = np.concatenate([scores[:1] / 2, (scores[:-1] + scores[1:]) / 2, [np.inf]]) if len(scores) else np.array([np.inf])
    return [operating_point(matches, area_mm2, t) for t in thresholds]


def best_threshold(matches: list[Match], area_mm2: float) -> dict:
    """The operating point with the highest HPF-equivalent F1 (ties: the higher threshold)."""
    points = froc(matches, area_mm2)
    return max(points, key=lambda p: (p["hpf_f1"], p["threshold"]))


def fitted_fp_rate(neg_scores: np.ndarray, area_mm2: float, tail: int = TAIL_NEGATIVES):
    """False detections per mm^2 at or above a threshold, with the top of the curve fitted instead of counted.

    Why: validation holds 0.3 mm^2 of negatives, so near the top negative the counted rate jumps in steps of
    3.3 per mm^2 and is 0 just above it. Above the `tail`-th highest negative, the negatives' logits are
    modelled as exponential (the peaks-over-threshold model; its rate is the Hill estimate k / sum of
    exceedances), which gives a rate that keeps falling smoothly above the highest negative. Below, the count.
    Returns a function of an array of thresholds; None when there are too few negatives to fit (< 5).
    """
    logit = np.log(np.clip(neg_scores, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(neg_scores, 1e-7, 1 - 1e-7))
    z = np.sort(logit)[::-1]
    k = min(tail, len(z) - 1)
    if k < 5:
        return None
    u = z[k]
    rate = k / max(float(np.sum(z[:k] - u)), 1e-9)
    counted = np.sort(np.asarray(neg_scores, np.float64))

    def fp_per_mm2(thresholds: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(thresholds, np.float64), 1e-7, 1 - 1e-7)
        lt = np.log(t) - np.log1p(-t)
        n = len(counted) - np.searchsorted(counted, t, side="left")  # negatives scoring >= t
        return np.where(lt > u, k * np.exp(-rate * np.maximum(lt - u, 0.0)), n) / area_mm2

    return fp_per_mm2


def smoothed_threshold(matches: list[Match], area_mm2: float, tail: int = TAIL_NEGATIVES) -> dict:
    """The operating point with the highest HPF-equivalent F1, its false-detection rate fitted (fitted_fp_rate).

    The plain rule (best_threshold) lands just above the highest-scoring validation negative whenever
    validation has no false detection above some recall, an aggressive point on new data; the fitted rate
    weighs recall against the false detections the tail predicts there. Ties: the higher threshold.
    Fewer than 6 negatives: the plain rule.
    """
    neg = np.concatenate([m.det_scores[~m.det_is_tp] for m in matches] + [np.zeros(0)])
    fit = fitted_fp_rate(neg, area_mm2, tail)
    points = froc(matches, area_mm2)
    if fit is None:
        return max(points, key=lambda p: (p["hpf_f1"], p["threshold"]))
    fitted = fit(np.array([p["threshold"] for p in points]))
    for p, f in zip(points, fitted):
        p["fp_per_mm2_fitted"] = float(f)
        p["hpf_f1_fitted"] = hpf_equivalent(p["recall"], float(f))[1]
    best = max(points, key=lambda p: (p["hpf_f1_fitted"], p["threshold"]))
    best["threshold_rule"] = f"smoothed (tail of {min(tail, len(neg) - 1)} negatives)"
    return best


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, bool)
    npos, nneg = labels.sum(), (~labels).sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def balanced_accuracy_at(scores: np.ndarray, labels: np.ndarray, cut: float) -> float:
    """Mean of sensitivity and specificity when scores at or above `cut` are called positive (NaN scores are not);
    NaN where a class is empty."""
    labels, pred = np.asarray(labels, bool), np.asarray(scores) >= cut
    if labels.all() or not labels.any():
        return float("nan")
    return float(0.5 * (pred[labels].mean() + (~pred[~labels]).mean()))


def bagged_balanced_cut(scores: np.ndarray, labels: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(balanced accuracy, cut): the median over bootstrap resamples of the items of each resample's best cut.

    Why bagged: the single best cut on a few dozen positives (validation holds 63 atypical figures) follows
    their noise; re-choosing it moved test balanced accuracy by 2.7 points once (MODEL_CARD "Atypical vs
    normal"). Candidate cuts lie midway between distinct scores; ties go to the lower cut.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return float("nan"), 0.5
    u, inv = np.unique(scores, return_inverse=True)
    cuts = np.concatenate([[u[0] / 2], (u[:-1] + u[1:]) / 2, [(1 + u[-1]) / 2]])
    rng = np.random.default_rng(seed)
    best = []
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, len(scores), len(scores)), minlength=len(scores))
        pos, neg = np.bincount(inv, w * labels, len(u)), np.bincount(inv, w * ~labels, len(u))
        if pos.sum() == 0 or neg.sum() == 0:
            continue
        # cut j calls the distinct scores u[j:] positive
        tpr = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]]) / pos.sum()
        tnr = np.concatenate([[0.0], np.cumsum(neg)]) / neg.sum()
        best.append(cuts[int(np.argmax(tpr + tnr))])
    if not best:  # every resample lost a class (a handful of items)
        return float("nan"), 0.5
    cut = float(np.median(best))
    return balanced_accuracy_at(scores, labels, cut), cut


def sensitivity_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Share of positives scoring above the score that only `fpr` of negatives exceed."""
    labels = np.asarray(labels, bool)
    neg = np.sort(np.asarray(scores)[~labels])
    if len(neg) == 0 or labels.sum() == 0:
        return float("nan")
    k = int(np.floor(fpr * len(neg)))
    cut = neg[len(neg) - 1 - k] if k < len(neg) else -np.inf
    return float((np.asarray(scores)[labels] > cut).mean())


def bootstrap_ci(values_fn, n_items: int, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `values_fn(indices)` over resamples of the items (fields)."""
    rng = np.random.default_rng(seed)
    stats = [values_fn(rng.integers(0, n_items, n_items)) for _ in range(reps)]
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def poisson_upper(events: int, exposure: float, level: float = 0.95) -> float:
    """Exact (Garwood) upper bound of a rate from `events` counted over `exposure` (e.g. mm^2).

    A bootstrap over fields cannot widen a count of zero; this bound can (3/area for none seen).
    """
    from scipy.stats import chi2

    return float(chi2.ppf(1 - (1 - level) / 2, 2 * (events + 1)) / 2 / exposure) if exposure > 0 else float("inf")
