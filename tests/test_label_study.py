"""Ji et al.'s options as training options: which negatives a batch holds, and how three experts' labels become one."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import AMIBR, needs_data, synthetic_fields  # noqa: E402
from mitoqp.training.samples import SampleSet  # noqa: E402
from mitoqp.training.sampling import subtype_targets, weighted_sampler  # noqa: E402


def sample_set(labels, lookalike=None, from_slide=None, atypical=None, field_index=None) -> SampleSet:
    n = len(labels)
    return SampleSet(np.zeros((n, 4, 4, 3), np.uint8), np.asarray(labels), np.asarray(lookalike if lookalike is not None else [False] * n),
                     np.zeros((n, 4)), np.asarray(field_index if field_index is not None else np.arange(n)), np.zeros((n, 2)),
                     np.asarray(from_slide if from_slide is not None else [False] * n),
                     np.asarray(atypical if atypical is not None else [-1] * n, np.int8))


def test_hard_negatives_are_drawn_more_often_and_random_ones_equally():
    s = sample_set([1, 0, 0, 0], lookalike=[False, True, False, False], from_slide=[False, False, True, False])
    hard = weighted_sampler(s, 3.0, 5.0, "hard")
    assert np.allclose(hard.neg_p, np.array([3, 5, 1]) / 9)
    rand = weighted_sampler(s, 3.0, 5.0, "random")
    assert np.allclose(rand.neg_p, 1 / 3)
    with pytest.raises(ValueError, match="train.negatives"):
        weighted_sampler(s, 3.0, 5.0, "mined")


@pytest.mark.parametrize("share", [0.5, 0.8])
def test_negative_share_sets_the_ratio_in_every_batch(share):
    s = sample_set([1, 1, 0, 0, 0])
    idx = weighted_sampler(s, 1.0, 1.0, "random", share).draw(np.random.default_rng(0), 100)
    assert len(idx) == 100 and (s.labels[idx] == 0).sum() == round(100 * share)
    with pytest.raises(ValueError, match="negative_share"):
        weighted_sampler(s, 1.0, 1.0, "random", 1.0)


class Voted:
    def __init__(self, votes):
        self.atypical_votes = votes


def test_subtype_targets_from_three_experts():
    # five figures with 0..3 atypical votes (majority label = votes >= 2), one negative, one without votes
    votes = [0, 1, 2, 3, -1]
    fields = [Voted(v) for v in votes] + [Voted(-1)]
    s = sample_set([1, 1, 1, 1, 1, 0], atypical=[0, 0, 1, 1, 1, -1], field_index=[0, 1, 2, 3, 4, 5])
    assert subtype_targets(s, fields, "majority").tolist() == [0, 0, 1, 1, 1, -1]
    assert subtype_targets(s, fields, "unanimous").tolist() == [0, -1, -1, 1, 1, -1]
    assert np.allclose(subtype_targets(s, fields, "agreement"), [0, 1 / 3, 2 / 3, 1, 1, -1])
    with pytest.raises(ValueError, match="subtype_labels"):
        subtype_targets(s, fields, "expert1")


def test_soft_subtype_targets_train_the_head(tmp_path):
    from mitoqp.training.losses import subtype_loss

    logits = torch.zeros(3, requires_grad=True)
    loss = subtype_loss(logits, torch.tensor([1 / 3, 2 / 3, -1.0]), 1.0)
    loss.backward()
    assert torch.allclose(logits.grad[:2], torch.tensor([(0.5 - 1 / 3) / 2, (0.5 - 2 / 3) / 2]))
    assert logits.grad[2] == 0


@needs_data
def test_amibr_fields_carry_the_experts_votes_and_the_majority_agrees():
    from mitoqp.datasets import read_amibr

    fields = read_amibr(AMIBR, None, {"validation"})
    votes = np.array([f.atypical_votes for f in fields])
    assert votes.min() >= 0 and votes.max() == 3
    assert all(f.atypical == (f.atypical_votes >= 2) for f in fields)
    assert ((votes == 1) | (votes == 2)).any()  # the experts disagree on some


def test_recipe_options_reach_training(tmp_path):
    from mitoqp.training.train import train

    tr, va = synthetic_fields(tmp_path, 12, "train", 0, subtypes=True), synthetic_fields(tmp_path, 4, "validation", 1, True)
    from dataclasses import replace

    tr = [replace(f, atypical_votes=3 if f.atypical else (1 if i % 4 == 0 else 0)) for i, f in enumerate(tr)]
    logs = []
    cfg = {"model": {"patch": 32, "widths": [8, 8, 16, 16], "subtype": True},
           "train": {"epochs": 1, "epoch_samples": 64, "batch": 16, "jitter": 4, "threads": 1, "negatives": "random",
                     "negative_share": 0.75, "subtype_labels": "unanimous"}}
    train(cfg, tr, va, tmp_path / "run", logs.append)
    line = next(m for m in logs if m.startswith("subtype labels unanimous"))
    assert "figures trained on" in line and "0 with a soft target" in line
