"""Evaluation maths on hand-made cases."""

import numpy as np
import pytest

from mitoqp.metrics import (MIDOG21_FIGURES_PER_MM2, Match, best_threshold, fitted_fp_rate, hpf_equivalent,
                            match_detections, operating_point, roc_auc, sensitivity_at_fpr, smoothed_threshold)


def test_one_to_one_matching_counts_duplicates_as_false():
    m = match_detections([[10, 10], [12, 10], [100, 100]], [0.9, 0.8, 0.7], [[11, 10]], radius_px=30)
    assert m.det_is_tp.tolist() == [True, False, False]
    assert m.fig_best_score.tolist() == [0.9]


def test_matching_maximises_matches_over_greedy():
    # greedy by score would give det 0 to fig 1 (nearer) and leave fig 0 unmatched
    m = match_detections([[20, 0], [45, 0]], [0.9, 0.5], [[0, 0], [25, 0]], radius_px=22)
    assert m.det_is_tp.all() and np.isfinite(m.fig_best_score).all()


def test_radius_is_inclusive_and_far_detections_are_false():
    m = match_detections([[30, 0], [31, 0]], [0.5, 0.9], [[0, 0]], radius_px=30)
    assert m.det_is_tp.tolist() == [True, False]


def test_empty_predictions_and_empty_truth():
    m = match_detections(np.zeros((0, 2)), np.zeros(0), [[5, 5]], 30)
    op = operating_point([m], 1.0, 0.5)
    assert op["recall"] == 0 and op["fp"] == 0 and op["hpf_f1"] == 0
    m = match_detections([[5, 5]], [0.8], np.zeros((0, 2)), 30)
    op = operating_point([m], 0.5, 0.5)
    assert op["fp"] == 1 and op["fp_per_mm2"] == 2 and op["figures"] == 0


def test_lookalike_hits_are_counted_separately():
    m = match_detections([[50, 50], [5, 5]], [0.9, 0.9], [[5, 5]], 30, lookalikes=[[52, 50]])
    op = operating_point([m], 1.0, 0.5)
    assert op["fp"] == 1 and op["fp_on_lookalikes"] == 1


def test_hpf_equivalent_precision():
    p, f1 = hpf_equivalent(0.8, 1.5)
    tp = 0.8 * MIDOG21_FIGURES_PER_MM2
    assert p == pytest.approx(tp / (tp + 1.5))
    assert f1 == pytest.approx(2 * p * 0.8 / (p + 0.8))
    assert MIDOG21_FIGURES_PER_MM2 == pytest.approx(4.7, abs=0.05)
    # a field-perfect classifier with one false detection per four 128-px fields is poor on a slide
    fp_mm2 = 0.25 / (0.032**2)
    assert hpf_equivalent(1.0, fp_mm2)[0] < 0.05


def test_best_threshold_prefers_fewer_false_detections():
    m = match_detections([[0, 0], [100, 100]], [0.9, 0.6], [[0, 0]], 30)
    best = best_threshold([m], 0.001)
    assert best["threshold"] > 0.6 and best["recall"] == 1.0 and best["fp"] == 0


def test_fitted_fp_rate_recovers_an_exponential_tail():
    """Negatives whose logits are exponential above 0 with rate 2: the fitted rate above the highest one is the
    true expected rate (within sampling error), where the count says 0."""
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(50):
        z = rng.exponential(0.5, 2000)
        fit = fitted_fp_rate(1 / (1 + np.exp(-z)), area_mm2=1.0, tail=200)
        t = 1 / (1 + np.exp(-(z.max() + 1.0)))  # above every negative
        expected = 2000 * np.exp(-2 * (z.max() + 1.0))
        errors.append(fit(np.array([t]))[0] / expected)
    assert 0.8 < np.median(errors) < 1.25
    assert fitted_fp_rate(np.array([0.5, 0.6]), 1.0) is None  # too few to fit
    below = fitted_fp_rate(np.linspace(0.01, 0.99, 99), 2.0, tail=20)(np.array([0.5]))[0]
    assert below == pytest.approx(50 / 2.0)  # below the tail: the count


def test_smoothed_threshold_does_not_stop_just_above_the_top_negative():
    """Positives well above the negatives: the plain rule stops just above the highest negative (0 counted false
    detections); the fitted rate still falls above it, so the smoothed rule goes higher while recall holds."""
    rng = np.random.default_rng(1)
    neg = 1 / (1 + np.exp(-rng.normal(-3, 1.2, 400)))
    pos = 1 / (1 + np.exp(-rng.normal(6, 1.0, 100)))
    m = Match(np.r_[pos, neg], np.r_[np.ones(100, bool), np.zeros(400, bool)], np.zeros(500, bool), pos)
    plain, smooth = best_threshold([m], 0.3), smoothed_threshold([m], 0.3)
    next_up = np.sort(pos[pos > neg.max()])[0]
    assert plain["fp"] == 0 and plain["threshold"] == pytest.approx((neg.max() + next_up) / 2)
    assert smooth["threshold"] > plain["threshold"] and smooth["fp"] == 0
    assert smooth["fp_per_mm2_fitted"] < 1.0 and smooth["recall"] > 0.9
    few = Match(np.array([0.9, 0.2]), np.array([True, False]), np.zeros(2, bool), np.array([0.9]))
    assert smoothed_threshold([few], 0.3)["threshold"] == best_threshold([few], 0.3)["threshold"]


def test_auc_and_sensitivity_at_fpr():
    labels = np.array([1, 1, 0, 0, 0, 0])
    assert roc_auc(labels, [0.9, 0.8, 0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(labels, [0.5] * 6) == 0.5
    scores = np.r_[np.linspace(0.5, 1, 10), np.linspace(0, 0.6, 100)]
    lab = np.r_[np.ones(10), np.zeros(100)]
    assert sensitivity_at_fpr(lab, scores, 0.01) == pytest.approx(0.9, abs=0.11)


def test_poisson_upper_bound_of_a_rate():
    from mitoqp.metrics import poisson_upper

    assert poisson_upper(0, 1.0) == pytest.approx(3.689, abs=0.01)  # two-sided 95%: -ln(0.025)
    assert poisson_upper(0, 0.25) == pytest.approx(4 * 3.689, abs=0.05)
    assert poisson_upper(5, 1.0) == pytest.approx(11.668, abs=0.01)


def test_bagged_cut_separates_separable_classes_and_reports_its_balanced_accuracy():
    from mitoqp.metrics import bagged_balanced_cut

    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    bacc, cut = bagged_balanced_cut(scores, labels)
    assert 0.35 < cut <= 0.6 and bacc == 1.0
    assert bagged_balanced_cut(scores, np.zeros(7)) == (pytest.approx(float("nan"), nan_ok=True), 0.5)


def test_bagged_cut_lies_nearer_the_population_cut_than_the_single_best_cut():
    """Two unit-variance normals (means 0 and 1.5): balanced accuracy is best at 0.75. On samples the size of
    validation (63 against 225), the bagged cut must miss it by less, on average, than the plain best cut
    (about a fifth less squared error over several seeds of this check; 0.9 leaves room)."""
    from mitoqp.metrics import balanced_accuracy_at, bagged_balanced_cut

    rng = np.random.default_rng(1)
    plain_err, bagged_err = [], []
    for _ in range(60):
        scores = np.concatenate([rng.normal(0, 1, 225), rng.normal(1.5, 1, 63)])
        labels = np.r_[np.zeros(225), np.ones(63)].astype(bool)
        u = np.unique(scores)
        cuts = (u[:-1] + u[1:]) / 2
        plain = cuts[int(np.argmax([balanced_accuracy_at(scores, labels, c) for c in cuts]))]
        plain_err.append((plain - 0.75) ** 2)
        bagged_err.append((bagged_balanced_cut(scores, labels, resamples=200)[1] - 0.75) ** 2)
    assert np.mean(bagged_err) < 0.9 * np.mean(plain_err)
