"""`mitoqp evaluate`: the model judged on held-out fields and slides, the way a slide would judge it.

Each field goes through the runtime path (`analyse_slide`, as `mitoqp run`),
detections are matched one-to-one to every figure inside the field within
7.5 um, and the headline numbers are recall against false detections per
mm^2 and the HPF-equivalent F1, with 95% bootstrap intervals over fields.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from mitoqp.datasets import Field, read_amibr, read_atnorm
from mitoqp.datasets.amibr import check_sources
from mitoqp.dense import tiles_per_batch
from mitoqp.io_utils import write_json_atomic, write_text_atomic
from mitoqp.metrics import (MIDOG21_FIGURES_PER_MM2, Match, balanced_accuracy_at, bootstrap_ci, froc, hpf_equivalent,
                            match_detections, operating_point, poisson_upper, roc_auc, sensitivity_at_fpr)
from mitoqp.patches import PAD_VALUE, extract_patches, inside_boxes
from mitoqp.pipeline import Options, analyse_slide
from mitoqp.runtime.backend import PrefilterCascade
from mitoqp.runtime.model import Model, load_model
from mitoqp.slide import ImageField, open_slide
from mitoqp.training.samples import label_candidates

MATCH_RADIUS_UM = 7.5
FROC_LEVELS = (0.5, 1, 2, 4, 8, 16, 32, 64)


@dataclass
class FieldOutcome:
    field: Field
    xy: np.ndarray
    scores: np.ndarray
    match: Match
    cand_label: np.ndarray  # +1 positive candidate, 0 negative, -1 neither (near a figure, not its nearest)
    area_mm2: float  # the field's area
    atypical: np.ndarray | None = None  # per candidate, with a subtype head
    size_px: tuple[int, int] = (0, 0)  # the field's width and height
    passed: np.ndarray | None = None  # per candidate, with a prefilter cascade: whether the detector saw it
    scored: int = -1  # candidates the model scored, before one figure, one detection thinned them to `xy`
    scored_xy: np.ndarray | None = None  # their centres


def run_fields(fields: list[Field], model: Model, stain_normalise: bool = False) -> list[FieldOutcome]:
    """Every candidate's score on every field, through the runtime path."""
    out = []
    # every candidate's score is kept whatever the threshold; the model's own passes a cascade's check
    opts = Options(use_tissue_mask=False, workers=1, stain_normalise=stain_normalise, keep_scored=True)
    for f in fields:
        opts.mpp = f.mpp
        with ImageField(f.path) as slide:
            res = analyse_slide(slide, model, opts)
            w, h = slide.info.dimensions
        radius = MATCH_RADIUS_UM / f.mpp
        m = match_detections(res.xy, res.scores, f.figures, radius, f.lookalikes)
        pos, neg = label_candidates(res.xy, f.figures, radius)
        # recoloured patches are not the field's own: the prefilter's decisions are then not scored again
        passed = None if stain_normalise else prefilter_passed(model, f, res.xy)
        out.append(FieldOutcome(f, res.xy, res.scores, m, np.where(pos, 1, np.where(neg, 0, -1)), w * h * (f.mpp / 1000) ** 2,
                                res.atypical, (w, h), passed, res.candidates, res.scored_xy))
    return out


def prefilter_passed(model: Model, field: Field, xy: np.ndarray) -> np.ndarray | None:
    """Which of a field's candidates the folder's prefilter passes on to the detector; None without a cascade.

    Scored again on the field's own patches, the path `mitoqp export --prefilter` chose the threshold on, so
    that the candidate budget can be read at both stages: blobs found, and blobs the detector has to score.
    """
    cascade = model.backend
    if not isinstance(cascade, PrefilterCascade):
        return None
    if not len(xy):
        return np.zeros(0, bool)
    patches = extract_patches(field.image(), xy, model.patch)
    return cascade.prefilter.predict(patches)[:, 0] >= cascade.threshold


def candidate_sensitivity(outs: list[FieldOutcome], radius_um: float, only_passed: bool = False,
                          scored: bool = False) -> float:
    """Share of the figures with a candidate within `radius_um` (`only_passed`: a candidate the prefilter passed;
    `scored`: any candidate the model scored, before duplicates were dropped: the front end's own sensitivity)."""
    hit = total = 0
    for o in outs:
        if len(o.field.figures):
            total += len(o.field.figures)
            xy = o.xy[o.passed] if only_passed else o.scored_xy if scored else o.xy
            if len(xy):
                hit += int((cKDTree(xy).query(o.field.figures)[0] <= radius_um / o.field.mpp).sum())
    return hit / total if total else float("nan")


def prefilter_summary(outs: list[FieldOutcome]) -> dict:
    """What a prefilter cascade leaves the detector: candidates per field and the figures still reachable."""
    if not outs or any(o.passed is None for o in outs):
        return {}
    passed = sum(int(o.passed.sum()) for o in outs)
    total = sum(len(o.xy) for o in outs)
    return {"passed_per_field": passed / len(outs), "passed_share": passed / total if total else 0.0,
            "candidate_sensitivity_passed": {"7.5um": candidate_sensitivity(outs, MATCH_RADIUS_UM, True)}}


def subtype_summary(outs: list[FieldOutcome], threshold: float, atypical_threshold: float) -> dict:
    """Atypical vs normal on each field's own (centre) figure, at the candidate nearest it within the match radius.

    Balanced accuracy over all such figures, and over those the detector also keeps at `threshold`.
    """
    truth, score, kept = [], [], []
    for o in outs:
        if o.atypical is None or not len(o.xy):
            continue
        img_c = np.array([64.0, 64.0]) if o.field.dataset in ("MIDOG21", "TUPAC16", "atnorm-br") else None
        if img_c is None:
            continue
        d = np.hypot(*(o.xy - img_c).T)
        i = int(np.argmin(d))
        if d[i] <= MATCH_RADIUS_UM / o.field.mpp:
            truth.append(o.field.atypical)
            score.append(float(o.atypical[i]))
            kept.append(o.scores[i] >= threshold)
    if not truth:
        return {}
    truth, score, kept = np.array(truth), np.array(score), np.array(kept)

    def bacc(sel):
        return balanced_accuracy_at(score[sel], truth[sel], atypical_threshold)

    every = np.ones(len(truth), bool)
    scored = np.isfinite(score)  # a prefilter's rejects have no subtype: they count as not atypical, and not in the AUC
    return {"figures": int(len(truth)), "atypical": int(truth.sum()), "balanced_accuracy": bacc(every),
            "auc": roc_auc(truth[scored], score[scored]), "without_subtype": int((~scored).sum()),
            "detected_figures": int(kept.sum()), "balanced_accuracy_detected": bacc(kept),
            "atypical_threshold": atypical_threshold}


def summarise(outs: list[FieldOutcome], threshold: float, reps: int, atypical_threshold: float = 0.5) -> dict:
    area = sum(o.area_mm2 for o in outs)
    matches = [o.match for o in outs]
    op = operating_point(matches, area, threshold)
    labels = np.concatenate([o.cand_label for o in outs])
    scores = np.concatenate([o.scores for o in outs])
    owner = np.concatenate([np.full(len(o.scores), i) for i, o in enumerate(outs)])
    keep = labels >= 0
    labels, scores, owner = labels[keep] == 1, scores[keep], owner[keep]
    # candidate stage: sensitivity at 7.5 um and 15 px, candidates per field
    sens = {name: candidate_sensitivity(outs, r_um) for name, r_um in (("7.5um", MATCH_RADIUS_UM), ("15px", 15 * 0.25))}
    points = froc(matches, area)
    froc_table = {}
    for level in FROC_LEVELS:
        ok = [p for p in points if p["fp_per_mm2"] <= level]
        froc_table[str(level)] = max((p["recall"] for p in ok), default=0.0)

    per_field = [(len(o.match.fig_best_score), int((o.match.fig_best_score >= threshold).sum()),
                  int(((o.match.det_scores >= threshold) & ~o.match.det_is_tp).sum())) for o in outs]
    nfig, ntp, nfp = (np.array(v, float) for v in zip(*per_field))
    farea = np.array([o.area_mm2 for o in outs])

    def op_stats(idx):
        r = ntp[idx].sum() / max(nfig[idx].sum(), 1)
        fp = nfp[idx].sum() / farea[idx].sum()
        p = ntp[idx].sum() / max(ntp[idx].sum() + nfp[idx].sum(), 1)
        return r, fp, (2 * p * r / (p + r) if p + r else 0.0), hpf_equivalent(r, fp)[1]

    def cand_stat(fn):
        groups = [np.flatnonzero(owner == i) for i in range(len(outs))]
        return lambda idx: fn(np.concatenate([groups[i] for i in idx]))

    ci = {}
    if reps > 0 and outs:
        for k, name in enumerate(("recall", "fp_per_mm2", "field_f1", "hpf_f1")):
            ci[name] = bootstrap_ci(lambda idx, k=k: op_stats(idx)[k], len(outs), reps)
        ci["auc"] = bootstrap_ci(cand_stat(lambda s: roc_auc(labels[s], scores[s])), len(outs), min(reps, 200))
    fp_upper = poisson_upper(op["fp"], area)
    op["fp_per_mm2_upper95"] = fp_upper
    op["hpf_f1_at_fp_upper95"] = hpf_equivalent(op["recall"], fp_upper)[1]
    return {
        "fields": len(outs), "field_area_mm2": area, "operating_point": op, "ci95": ci,
        "auc": roc_auc(labels, scores),
        "sensitivity_at_1pct_fpr": sensitivity_at_fpr(labels, scores, 0.01),
        "sensitivity_at_0.1pct_fpr": sensitivity_at_fpr(labels, scores, 0.001),
        "froc_recall_at_fp_per_mm2": froc_table,
        "candidate_sensitivity": sens,
        "candidates_per_field": float(np.mean([len(o.xy) for o in outs])) if outs else 0.0,
        # the front end's load on the detector: every candidate it scores, before the duplicates near a
        # higher-scoring one are dropped (the columns above count what is left after that)
        "candidates_scored_per_field": float(np.mean([o.scored for o in outs])) if outs else 0.0,
        "candidate_sensitivity_scored": ({"7.5um": candidate_sensitivity(outs, MATCH_RADIUS_UM, scored=True)}
                                         if outs and all(o.scored_xy is not None for o in outs) else {}),
        "subtype": subtype_summary(outs, threshold, atypical_threshold),
        "prefilter": prefilter_summary(outs),
    }


def padding_check(outs: list[FieldOutcome], model: Model, seed: int = 0) -> dict:
    """Scores of positives with and without the padding geometry of a random off-centre negative."""
    rng = np.random.default_rng(seed)
    size = model.patch
    plain, padded = [], []
    border_boxes = []
    for o in outs:
        img = o.field.image()
        boxes = inside_boxes(o.xy[o.cand_label == 0], size, img.shape[1], img.shape[0])
        border_boxes += [tuple(b) for b in boxes if tuple(b) != (0, 0, size, size)]
    for o in outs:
        pos = o.xy[o.cand_label == 1]
        if not len(pos) or not border_boxes:
            continue
        patches = extract_patches(o.field.image(), pos, size)
        plain.append(model.backend.predict(patches)[:, 0])
        for p in patches:
            x0, y0, x1, y1 = border_boxes[rng.integers(len(border_boxes))]
            keep = p[y0:y1, x0:x1].copy()
            p[:] = PAD_VALUE
            p[y0:y1, x0:x1] = keep
        padded.append(model.backend.predict(patches)[:, 0])
    if not plain:
        return {}
    a, b = np.concatenate(plain), np.concatenate(padded)
    t = model.threshold
    return {"positives": int(len(a)), "mean_score": float(a.mean()), "mean_score_padded": float(b.mean()),
            "mean_abs_change": float(np.abs(a - b).mean()), "decisions_changed": int(((a >= t) != (b >= t)).sum())}


def patch_cost(outs: list[FieldOutcome], model: Model, n: int = 1024, reps: int = 3) -> dict:
    """Milliseconds of model time per patch (best of `reps`), on real patches in batches of 256."""
    patches = []
    for o in outs:
        patches.append(extract_patches(o.field.image(), o.xy, model.patch))
        if sum(len(p) for p in patches) >= n:
            break
    if not patches:
        return {}
    step = tiles_per_batch(model.patch, 256)  # a dense model's tiles, a few at a time
    batch = np.concatenate(patches)[:n if step == 256 else 4 * step]
    model.backend.predict(batch[:step])  # warm-up
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        for i in range(0, len(batch), step):
            model.backend.predict(batch[i:i + step])
        best = min(best, time.perf_counter() - t)
    return {"patches": int(len(batch)), "ms_per_patch": 1000 * best / len(batch), "backend": model.backend.name}


def evaluate_slides(paths: list[Path], model: Model, threshold: float, fallback_mpp: float,
                    stain_normalise: bool = False) -> list[dict]:
    """Detections per mm^2 of tissue; on slides the model took negatives from, only the held-out part."""
    import shapely

    from mitoqp.training.samples import training_region

    used = {s["path"]: s for s in model.config.get("training_slides", [])}
    rows = []
    for p in paths:
        entry = used.get(p.name)
        with open_slide(p) as slide:
            mpp = slide.info.mpp or (entry or {}).get("mpp")
            roi, part = None, "whole slide"
            if entry:
                if entry.get("train_region") is None:
                    continue  # all of it was trained on: nothing held out to judge by
                w, h = slide.info.dimensions
                roi = shapely.box(0, 0, w, h).difference(training_region(w, h, entry["train_region"]))
                part = "held-out part"
            t = time.perf_counter()
            res = analyse_slide(slide, model, Options(mpp=mpp or fallback_mpp, threshold=threshold, roi=roi,
                                                      stain_normalise=stain_normalise))
            seconds = time.perf_counter() - t
        area = res.analysed_area_mm2
        rows.append({"slide": p.name, "part": part, "mpp": res.mpp,
                     "mpp_from": "metadata" if slide.info.mpp else "assumed",
                     "tissue_mm2": round(area, 3), "detections": res.count,
                     "detections_per_mm2": round(res.count / area, 2) if area else None,
                     "candidates_per_mm2": round(res.candidates / area, 1) if area else None,
                     "seconds": round(seconds, 2)})
    return rows


SCORES_COLUMNS = ("set", "field", "x_px", "y_px", "score", "detected", "outcome", "edge_um")


def scores_csv(outcomes: dict[str, list[FieldOutcome]], threshold: float) -> str:
    """Every scored point (candidate or map peak) of every field: where a model's false detections lie, to look at.

    `outcome` is what the one-to-one matching made of the point: `figure`, `look-alike` (unmatched, on a labelled
    look-alike) or `other`; `edge_um` is its distance to the field's nearest edge, where a field's tissue ends.
    """
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(SCORES_COLUMNS)
    for name, outs in sorted(outcomes.items()):
        for o in outs:
            w, h = o.size_px
            for (x, y), s, tp, la in zip(o.xy, o.match.det_scores, o.match.det_is_tp, o.match.det_on_lookalike):
                edge = min(x, y, w - x, h - y) * o.field.mpp
                out.writerow((name, o.field.name, f"{x:.1f}", f"{y:.1f}", f"{s:.6f}", int(s >= threshold),
                              "figure" if tp else "look-alike" if la else "other", f"{edge:.2f}"))
    return buf.getvalue()


def markdown(report: dict) -> str:
    lines = [f"# Evaluation of `{report['model']['id']}` (threshold {report['threshold']:.4f})", "",
             f"Match radius {MATCH_RADIUS_UM} um, one-to-one. HPF-equivalent F1: precision recomputed at "
             f"{report['figure_density_per_mm2']:.2f} figures/mm^2 (MIDOG21). Intervals: 95% bootstrap over fields.", "",
             "| set | fields | recall | FP/mm^2 | HPF-eq. F1 | field F1 | AUC | sens@1%FPR | sens@0.1%FPR | cand. sens 7.5um / 15px | cand./field |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, ci=None, nd=3):
        s = f"{v:.{nd}f}"
        return s + (f" ({ci[0]:.{nd}f}-{ci[1]:.{nd}f})" if ci else "")

    for name, r in report["sets"].items():
        op, ci = r["operating_point"], r["ci95"]
        lines.append(
            f"| {name} | {r['fields']} | {fmt(op['recall'], ci.get('recall'))} | {fmt(op['fp_per_mm2'], ci.get('fp_per_mm2'), 1)} | "
            f"{fmt(op['hpf_f1'], ci.get('hpf_f1'))} | {fmt(op['field_f1'], ci.get('field_f1'))} | {fmt(r['auc'], ci.get('auc'))} | "
            f"{r['sensitivity_at_1pct_fpr']:.3f} | {r['sensitivity_at_0.1pct_fpr']:.3f} | "
            f"{r['candidate_sensitivity']['7.5um']:.3f} / {r['candidate_sensitivity']['15px']:.3f} | {r['candidates_per_field']:.2f} |")
    scored = {n: r for n, r in report["sets"].items() if "candidates_scored_per_field" in r}
    if scored:
        lines += ["", "Candidates the model scores per field, before a candidate near a higher-scoring one is dropped as "
                  "the same figure (cand. sens. and cand./field above count what is left), and the share of figures "
                  "with one of them within 7.5 um: " + ", ".join(
                      f"{n} {r['candidates_scored_per_field']:.2f}"
                      + (f" ({r['candidate_sensitivity_scored']['7.5um']:.3f})" if r.get("candidate_sensitivity_scored") else "")
                      for n, r in scored.items())]
    lines += ["", "False detections are few: the exact Poisson 95% upper bound of the rate, and the HPF-equivalent F1 "
              "if the rate were that high (the bootstrap cannot widen a count of zero):", "",
              "| set | false detections | field area mm^2 | FP/mm^2 upper 95% | HPF-eq. F1 at that bound |", "|---|---|---|---|---|"]
    for name, r in report["sets"].items():
        op = r["operating_point"]
        lines.append(f"| {name} | {op['fp']} | {r['field_area_mm2']:.3f} | {op['fp_per_mm2_upper95']:.1f} | {op['hpf_f1_at_fp_upper95']:.3f} |")
    lines += ["", "FROC (recall at no more than N false detections per mm^2 of field):", "",
              "| set | " + " | ".join(str(level) for level in FROC_LEVELS) + " |", "|---|" + "---|" * len(FROC_LEVELS)]
    for name, r in report["sets"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['froc_recall_at_fp_per_mm2'][str(level)]:.3f}" for level in FROC_LEVELS) + " |")
    cascade = {n: r["prefilter"] for n, r in report["sets"].items() if r.get("prefilter")}
    if cascade:
        lines += ["", "Prefilter cascade: the candidates the detector still scores, and the figures with one of them "
                  "within 7.5 um:", "", "| set | candidates per field | passed on per field (share) | cand. sens. 7.5um | "
                  "after the prefilter |", "|---|---|---|---|---|"]
        for n, c in cascade.items():
            r = report["sets"][n]
            lines.append(f"| {n} | {r['candidates_per_field']:.2f} | {c['passed_per_field']:.2f} ({c['passed_share']:.3f}) | "
                         f"{r['candidate_sensitivity']['7.5um']:.3f} | {c['candidate_sensitivity_passed']['7.5um']:.3f} |")
    lines += ["", "Look-alikes: false detections on labelled MIDOG21 look-alikes: " + ", ".join(
        f"{n} {r['operating_point']['fp_on_lookalikes']}" for n, r in report["sets"].items())]
    subtype = {n: r["subtype"] for n, r in report["sets"].items() if r.get("subtype")}
    if subtype:
        lines += ["", "Subtype (atypical vs normal) of each field's own figure, at its nearest candidate:", "",
                  "| set | figures (atypical) | balanced accuracy | AUC | detected figures | balanced accuracy on those "
                  "| without a subtype (prefilter rejects) |", "|---|---|---|---|---|---|---|"]
        for n, st in subtype.items():
            lines.append(f"| {n} | {st['figures']} ({st['atypical']}) | {st['balanced_accuracy']:.3f} | {st['auc']:.3f} | "
                         f"{st['detected_figures']} | {st['balanced_accuracy_detected']:.3f} | {st.get('without_subtype', 0)} |")
    if report.get("padding"):
        pc = report["padding"]
        lines += ["", f"Padding check (validation positives given a negative's padding): mean score {pc['mean_score']:.3f} -> "
                  f"{pc['mean_score_padded']:.3f}, mean |change| {pc['mean_abs_change']:.4f}, decisions changed {pc['decisions_changed']} of {pc['positives']}."]
    if report.get("slides"):
        lines += ["", "Slides without annotated figures (detections are an upper bound on false positives):", "",
                  "| slide | part | mpp | tissue mm^2 | detections | per mm^2 | candidates per mm^2 |", "|---|---|---|---|---|---|---|"]
        for s in report["slides"]:
            lines.append(f"| {s['slide']} | {s['part']} | {s['mpp']} ({s['mpp_from']}) | {s['tissue_mm2']} | {s['detections']} | "
                         f"{s['detections_per_mm2']} | {s['candidates_per_mm2']} |")
    return "\n".join(lines) + "\n"


def evaluation_sets(args, unseen: list[str], model_id: str) -> dict[str, list[Field]]:
    """The fields of each set `args.splits` names; `unseen`: the sources the model was trained without."""
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in ("validation", "test", "atnorm-br") and not s.startswith("holdout:")]
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r}: validation, test, atnorm-br or holdout:SOURCE")
    sets: dict[str, list[Field]] = {}
    amibr_splits = {s for s in splits if s in ("validation", "test")}
    if amibr_splits:
        for f in read_amibr(args.amibr, args.midog_json, amibr_splits):
            if f.split == "validation" and f.source in unseen:  # validation as the model's training chose on it
                continue
            sets.setdefault(f"{f.split}/{f.dataset}", []).append(f)
    if "atnorm-br" in splits:
        sets["external/atnorm-br"] = read_atnorm(args.atnorm)
    held_out = [s.split(":", 1)[1] for s in splits if s.startswith("holdout:")]
    if held_out:
        check_sources(held_out)
        for key in held_out:
            if key not in unseen:
                raise ValueError(f"{model_id} was trained on {key}: holdout:{key} needs a model trained with "
                                 f"data.hold_out = [\"{key}\"]")
        for f in read_amibr(args.amibr, args.midog_json, {"train", "validation"}):
            if f.source in held_out:  # its train and validation fields; its test fields stay with test
                sets.setdefault(f"holdout/{f.source}", []).append(f)
    return sets


def evaluate_main(args) -> dict:
    model = load_model(args.model, backend=args.backend, tta=args.tta, precision=args.precision, subtype_floor=0.0,
                       prefilter=getattr(args, "prefilter", True))
    threshold = model.threshold if args.threshold is None else args.threshold
    model.check_threshold(threshold)  # before any field: below a prefilter's floor, figures would be missing
    sets = evaluation_sets(args, model.config.get("held_out_sources", []), model.id)
    if args.limit:
        sets = {k: v[: args.limit] for k, v in sets.items()}
    t0 = time.time()
    outcomes = {k: run_fields(v, model, args.stain_normalise) for k, v in sorted(sets.items())}
    scores = scores_csv(outcomes, threshold)  # before the pooled sets join, so each field is listed once
    report = {"model": {"id": model.id, "sha256": model.sha256, "macs_per_patch": model.config.get("macs_per_patch")},
              "options": {"tta": args.tta, "stain_normalise": args.stain_normalise, "backend": model.backend.name,
                          "limit": args.limit, "splits": args.splits, "candidates": model.candidates.to_dict()},
              "threshold": threshold,
              "figure_density_per_mm2": MIDOG21_FIGURES_PER_MM2, "sets": {}}
    for split in ("validation", "test"):
        pooled = [o for k, v in outcomes.items() if k.startswith(split + "/") for o in v]
        if pooled:
            outcomes[f"{split}/all"] = pooled
    for k in sorted(outcomes):
        report["sets"][k] = summarise(outcomes[k], threshold, args.bootstrap, model.atypical_threshold)
    if "validation/all" in outcomes:
        if model.kind == "patch":  # a dense model sees whole tiles: there is no candidate patch to pad
            report["padding"] = padding_check(outcomes["validation/all"], model)
        report["patch_cost"] = patch_cost(outcomes["validation/all"], model)
    slides = args.slides if args.slides is not None else sorted((Path(args.amibr).parent / "slides").glob("*.svs"))
    report["slides"] = (evaluate_slides([Path(s) for s in slides], model, threshold, 0.5, args.stain_normalise)
                        if slides else [])
    report["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "evaluation.json", report)
    write_text_atomic(args.out / "evaluation.md", markdown(report))
    write_text_atomic(args.out / "scores.csv", scores)
    print(markdown(report))
    return report
