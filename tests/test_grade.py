"""The Nottingham mitotic score: the anchor row exactly, other areas scaled at the same density."""

import pytest

from mitoqp.grade import mitotic_score, score_bounds
from mitoqp.hotspot import HPF_AREA_PRESETS_MM2


def test_the_anchor_field_gives_elston_and_ellis_bounds():
    assert score_bounds(2.74) == (10, 20)
    assert [mitotic_score(n, 2.74)["score"] for n in (0, 9, 10, 19, 20, 60)] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("area", [1.0, 2.0, *HPF_AREA_PRESETS_MM2.values(), 5.0])
def test_bounds_keep_the_anchor_density(area):
    two, three = score_bounds(area)
    # the first count at or above 10 (20) per 2.74 mm2, and nothing below it
    assert two / area >= 10 / 2.74 > (two - 1) / area
    assert three / area >= 20 / 2.74 > (three - 1) / area


def test_default_area_bounds_are_stated():
    s = mitotic_score(8, 2.0)
    assert (s["score"], s["score_1"], s["score_2"], s["score_3"]) == (2, "0-7", "8-14", ">=15")
    assert mitotic_score(7, 2.0)["score"] == 1 and mitotic_score(15, 2.0)["score"] == 3


def test_area_must_be_positive():
    with pytest.raises(ValueError):
        score_bounds(0.0)
