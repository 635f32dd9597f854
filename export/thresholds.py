"""A model folder's thresholds chosen on the validation fields, through the runtime.

Why through the runtime: an ensemble's averaged output has no training-time
validation to take them from, and a model exported before the threshold rule
changed (metrics.smoothed_threshold) keeps its old operating point until it is
chosen again (`mitoqp export -o DIR --rethreshold`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mitoqp.io_utils import write_json_atomic


SAME = 1e-6  # thresholds closer than this are the same score (a float32 of training against a float64 here)


def choose_thresholds(out_dir: Path, config: dict, val_fields: list, atypical: bool = True, again: bool = False) -> dict:
    """Set the mitosis threshold (and, with `atypical`, the atypical one) of the folder's model on validation;
    `again` keeps the training-time validation record and notes the threshold it replaces (where it changes)."""
    from mitoqp.evaluate import MATCH_RADIUS_UM, run_fields
    from mitoqp.metrics import bagged_balanced_cut, smoothed_threshold
    from mitoqp.runtime.model import load_model

    outs = run_fields(val_fields, load_model(out_dir, subtype_floor=0.0))
    best = smoothed_threshold([o.match for o in outs], sum(o.area_mm2 for o in outs))
    changed = config.get("threshold") is None or abs(float(config["threshold"]) - float(best["threshold"])) > SAME
    before = {"threshold_before": config.get("threshold")} if again and changed else {}
    config["threshold"] = float(best["threshold"])
    config["validation_metrics"] = {**(config.get("validation_metrics", {}) if again else {}), **best, **before}
    if atypical and "atypical" in config.get("outputs", []):
        truth, score = [], []
        for o in outs:
            d = np.hypot(*(o.xy - 64.0).T) if len(o.xy) else np.zeros(0)
            if len(d) and d.min() <= MATCH_RADIUS_UM / o.field.mpp:
                truth.append(int(o.field.atypical))
                score.append(float(o.atypical[int(np.argmin(d))]))
        bacc, t = bagged_balanced_cut(np.array(score), np.array(truth))
        if again and abs(float(config.get("atypical_threshold", t)) - t) > SAME:  # unchanged: the record before stays
            config["validation_metrics"]["atypical_threshold_before"] = config["atypical_threshold"]
        config["atypical_threshold"], config["validation_metrics"]["subtype_balanced_accuracy"] = t, bacc
        config["validation_metrics"]["atypical_threshold_rule"] = "bagged: median of 1000 bootstrap resamples' best cuts"
    write_json_atomic(out_dir / "model.json", config)
    return config
