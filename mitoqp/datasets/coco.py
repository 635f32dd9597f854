"""MIDOG-style COCO JSON: figure and look-alike boxes per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIGURE_CATEGORY = 1
LOOKALIKE_CATEGORY = 2


def read_coco(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{file_name: {"figures": (N, 2), "lookalikes": (M, 2)}} of box centres.

    Boxes are MIDOG's `[x1, y1, x2, y2]`. Category 1 is a mitotic figure, 2 a look-alike.
    """
    try:
        doc = json.loads(Path(path).read_text())
        images = {im["id"]: im["file_name"] for im in doc["images"]}
        anns = doc["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a COCO annotation file: {path}: {exc}") from None
    found: dict[str, dict[str, list]] = {n: {"figures": [], "lookalikes": []} for n in images.values()}
    for ann in anns:
        try:
            x1, y1, x2, y2 = (float(v) for v in ann["bbox"])
            name = images[ann["image_id"]]
            cat = int(ann["category_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed annotation in {path}: {ann!r} ({exc})") from None
        key = {FIGURE_CATEGORY: "figures", LOOKALIKE_CATEGORY: "lookalikes"}.get(cat)
        if key:
            found[name][key].append(((x1 + x2) / 2, (y1 + y2) / 2))
    return {
        n: {k: np.asarray(v, dtype=np.float64).reshape(-1, 2) for k, v in d.items()}
        for n, d in found.items()
    }
