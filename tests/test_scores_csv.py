"""`scores.csv` of `mitoqp evaluate`: every scored point of every field, with what the matching made of it."""

import csv
import io
from pathlib import Path

import numpy as np

from mitoqp.datasets import Field
from mitoqp.evaluate import SCORES_COLUMNS, FieldOutcome, scores_csv
from mitoqp.metrics import match_detections


def outcome(name: str, xy, scores, figures, lookalikes=()) -> FieldOutcome:
    f = Field(name, Path(f"/nowhere/{name}.png"), "MIDOG21", "test", np.array(figures, float).reshape(-1, 2),
              np.array(lookalikes, float).reshape(-1, 2), mpp=0.25)
    xy, scores = np.array(xy, float).reshape(-1, 2), np.array(scores, float)
    m = match_detections(xy, scores, f.figures, 7.5 / 0.25, f.lookalikes)
    return FieldOutcome(f, xy, scores, m, np.zeros(len(scores), int), 128 * 128 * (0.25 / 1000) ** 2, None, (128, 128))


def test_each_point_is_listed_once_with_its_outcome_and_distance_to_the_edge():
    outs = {"test/MIDOG21": [outcome("a", [[64, 64], [10, 100], [120, 30]], [0.95, 0.97, 0.2], [[62, 65]], [[118, 28]])],
            "test/TUPAC16": [outcome("b", [[3, 64]], [0.5], [])]}
    rows = list(csv.DictReader(io.StringIO(scores_csv(outs, threshold=0.9))))
    assert tuple(rows[0]) == SCORES_COLUMNS and len(rows) == 4
    by_xy = {(r["field"], float(r["x_px"]), float(r["y_px"])): r for r in rows}
    centre, edge, lookalike, other = (by_xy[("a", 64, 64)], by_xy[("a", 10, 100)], by_xy[("a", 120, 30)],
                                      by_xy[("b", 3, 64)])
    assert (centre["outcome"], centre["detected"]) == ("figure", "1")
    assert (edge["outcome"], edge["detected"]) == ("other", "1")  # a false detection, 10 px = 2.5 um from the edge
    assert float(edge["edge_um"]) == 2.5 and float(centre["edge_um"]) == 16.0
    assert (lookalike["outcome"], lookalike["detected"]) == ("look-alike", "0")
    assert other["set"] == "test/TUPAC16" and float(other["edge_um"]) == 0.75 and other["detected"] == "0"


def test_a_field_without_points_gives_the_header_alone():
    assert scores_csv({"validation/MIDOG21": [outcome("c", [], [], [[64, 64]])]}, 0.5).splitlines() == [",".join(SCORES_COLUMNS)]
