"""`mitoqp ablation`: one table from many `mitoqp evaluate` outputs, a row per recipe, seeds pooled.

Each row is `LABEL=EVAL_DIR[,EVAL_DIR...]`, one evaluation folder per seed. A
cell is the mean over seeds, with the spread (min-max) when there are several.
A held-out scanner (`evaluate --splits holdout:SOURCE`) gets its own columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mitoqp.metrics import MEAN_RECALL_LEVELS

SETS = (("test/all", "test"), ("external/atnorm-br", "AtNorM-Br"))


def parse_row(spec: str) -> tuple[str, list[Path]]:
    label, sep, dirs = spec.partition("=")
    if not sep or not dirs.strip():
        raise ValueError(f"an ablation row is LABEL=EVAL_DIR[,EVAL_DIR...], not {spec!r}")
    return label.strip(), [Path(d.strip()) for d in dirs.split(",") if d.strip()]


def load_report(directory: Path) -> dict:
    path = directory / "evaluation.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def mean_recall(froc: dict) -> float | None:
    """Recall averaged over 1-64 false detections per mm^2 (the criterion epochs are chosen by), if all levels are there."""
    if not all(str(level) in froc for level in MEAN_RECALL_LEVELS):
        return None
    return float(np.mean([froc[str(level)] for level in MEAN_RECALL_LEVELS]))


def row_values(reports: list[dict]) -> dict[str, list[float]]:
    """Per column, the value of each seed's report."""
    cols: dict[str, list[float]] = {}
    for r in reports:
        val = r["sets"].get("validation/all")
        if val is not None and mean_recall(val["froc_recall_at_fp_per_mm2"]) is not None:
            cols.setdefault("validation mean recall", []).append(mean_recall(val["froc_recall_at_fp_per_mm2"]))
        held_out = [(k, f"held-out {k.split('/', 1)[1]}") for k in sorted(r["sets"]) if k.startswith("holdout/")]
        for key, short in (*held_out, *SETS):
            s = r["sets"].get(key)
            if s is None:
                continue
            froc = s["froc_recall_at_fp_per_mm2"]
            for name, v in ((f"{short} HPF-F1", s["operating_point"]["hpf_f1"]), (f"{short} recall@1", froc["1"]),
                            (f"{short} recall@4", froc["4"]), (f"{short} mean recall", mean_recall(froc)),
                          (f"{short} cand. sens.", s["candidate_sensitivity"]["7.5um"])):
                if v is not None:
                    cols.setdefault(name, []).append(float(v))
            if s.get("subtype"):
                cols.setdefault(f"{short} subtype bal. acc.", []).append(float(s["subtype"]["balanced_accuracy"]))
        if r["model"].get("macs_per_patch"):  # older evaluations did not record it
            cols.setdefault("M MACs/patch", []).append(r["model"]["macs_per_patch"] / 1e6)
        if r.get("patch_cost"):
            cols.setdefault("CPU ms/patch", []).append(float(r["patch_cost"]["ms_per_patch"]))
    return cols


def cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return ""
    m = float(np.mean(values))
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def ablation_table(rows: list[str]) -> str:
    """Markdown: a row per recipe, mean (min-max) over its seeds."""
    parsed = [(label, [load_report(d) for d in dirs]) for label, dirs in map(parse_row, rows)]
    values = [(label, len(reps), row_values(reps)) for label, reps in parsed]
    columns = []
    for _, _, cols in values:
        columns += [c for c in cols if c not in columns]
    lines = ["| recipe | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for label, n, cols in values:
        lines.append(f"| {label} | {n} | " + " | ".join(cell(cols.get(c, []), 2 if "MACs" in c or "ms" in c else 3)
                                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"
