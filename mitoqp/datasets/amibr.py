"""AMi-Br and AtNorM-Br: 128-px fields centred on a mitotic figure.

The split is fixed by slide (see ../shared/data/README.md): validation and
test slides below, everything else trains. MIDOG21 fields get every figure
and look-alike inside them from the complete MIDOG 2021 labels; other fields
(TUPAC16, or MIDOG21 without those labels) get the figures of the table's other
rows that lie inside them, since a field is cut around one figure and its
neighbour on the same image would otherwise count as a negative.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from mitoqp.datasets.coco import read_coco
from mitoqp.datasets.fields import Field

PATCH = 128
SPLITS = {
    "MIDOG21": {
        "validation": {*range(41, 46), *range(91, 96), *range(141, 146)},
        "test": {*range(46, 51), *range(96, 101), *range(146, 151)},
    },
    "TUPAC16": {
        "validation": {30, 37, 44, 51, 58, 65, 72},
        "test": {31, 38, 45, 52, 59, 66, 73},
    },
}


# The sources a field can come from, by key: MIDOG21 cases 1-50, 51-100 and 101-150
# were scanned on three scanners (Aubreville et al. 2023); TUPAC16 is one source.
SOURCES = {"midog21-xr": "MIDOG21 Hamamatsu XR", "midog21-s360": "MIDOG21 Hamamatsu S360",
           "midog21-cs2": "MIDOG21 Aperio CS2", "tupac16": "TUPAC16"}


def source_of(dataset: str, slide: str) -> str:
    """The key in SOURCES of a slide's scanner or dataset: what `data.hold_out` names."""
    if dataset != "MIDOG21":
        return dataset.lower()
    m = re.match(r"\d+", slide)
    case = int(m.group()) if m else 0
    return {0: "midog21-xr", 1: "midog21-s360", 2: "midog21-cs2"}.get((case - 1) // 50, "midog21-other")


def check_sources(keys: list[str]) -> None:
    """A one-line ValueError for a source key that names no source."""
    for key in keys:
        if key not in SOURCES:
            raise ValueError(f"unknown source {key!r}: one of {', '.join(SOURCES)}")


def split_of(dataset: str, slide: str) -> str:
    m = re.match(r"\d+", slide)
    if not m or dataset not in SPLITS:
        raise ValueError(f"cannot place slide {slide!r} of {dataset!r} in the split")
    case = int(m.group())
    for split, cases in SPLITS[dataset].items():
        if case in cases:
            return split
    return "train"


def read_amibr(root: Path, midog_json: Path | None = None, splits: set[str] | None = None) -> list[Field]:
    """Fields of AMi-Br, optionally only some splits.

    `midog_json` (the complete MIDOG 2021 labels) adds the other figures and
    the look-alikes that fall inside MIDOG21 fields; without it, and for
    TUPAC16, the table's own figures on the same image that fall inside a field
    are added (TUPAC16 test field 4858 holds figure 4859, for example).
    """
    root = Path(root)
    table = root / "AMI-BR.csv"
    coco = read_coco(midog_json) if midog_json else {}
    fields = []
    try:
        rows = list(csv.DictReader(table.open(newline="")))
    except OSError as exc:
        raise ValueError(f"cannot read {table}: {exc}") from None
    table_figures = _figures_by_image(rows, table)
    for row in rows:
        try:
            dataset, slide, uid = row["dataset"], row["slide"], row["uid"]
            cx, cy = float(row["x"]), float(row["y"])
            atypical = row["majority_atypical"].strip() == "True"
            votes = sum(row[f"expert{i}_atypical"].strip() == "True" for i in (1, 2, 3)) if "expert3_atypical" in row else -1
        except (KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed row in {table}: {row!r} ({exc})") from None
        split = split_of(dataset, slide)
        if splits and split not in splits:
            continue
        path = root / ("Atypical" if atypical else "Normal") / f"{dataset}_{uid}.png"
        origin = np.array([cx - PATCH / 2, cy - PATCH / 2])
        lookalikes = np.zeros((0, 2))
        if dataset == "MIDOG21" and slide in coco:
            figures = _inside(coco[slide]["figures"] - origin)
            lookalikes = _inside(coco[slide]["lookalikes"] - origin)
        else:  # the field's own figure is one of the table's rows: at the centre
            figures = _inside(table_figures[(dataset, slide)] - origin)
        fields.append(Field(f"{dataset}_{uid}", path, dataset, split, figures, lookalikes, 0.25, atypical, votes,
                            source_of(dataset, slide)))
    return fields


def _figures_by_image(rows: list[dict], table: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every figure of the table by (dataset, image): the labels a field shares with its neighbours."""
    points: dict[tuple[str, str], list] = {}
    for row in rows:
        try:
            points.setdefault((row["dataset"], row["slide"]), []).append((float(row["x"]), float(row["y"])))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"malformed row in {table}: {row!r} ({exc})") from None
    return {key: np.array(value) for key, value in points.items()}


def _inside(points: np.ndarray) -> np.ndarray:
    keep = np.all((points >= 0) & (points < PATCH), axis=1)
    return points[keep]


def read_atnorm(root: Path) -> list[Field]:
    """AtNorM-Br fields (external test only): one figure at the centre of each."""
    root = Path(root)
    fields = []
    for label in ("Normal", "Atypical"):
        for path in sorted((root / label).glob("*.png")):
            fields.append(
                Field(f"atnorm-br_{label}_{path.stem}", path, "atnorm-br", "external",
                      np.array([[PATCH / 2, PATCH / 2]]), atypical=label == "Atypical")
            )
    if not fields:
        raise ValueError(f"no AtNorM-Br patches under {root}")
    return fields
