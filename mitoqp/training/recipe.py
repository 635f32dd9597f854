"""The settings a training recipe (configs/*.toml) may hold, and their types: checked before any data is read.

A misspelt key would otherwise be ignored silently (the default used, the
run wasted), and a wrong type would fail deep inside training. Choices among
names (train.select, train.stain_aug...) are checked where they are used.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

NUMBER = (int, float)
TOP = {"method": str, "match_radius_um": NUMBER, "nms_um": NUMBER,
       "data": dict, "model": dict, "train": dict, "candidates": dict, "dense": dict}
SECTIONS: dict[str, dict[str, type | tuple]] = {
    "data": {"amibr": str, "midog_json": str, "slides": list, "limit_fields": int, "hold_out": list, "keep_held_out": int},
    "model": {"patch": int, "widths": list, "se": bool, "subtype": bool, "input_pool": int, "input_norm": str, "efdmix_p": NUMBER, "efdmix_alpha": NUMBER,
              "child_classes": int, "crop": int, "image": int, "k": int, "m": int, "glb": bool,
              "discriminators": int, "ndf": int, "ngf": int, "global_blocks": int, "local_blocks": int, "score": str, "smooth": int},
    "train": {name: NUMBER for name in (
        "lr", "weight_decay", "focal_alpha", "focal_gamma", "center_weight", "child_weight", "subtype_weight",
        "lookalike_weight", "slide_weight", "negative_share", "ema_decay", "border_match", "dgsb_easy_below",
        "dgsb_easy_keep", "scale_jitter", "jpeg_p", "jpeg_quality", "brightness", "contrast", "lowres_factor",
        "lowres_p", "stain_bias", "stain_exceed",
        "stain_sigma", "feature_matching", "gan_gamma", "pixel_gamma", "pixel_weight", "glass_share", "slide_share",
        "ignore_um", "positive_um", "distill_weight", "distill_temperature", "domain_weight",
        "amp_mix_p", "amp_mix_strength")}
    | {name: int for name in ("seed", "threads", "jitter", "epochs", "batch", "epoch_samples", "child_per_class",
                              "phase1_epochs", "dgsb_clusters", "save_every", "images_per_field",
                              "teacher_views")}
    | {"dgsb": bool, "prefetch": bool, "child_classes": str, "negatives": str, "subtype_labels": str, "select": str,
       "stain_aug": str, "stain_survey": str, "teacher": list, "teacher_from": str, "labels": str, "device": str, "init": str},
    "candidates": {name: NUMBER for name in ("sigma_um", "threshold", "min_area_um2", "max_area_um2",
                                                   "merge_um", "centre_power", "peak_area_um2", "peak_um")},
    "dense": {"tile": int, "output_stride": int, "context_px": int, "context_probe": int,
              "min_distance_um": NUMBER, "peak_floor": NUMBER},
}
SLIDE_KEYS = {"path": str, "mpp": NUMBER, "train_region": list, "annotations": str, "roi": str}


def check_recipe(cfg: dict, path: Path) -> None:
    """A ValueError naming the first unknown key or wrongly typed value of the recipe at `path`."""
    check_table(cfg, TOP, "", path)
    for section, schema in SECTIONS.items():
        if section in cfg:
            check_table(cfg[section], schema, f"{section}.", path)
    for i, slide in enumerate(cfg.get("data", {}).get("slides", [])):
        if not isinstance(slide, dict) or "path" not in slide:
            raise ValueError(f"config {path}: data.slides[{i}] needs a path")
        check_table(slide, SLIDE_KEYS, f"data.slides[{i}].", path)
        region = slide.get("train_region")
        if region is not None and (len(region) != 4 or not all(is_number(v) and 0 <= v <= 1 for v in region)):
            raise ValueError(f"config {path}: data.slides[{i}].train_region must be 4 fractions x0, y0, x1, y1")
    widths = cfg.get("model", {}).get("widths")
    if widths is not None and (not widths or not all(isinstance(w, int) and 0 < w <= 4096 for w in widths)):
        raise ValueError(f"config {path}: model.widths must be a list of channel counts")


def check_table(table: dict, schema: dict, prefix: str, path: Path) -> None:
    for key, value in table.items():
        if key not in schema:
            near = difflib.get_close_matches(key, schema, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ValueError(f"config {path}: unknown setting {prefix}{key}{hint}")
        want = schema[key]
        ok = is_number(value) if want is NUMBER else (isinstance(value, want) and not
                                                       (want is int and isinstance(value, bool)))
        if not ok:
            kind = "a number" if want is NUMBER else f"a {'table' if want is dict else want.__name__}"
            raise ValueError(f"config {path}: {prefix}{key} is {value!r}, not {kind}")
        if want in (NUMBER, int) and value < 0:
            raise ValueError(f"config {path}: {prefix}{key} is {value!r}, not a number of 0 or more")


def is_number(value) -> bool:
    return isinstance(value, NUMBER) and not isinstance(value, bool) and math.isfinite(value)
