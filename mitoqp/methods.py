"""`mitoqp evaluate --models A,B,...`: the methods side by side on the same split, as benchmarks/METHODS.md.

Each model is evaluated by the one evaluation (every field through the
runtime path of `mitoqp run`); the table adds what a lab choosing a method
weighs besides accuracy: parameters, multiply-accumulates per megapixel of
dense tumour, CPU seconds on the real slides (and on a large slide with
`--bench-slide`), and the seed paper's own figure beside ours.
"""

from __future__ import annotations

import time
from pathlib import Path

from mitoqp.runtime.model import Model, load_model, subtype_members

# the seed papers' own figures, and why ours cannot equal them (their data, their metric)
PAPER_FIGURES = {
    "baseline": ("-", "mitoqp's own recipe"),
    "mitdet": ("F1 0.79 (MIDOG21)", "whole MIDOG21 images with their own candidates and ImageNet weights; field F1"),
    "uts": ("F1 0.767 (TUPAC16), 0.713 (MIDOG21)", "whole high-power patches with image-level negatives, ResNet-18 "
            "blocks pre-trained on ImageNet; F1 per patch set"),
    "rdlm": ("F1 0.692 (MITOS-ATYPIA-14, Aperio)", "another dataset (MITOS-ATYPIA-14), boxes and a region proposal "
             "network on an ImageNet ResNet-50; F1 over its test HPFs"),
    "minugan": ("F1 0.872 (TUPAC16), 0.851 (ICPR12); mitosis DSC 0.721", "hand-drawn nuclei and mitosis masks, "
                "256-px patches that each hold a figure (no figure-free tissue), F1 within 7 um per patch set"),
}
# what each method learns from, the label cost a lab weighs (Ji et al.: label type)
LABELS = {
    "baseline": "points",
    "mitdet": "points",
    "uts": "image labels",
    "rdlm": "points",
    "minugan": "masks (pseudo, from points + hematoxylin)",
}
DEFAULT_SPLITS = "validation,test,atnorm-br"  # what evaluations from before options recorded their splits ran on
FIELD_MP = 128 * 128 / 1e6  # an AMi-Br field at 0.25 um/px


def method_of(model: Model) -> str:
    if model.config.get("method"):
        return str(model.config["method"])
    if model.kind != "patch":
        return "other"  # a dense model of no known recipe
    recipe = model.config.get("recipe") or {}
    if isinstance(recipe, str):  # older folders name the recipe file
        return "mitdet" if "mitdet" in recipe else "baseline"
    mitdet = recipe.get("dgsb") or recipe.get("child_classes", "none") != "none"
    return "mitdet" if mitdet else "baseline"


def parameters(model: Model) -> int | None:
    """Weights in the model's ONNX files (None without the onnx package)."""
    try:
        import numpy as np
        import onnx
    except ImportError:
        return None
    files = [m["file"] for m in model.config.get("members", [])] or ["model.onnx"]
    if model.config.get("subtype_model"):
        files += [m["file"] for m in subtype_members(model.config["subtype_model"])]
    return int(sum(np.prod(t.dims) for f in files for t in onnx.load(str(model.directory / f)).graph.initializer))


def macs_per_tumour_mp(model: Model, report: dict) -> float | None:
    """Multiply-accumulates per megapixel of dense tumour: per candidate times candidates (patch), per valid tile area (dense)."""
    macs = model.config.get("macs_per_patch")
    if not macs:
        return None
    if model.kind == "dense":
        d = model.config["dense"]
        valid = (model.patch - 2 * int(d["context_px"])) ** 2 / 1e6
        return macs / valid
    per_field = report["sets"].get("test/all", {}).get("candidates_per_field")
    return macs * per_field / FIELD_MP if per_field else None


def bench_seconds(model: Model, slide: Path) -> float:
    from mitoqp.pipeline import Options, analyse_slide
    from mitoqp.slide import open_slide

    with open_slide(slide) as s:
        t = time.perf_counter()
        analyse_slide(s, model, Options())
        return time.perf_counter() - t


def earlier_report(out: Path, model: Model, args) -> dict | None:
    """An evaluation already in `out` of this very model (same sha256, threshold and candidate settings:
    `mitoqp export --rethreshold --candidates` keep the files) under the same options, to reuse."""
    import json

    from mitoqp.candidates import CandidateParams

    path = out / "evaluation.json"
    if getattr(args, "fresh", False) or not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    opts = report.get("options", {})
    threshold = model.threshold if getattr(args, "threshold", None) is None else float(args.threshold)
    try:
        candidates = CandidateParams(**opts.get("candidates", {})).to_dict()  # settings added since: their defaults
    except TypeError:  # a setting this version does not know
        candidates = None
    same = (report.get("model", {}).get("sha256") == model.sha256 and report.get("threshold") == threshold
            and candidates == model.candidates.to_dict()
            and opts.get("tta", 1) == getattr(args, "tta", 1)
            and bool(opts.get("stain_normalise")) == bool(getattr(args, "stain_normalise", False))
            and opts.get("limit") == getattr(args, "limit", None) and opts.get("splits", DEFAULT_SPLITS) == getattr(args, "splits", None))
    if same:
        print(f"{out.name}: reusing the evaluation in {path} (same model and options; --fresh to redo)")
    return report if same else None


def comparison_table(rows: list[tuple[str, Model, dict, float | None]]) -> str:
    lines = ["# Methods on the same split", "",
             "Every model evaluated by `mitoqp evaluate` (each field through the runtime path of `mitoqp run`; "
             "matches within 7.5 um; HPF-equivalent F1 at MIDOG21's 4.7 figures/mm^2). Recall at N: recall at no "
             "more than N false detections per mm^2 of field. MACs per MP: of dense tumour (AMi-Br test fields).", "",
             "| method | labels | model | kind | test HPF-F1 | AtNorM-Br HPF-F1 | test R@1 / R@4 | AtNorM-Br R@1 / R@4 | parameters | "
             "G MACs per MP | CPU s, real slides | CPU s, large slide | seed paper's figure | why it differs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, model, report, big in rows:
        sets = report["sets"]

        def f1(key: str) -> str:
            return f"{sets[key]['operating_point']['hpf_f1']:.3f}" if key in sets else "-"

        def recall(key: str) -> str:
            fr = sets.get(key, {}).get("froc_recall_at_fp_per_mm2")
            return f"{fr['1']:.3f} / {fr['4']:.3f}" if fr else "-"

        method = method_of(model)
        paper, why = PAPER_FIGURES.get(method, ("-", ""))
        params = parameters(model)
        macs = macs_per_tumour_mp(model, report)
        slide_s = sum(s.get("seconds", 0.0) for s in report.get("slides", []))
        cells = [method, LABELS.get(method, "-"), f"{name} (`{model.id}`)", model.kind, f1("test/all"), f1("external/atnorm-br"),
                 recall("test/all"), recall("external/atnorm-br"),
                 "-" if params is None else f"{params / 1e6:.2f} M", "-" if macs is None else f"{macs / 1e9:.1f}",
                 f"{slide_s:.1f}", "-" if big is None else f"{big:.1f}", paper, why]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_models(args, evaluate) -> str:
    """Evaluate each of `args.models` into OUT/<name>/ and write the table to OUT/methods.md (and --table)."""
    from copy import copy

    from mitoqp.io_utils import write_text_atomic

    rows = []
    for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = load_model(spec, backend=args.backend, precision=args.precision,
                           prefilter=getattr(args, "prefilter", True))
        sub = copy(args)
        sub.model, sub.out = spec, Path(args.out) / Path(spec).name
        report = earlier_report(sub.out, model, args) or evaluate(sub)
        big = bench_seconds(model, Path(args.bench_slide)) if args.bench_slide else None
        rows.append((Path(spec).name, model, report, big))
    table = comparison_table(rows)
    write_text_atomic(Path(args.out) / "methods.md", table)
    if args.table:
        write_text_atomic(Path(args.table), table)
    print(table, end="")
    return table
