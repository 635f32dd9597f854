"""`mitoqp export --prefilter CHECKPOINT -o DIR`: a cheap first stage joined to the detector in DIR.

The runtime then scores every candidate with the prefilter and asks the
detector (and its subtype model) only about the candidates it passes. Its
threshold is chosen here, on the validation fields, so that it passes every
candidate the detector scores at least `keep_above` (by default the floor from
which the subtype model is asked, far below the detection threshold): on
validation no detection changes, and the share it passes is what the cascade
saves. Test and external fields then say whether that holds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from mitoqp.candidates import CandidateParams
from mitoqp.io_utils import atomic_path, write_json_atomic
from mitoqp.patches import extract_patches
from mitoqp.runtime.model import load_model
from mitoqp.training.samples import field_candidates

KEEP_ABOVE = 0.25  # the prefilter passes every validation candidate the detector scores this high


def validation_scores(fields, detector, prefilter, patch: int, params: CandidateParams) -> tuple[np.ndarray, np.ndarray]:
    """(detector, prefilter) mitosis probability of every candidate of every field, as the runtime finds them."""
    det, pre = [], []
    for f in fields:
        img = f.image()
        patches = extract_patches(img, field_candidates(img, f.mpp, params), patch)
        if len(patches):
            det.append(detector.backend.predict(patches)[:, 0])
            pre.append(prefilter.backend.predict(patches)[:, 0])
    return (np.concatenate(det), np.concatenate(pre)) if det else (np.zeros(0), np.zeros(0))


def choose_threshold(det: np.ndarray, pre: np.ndarray, keep_above: float) -> float:
    """The highest prefilter threshold that passes every candidate the detector scores at least `keep_above`."""
    kept = pre[det >= keep_above]
    if not len(kept):
        raise ValueError(f"no validation candidate reaches detector score {keep_above}: nothing to choose a "
                         "prefilter threshold by")
    return float(np.nextafter(np.float32(kept.min()), np.float32(0)))  # just below the lowest: every one passes


def attach_prefilter(out_dir: Path, checkpoint: Path, patches: np.ndarray, val_fields: list,
                     keep_above: float = KEEP_ABOVE) -> dict:
    """Export `checkpoint` as the prefilter of the model folder `out_dir`, its threshold chosen on `val_fields`."""
    from mitoqp.export.onnx_export import drop_precisions, export_model

    if not val_fields:
        raise ValueError("a prefilter's threshold is chosen on the AMi-Br validation split: give --amibr")
    config = json.loads((out_dir / "model.json").read_text())
    if config.get("kind", "patch") != "patch":
        raise ValueError("a prefilter goes with a patch model, not a dense one")
    with tempfile.TemporaryDirectory() as tmp:
        pre_cfg = export_model(checkpoint, Path(tmp), patches)
        for key in ("input_size", "mpp", "candidates"):
            if pre_cfg[key] != config[key]:
                raise ValueError(f"the prefilter differs from the detector in {key}: {pre_cfg[key]} vs {config[key]}")
        detector = load_model(out_dir, prefilter=False, subtype_floor=1.0)
        det, pre = validation_scores(val_fields, detector, load_model(Path(tmp)), detector.patch, detector.candidates)
        threshold = choose_threshold(det, pre, keep_above)
        for name in ("model.onnx", "model.pt"):
            with atomic_path(out_dir / name.replace("model", "prefilter")) as target:
                (Path(tmp) / name).replace(target)
    passed = pre >= threshold
    config.pop("prefilter", None)
    drop_precisions(out_dir, config)  # a precision is checked over every file of the model: make them again
    config["prefilter"] = {
        "file": "prefilter.onnx", "sha256": pre_cfg["onnx_sha256"], "torch_sha256": pre_cfg["torch_sha256"],
        "threshold": threshold, "keep_above": keep_above, "architecture": pre_cfg["architecture"],
        "widths": pre_cfg["widths"], "macs_per_patch": pre_cfg["macs_per_patch"], "checkpoint": str(checkpoint),
        "parity": pre_cfg["parity"], "recipe": pre_cfg.get("recipe"),
        "validation": {"candidates": int(len(pre)), "passed": int(passed.sum()),
                       "passed_share": float(passed.mean()) if len(pre) else 0.0,
                       "detections": int((det >= config["threshold"]).sum()),
                       "detections_passed": int((passed & (det >= config["threshold"])).sum())},
    }
    write_json_atomic(out_dir / "model.json", config)
    return config
