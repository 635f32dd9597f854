"""An ensemble model folder: several exported members whose outputs the runtime averages.

Each member is exported and parity-checked on its own; the ensemble's mitosis
threshold (best HPF-equivalent F1 with a fitted false-detection rate) and atypical threshold (the bagged best
balanced-accuracy cut, metrics.bagged_balanced_cut) are chosen for the averaged output on the validation fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mitoqp.io_utils import write_json_atomic
from mitoqp.runtime.model import members_sha256


def export_ensemble(checkpoints: list[Path], out_dir: Path, patches: np.ndarray, val_fields: list,
                    candidates: dict[str, float] | None = None, choose: bool = True) -> dict:
    """`candidates`: settings that replace the members' own before the thresholds are chosen (they are
    chosen on what the folder will see); `choose=False` leaves them to a later --rethreshold of the same
    command, which then chooses once, with the subtype model attached, instead of twice."""
    from mitoqp.export.onnx_export import export_model
    from mitoqp.export.thresholds import choose_thresholds

    members = [export_model(ck, out_dir, patches, onnx_name=f"member{i}.onnx") for i, ck in enumerate(checkpoints)]
    first = members[0]
    for m in members[1:]:
        for key in ("input_size", "mpp", "candidates", "nms_um", "outputs"):
            if m[key] != first[key]:
                raise ValueError(f"ensemble members differ in {key}: {first[key]} vs {m[key]}")
    config = {k: v for k, v in first.items() if k not in ("parity", "validation_metrics", "onnx_sha256", "threshold",
                                                          "atypical_threshold", "recipe")}
    config.update(
        id=out_dir.name, architecture=f"ensemble of {len(members)} x {first['architecture']}",
        macs_per_patch=sum(int(m["macs_per_patch"]) for m in members),
        members=[{"file": f"member{i}.onnx", "sha256": m["onnx_sha256"], "checkpoint": str(ck), "threshold": m["threshold"],
                  "recipe": m.get("recipe"), "parity": m["parity"], "validation_metrics": m["validation_metrics"]}
                 for i, (m, ck) in enumerate(zip(members, checkpoints))],
        onnx_sha256=members_sha256([m["onnx_sha256"] for m in members]),
        threshold=float(np.mean([m["threshold"] for m in members])),  # replaced on validation
    )
    if candidates:
        config["candidates"] = {**config.get("candidates", {}), **candidates}
    write_json_atomic(out_dir / "model.json", config)
    (out_dir / "model.onnx").unlink(missing_ok=True)  # a folder is one model or one ensemble, never both
    return choose_thresholds(out_dir, config, val_fields) if choose else config
