"""`mitoqp stain-survey`: the stain vectors of the real sources, per slide, to calibrate stain augmentation.

Each training slide's fields are pooled and their Macenko H and E vectors and
99th-percentile densities measured. Grouped by source (MIDOG21's three
scanners, TUPAC16), the spread says how far real scanners and labs move the
stains; the `macenko` stain augmentation draws from that spread, widened by a
factor (`stain_exceed`). AtNorM-Br is measured and reported for the reader
only: nothing reads its numbers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from mitoqp.datasets import Field, read_amibr, read_atnorm
from mitoqp.datasets.amibr import SOURCES, check_sources
from mitoqp.stain_normalise import estimate


def measure(groups: dict[str, list[np.ndarray]]) -> list[dict]:
    """One row per group of images (a slide): H, E vectors and 99th-percentile densities."""
    rows = []
    for key, images in groups.items():
        try:
            he, max_conc = estimate(np.concatenate([im.reshape(-1, 3) for im in images]))
        except ValueError:
            continue
        rows.append({"group": key, "h": he[0].tolist(), "e": he[1].tolist(), "max_conc": max_conc.tolist()})
    return rows


def summarise_rows(rows: list[dict]) -> dict:
    h, e, c = (np.array([r[k] for r in rows]) for k in ("h", "e", "max_conc"))
    ref_h, ref_e = h.mean(0) / np.linalg.norm(h.mean(0)), e.mean(0) / np.linalg.norm(e.mean(0))

    def ang(v, ref):
        return np.degrees(np.arccos(np.clip(v @ ref, -1, 1)))

    return {"slides": len(rows), "h_mean": ref_h.tolist(), "e_mean": ref_e.tolist(),
            "h_std": h.std(0).tolist(), "e_std": e.std(0).tolist(),
            "h_angle_deg_max": float(ang(h, ref_h).max()), "e_angle_deg_max": float(ang(e, ref_e).max()),
            "log_max_conc_mean": np.log(c).mean(0).tolist(), "log_max_conc_std": np.log(c).std(0).tolist()}


def survey(amibr: Path, midog_json: Path | None, atnorm: Path | None, per_group: int = 40,
           hold_out: list[str] | None = None) -> dict:
    """Per-source summaries of the training split's slides, the pooled training summary, and AtNorM-Br for reference.

    `hold_out` leaves sources (keys of SOURCES) out, for a run trained with the same `data.hold_out`: the held-out
    source's stains must not shape the augmentation that is judged on it.
    """
    import csv

    check_sources(list(hold_out or []))

    slide_by_name = {}
    for row in csv.DictReader((Path(amibr) / "AMI-BR.csv").open(newline="")):
        slide_by_name[f"{row['dataset']}_{row['uid']}"] = row["slide"]
    by_slide: dict[tuple[str, str], list[Field]] = defaultdict(list)
    for f in read_amibr(amibr, midog_json, {"train"}):
        if f.source in (hold_out or []):
            continue
        slide = slide_by_name.get(f.name, f.name)
        by_slide[(SOURCES.get(f.source, f.source), slide)].append(f)
    rows_by_source: dict[str, list[dict]] = defaultdict(list)
    for (source, slide), fields in sorted(by_slide.items()):
        for r in measure({slide: [f.image() for f in fields[:per_group]]}):
            rows_by_source[source].append(r)
    out = {"sources": {s: summarise_rows(r) for s, r in rows_by_source.items() if r},
           "training": summarise_rows([r for rows in rows_by_source.values() for r in rows])}
    if hold_out:
        out["held_out"] = sorted(hold_out)
    if atnorm and Path(atnorm).exists():
        fields = read_atnorm(atnorm)
        rng = np.random.default_rng(0)
        groups = {f"atnorm-{i}": [fields[j].image() for j in rng.choice(len(fields), 20, replace=False)] for i in range(20)}
        out["external_for_reference_only"] = {"atnorm-br (random groups of 20 fields)": summarise_rows(measure(groups))}
    return out
