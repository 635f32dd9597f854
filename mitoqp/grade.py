"""The mitotic score of the Nottingham grade (breast carcinoma): 1, 2 or 3 from the hotspot's count.

The cut-offs are counts per ten high-power fields, and they depend on the
field's area. The anchor is Elston & Ellis (Histopathology 1991), as the CAP
breast protocol and the HL7 breast cancer data guide state it: a field of
0.274 mm^2 (diameter 0.59 mm), ten fields 2.74 mm^2, 0-9 mitoses score 1,
10-19 score 2, 20 or more score 3. The published tables for other field
diameters keep the mitotic density of those bounds (10 and 20 per 2.74 mm^2),
so the bounds here scale with the counted area: score 2 from
ceil(10 * A / 2.74), score 3 from ceil(20 * A / 2.74). Microscope tables
round each row by hand and can differ from this by one figure at a bound;
the report states the bounds it used so a pathologist can compare.
"""

from __future__ import annotations

import math

ANCHOR_AREA_MM2 = 2.74  # ten fields of 0.274 mm^2 (Elston & Ellis 1991)
ANCHOR_BOUNDS = (10, 20)  # the first count that scores 2, and 3, in the anchor area
BASIS = "Elston & Ellis 1991 (10 fields of 0.274 mm²: 0-9 → 1, 10-19 → 2, ≥20 → 3), scaled to the counted area"


def score_bounds(area_mm2: float) -> tuple[int, int]:
    """The first count that scores 2 and the first that scores 3, in `area_mm2` (ten fields)."""
    if not area_mm2 > 0:
        raise ValueError(f"the counted area must be positive, not {area_mm2!r}")
    # rounded to 9 digits first so an area that is exactly the anchor's gives the anchor's bounds
    return tuple(max(1, math.ceil(round(b * area_mm2 / ANCHOR_AREA_MM2, 9))) for b in ANCHOR_BOUNDS)


def mitotic_score(count: int, area_mm2: float, tissue_mm2: float | None = None) -> dict:
    """The score (1-3) of `count` figures in `area_mm2`, with the bounds used, for the record and report.

    With less tissue than the counted area (a single field, a biopsy fragment)
    ten fields cannot be counted, and a score from fewer would understate it:
    the score is then None and `withheld` says why.
    """
    two, three = score_bounds(area_mm2)
    out = {"score": 3 if count >= three else 2 if count >= two else 1, "count": int(count), "area_mm2": area_mm2,
           "score_1": f"0-{two - 1}", "score_2": f"{two}-{three - 1}", "score_3": f">={three}"}
    if tissue_mm2 is not None and tissue_mm2 < area_mm2:
        out.update(score=None, withheld=f"{tissue_mm2:.3g} mm2 of tissue, less than the {area_mm2:g} mm2 counted")
    return out
