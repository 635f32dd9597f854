"""`mitoqp run`: many slides in, per-slide GeoJSON and QC image, a run summary out.

A bad slide gets a one-line error in the summary and the run goes on. Every
file is written under a temporary name and renamed, and a slide's record
(`<name>.result.json`) is written last, so a re-run can skip exactly the
slides whose outputs are complete.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from mitoqp import __version__
from mitoqp.candidates import CandidateParams
from mitoqp.density import activity_index, density_features, tissue_fraction
from mitoqp.executors import Job, RaySettings, run_local, run_ray
from mitoqp.faults import checkpoint
from mitoqp.folder_lock import FolderLock, remove_stale_temporaries
from mitoqp.grade import mitotic_score
from mitoqp.io_utils import write_json_atomic, write_text_atomic
from mitoqp.pipeline import Options, analyse_slide
from mitoqp.qupath_geojson import detection_features, hotspot_feature, tissue_feature, write_detections
from mitoqp.report import save_overview, write_report
from mitoqp.runtime.model import Model
from mitoqp.slide import FIELD_SUFFIXES, SLIDE_SUFFIXES, SkippingSlide, SlideError, open_slide
from mitoqp.tissue import save_qc, tissue_geometry

SUMMARY_FIELDS = [
    "slide", "status", "error", "mitotic_count", "atypical_count", "atypical_fraction", "tissue_area_mm2",
    "count_per_mm2", "hotspot_count", "mitotic_score",
    "skipped_tiles", "candidates", "candidates_per_mm2", "windows", "mpp", "threshold", "model_id", "model_sha256", "seconds",
]
LIST_SUFFIXES = {".txt", ".lst", ".list"}
MAX_NAME_BYTES = 255 - len(".density.geojson") - len("..4194304.tmp")  # file systems allow 255 bytes a name
WINDOW_BAR_MIN = 20  # a slide of fewer windows takes seconds: no bar of its own


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their slides and images), globs, and text files listing one path a line."""
    suffixes = SLIDE_SUFFIXES | FIELD_SUFFIXES
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            base = p.parent
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read the list of slides {p.name}: {str(exc).splitlines()[0]}") from None
            listed = [Path(x.strip()) for x in lines if x.strip() and not x.strip().startswith("#")]
            listed = [q if q.is_absolute() else base / q for q in listed]
            missing = sum(not q.exists() for q in listed)
            if missing:  # one line for the list; each slide still gets its own error
                print(f"warning: {missing} of {len(listed)} paths in {p.name} do not exist (relative paths are read "
                      f"from the list's folder, {base.resolve()})", file=sys.stderr)
            out += listed
        elif any(c in item for c in "*?["):
            out += sorted(Path(g) for g in glob.glob(item, recursive=True) if Path(g).is_file())
        else:
            out.append(p)  # missing files are reported per slide, not here
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem


def versions() -> dict:
    import numpy
    import onnxruntime
    import tiffslide

    return {"mitoqp": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "tiffslide": tiffslide.__version__}


@dataclass
class RunConfig:
    out_dir: Path
    options: Options
    overwrite: bool = False
    reader: str = "auto"  # open_slide's backend: auto, tiffslide or openslide
    geometry: str = "circle"
    hotspot_mm2: float = 2.0  # the area a grade counts in (ten high-power fields)
    hotspot_shape: str = "circle"
    project: Path | None = None  # a QuPath project to fill (paquo)
    from_project: bool = False  # the slides are the project's images (inputs ignored), results go back into it
    roi_class: str | None = None  # with from_project: analyse inside the entry's annotations of this class only
    on_tile_error: str = "fail"  # or "skip": an undecodable tile reads as glass, counted and marked in the QC image
    executor: str = "local"  # or "ray": one Ray task per slide (mitoqp.executors)
    ray: RaySettings | None = None


def run_settings(model: Model, opts: Options) -> dict:
    """What changes a slide's result besides the model file: a re-run redoes slides done otherwise."""
    return {"backend": model.backend.name, "threshold": model.threshold if opts.threshold is None else opts.threshold,
            "candidates": model.candidates.to_dict(),
            "stain": opts.stain, "stain_normalise": opts.stain_normalise,
            "roi": opts.roi.wkt if opts.roi is not None else None}


def same_settings(done: dict | None, now: dict) -> bool:
    """A finished slide's settings are today's; candidate settings added since count at their defaults."""
    if not isinstance(done, dict) or not isinstance(done.get("candidates"), dict):
        return done == now
    try:
        return {**done, "candidates": CandidateParams(**done["candidates"]).to_dict()} == now
    except TypeError:  # a setting this version does not know
        return False


def hotspot_settings(cfg: "RunConfig") -> dict:
    """Settings of the run itself that change a slide's outputs (tile skipping only when asked for)."""
    skip = {"on_tile_error": "skip"} if cfg.on_tile_error == "skip" else {}
    return {"hotspot_mm2": cfg.hotspot_mm2, "hotspot_shape": cfg.hotspot_shape, **skip}


def process_slide(path: Path, name: str, model: Model, cfg: RunConfig, progress: bool = False) -> dict:
    """Analyse one slide and write its outputs; `progress` shows its windows with a time estimate."""
    out = cfg.out_dir
    bars: list[tqdm] = []

    def window_bar(total: int):
        if not progress or total < WINDOW_BAR_MIN:
            return None
        bars.append(tqdm(total=total, desc=f"  {name}", unit="window", leave=False, file=sys.stderr,
                         dynamic_ncols=True))
        return bars[-1].update

    record = {"slide": str(path), "name": name, "model_id": model.id, "model_sha256": model.sha256,
              "settings": {**run_settings(model, cfg.options), **hotspot_settings(cfg)}}
    t0 = time.perf_counter()
    (out / f"{name}.result.json").unlink(missing_ok=True)  # incomplete until the new record is written
    try:
        with open_slide(path, cfg.reader) as opened:
            slide = SkippingSlide(opened) if cfg.on_tile_error == "skip" else opened
            checkpoint("read")
            try:
                res = analyse_slide(slide, model, cfg.options, window_bar)
            finally:
                for bar in bars:
                    bar.close()
        checkpoint("model")
        skipped = slide.skipped_boxes() if isinstance(slide, SkippingSlide) else []
        if isinstance(slide, SkippingSlide):
            record["skipped_tiles"] = len(skipped)
        if skipped:
            record["skipped_tile_boxes"] = skipped[:1000]  # level-0 px; the first error says why
            record["skipped_tile_error"] = slide.first_error
        t = time.perf_counter()
        det = res.detected
        atypical = res.atypical[det] if res.atypical is not None else None
        write_detections(out / f"{name}.geojson",
                         detection_features(res.xy[det], res.scores[det], res.area_um2[det], res.mpp, cfg.geometry,
                                            atypical, model.atypical_threshold))
        checkpoint("write")
        spot = res.hotspot(cfg.hotspot_mm2, cfg.hotspot_shape)
        grade = mitotic_score(spot.count, spot.area_mm2, res.analysed_area_mm2)
        write_maps(res, spot, grade["score"], out, name, skipped)
        res.timings["write"] = time.perf_counter() - t
        area = res.analysed_area_mm2
        n_atypical = res.atypical_count(model.atypical_threshold)
        record.update(
            status="ok", error="", mitotic_count=res.count, atypical_count=n_atypical,
            atypical_fraction=round(n_atypical / res.count, 4) if n_atypical is not None and res.count else None,
            tissue_area_mm2=round(area, 4),
            count_per_mm2=round(res.count / area, 4) if area > 0 else None, hotspot_count=spot.count,
            mitotic_score=grade["score"], **activity_record(res, spot, grade),
            candidates=res.candidates, candidates_per_mm2=round(res.candidates / area, 1) if area > 0 else None,
            windows=res.windows, mpp=res.mpp, threshold=res.threshold,
            timings={k: round(v, 4) for k, v in res.timings.items()},
        )
    except (SlideError, ValueError, OSError, MemoryError) as exc:
        record.update(status="error", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    if record["status"] == "ok":
        try:
            write_json_atomic(out / f"{name}.result.json", record)
        except OSError as exc:  # a full disk at the last file: this slide fails, the batch goes on
            record.update(status="error", error=str(exc).splitlines()[0])
    return record


def write_maps(res, spot, score: int | None, out: Path, name: str, skipped: list | None = None) -> None:
    """The slide's pictures and maps: QC thumbnail, density tiles, tissue and hotspot annotations, overview."""
    xy = res.xy[res.detected]
    if res.tissue is not None:
        save_qc(res.tissue, out / f"{name}.tissue.png", xy, skipped)
        write_detections(out / f"{name}.density.geojson", density_features(res.tissue, xy))
        geom = tissue_geometry(res.tissue)
        write_detections(out / f"{name}.tissue.geojson", [tissue_feature(geom, res.tissue.area_mm2)] if geom else [])
        save_overview(res.tissue, xy, spot, out / f"{name}.overview.png")
    write_detections(out / f"{name}.hotspot.geojson", [hotspot_feature(spot, score)] if spot.count else [])


def activity_record(res, spot, grade: dict) -> dict:
    """The hotspot (tissue share of its window, mitotic score) and UTS's activity index, for the slide's record."""
    hotspot = {**spot.to_dict(), "tissue_fraction": None, "per_tissue_mm2": None, "mitotic_score": grade}
    if res.tissue is None:
        return {"hotspot": hotspot, "activity_index": None}
    if spot.count:
        share = tissue_fraction(res.tissue, spot.centre, spot.size_px, spot.shape)
        hotspot.update(tissue_fraction=round(share, 4),
                       per_tissue_mm2=round(spot.count / (share * spot.area_mm2), 3) if share else None)
    field_mm2 = spot.area_mm2 / 10  # one high-power field
    per_field, fields = activity_index(res.tissue, res.xy[res.detected], field_mm2)
    return {"hotspot": hotspot,
            "activity_index": {"figures_per_field": round(per_field, 4), "fields": fields, "field_mm2": field_mm2}}


def is_complete(out: Path, name: str) -> dict | None:
    """The slide's record if all its outputs are there (the record is written last)."""
    rec_path = out / f"{name}.result.json"
    if not rec_path.exists() or not (out / f"{name}.geojson").exists():
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except ValueError:
        return None
    return rec if rec.get("status") == "ok" else None


def run_batch(inputs: list[str], model: Model, cfg: RunConfig, progress: bool = True) -> list[dict]:
    """Every slide of `inputs` (or of the project) into `cfg.out_dir`, which this run holds alone."""
    with FolderLock(cfg.out_dir):
        remove_stale_temporaries(cfg.out_dir)  # left by a run that was killed; we hold the folder now
        return _run_batch(inputs, model, cfg, progress)


def _run_batch(inputs: list[str], model: Model, cfg: RunConfig, progress: bool) -> list[dict]:
    project, rois = None, {}
    if cfg.project is not None:
        from mitoqp.qupath_project import ProjectWriter

        project = ProjectWriter(cfg.project)  # a missing paquo or QuPath stops the run here, before any slide
    if cfg.from_project:
        if project is None:
            raise ValueError("--from-project needs the project to run on")
        paths, rois = project.images_and_rois(cfg.roi_class)
    else:
        paths = expand_inputs(inputs)
    records: list[dict | None] = [None] * len(paths)
    jobs: list[tuple[int, Job]] = []
    names: set[str] = set()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    bar = tqdm(total=len(paths), desc="slides", unit="slide", disable=not progress, file=sys.stderr)

    def finish(i: int, path: Path, name: str, rec: dict) -> None:
        """A slide's record, as it comes: into the project, onto the console, into the batch's list."""
        if project is not None and rec["status"] in ("ok", "skipped"):
            try:
                rec["project"] = project.write(path, cfg.out_dir, name, rec)
            except (ValueError, OSError) as exc:
                rec.update(status="error", error=f"QuPath project: {str(exc).splitlines()[0]}")
        if rec["status"] == "error":
            tqdm.write(f"error: {rec['error']}", file=sys.stderr)
        elif rec.get("skipped_tiles"):
            tqdm.write(f"warning: {name}: {rec['skipped_tiles']} unreadable tiles skipped as glass "
                       f"({rec['skipped_tile_error']})", file=sys.stderr)
        records[i] = rec
        bar.update(1)

    for i, path in enumerate(paths):
        name = output_name(path)
        if name in names:
            finish(i, path, name, {"slide": str(path), "name": name, "status": "error",
                                   "error": f"another input already writes outputs named {name!r}"})
            continue
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            finish(i, path, name, {"slide": str(path), "name": name[:40] + "...", "status": "error",
                                   "error": f"{path.name[:40]}...: the name is too long for its output files "
                                            f"(at most {MAX_NAME_BYTES} bytes before the extension); rename it"})
            continue
        names.add(name)
        if cfg.roi_class is not None:
            if rois.get(path) is None:
                finish(i, path, name, {"slide": str(path), "name": name, "status": "error",
                                       "error": f"{name}: no annotation of class {cfg.roi_class!r} in its project entry"})
                continue
            slide_cfg = replace(cfg, options=replace(cfg.options, roi=rois[path]))
        else:
            slide_cfg = cfg
        done = None if cfg.overwrite else is_complete(cfg.out_dir, name)
        if (done is not None and done.get("model_sha256") == model.sha256
                and same_settings(done.get("settings"), {**run_settings(model, slide_cfg.options), **hotspot_settings(cfg)})):
            done["status"] = "skipped"
            finish(i, path, name, done)  # finished before: never run twice
        else:
            jobs.append((i, Job(path, name, slide_cfg)))

    index = {id(job): i for i, job in jobs}

    def job_done(job: Job, rec: dict) -> None:
        finish(index[id(job)], job.path, job.name, rec)

    try:
        if cfg.executor == "ray":
            run_ray([job for _, job in jobs], model, cfg.ray or RaySettings(), job_done)
            remove_stale_temporaries(cfg.out_dir)  # of workers that died and were retried
        else:
            run_local([job for _, job in jobs], model, job_done, progress)
    finally:
        bar.close()
    done_records = [r for r in records if r is not None]
    write_summaries(cfg.out_dir, done_records, model, started)
    write_report(cfg.out_dir, done_records, model.id, cfg.hotspot_mm2, cfg.hotspot_shape, cfg.project)
    return done_records


def write_summaries(out: Path, records: list[dict], model: Model, started: str) -> None:
    checkpoint("summary")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS + ["timings"], extrasaction="ignore")
    writer.writeheader()
    for r in records:
        row = {k: r.get(k, "") for k in SUMMARY_FIELDS}
        row["timings"] = json.dumps(r.get("timings", {}))
        writer.writerow(row)
    write_text_atomic(out / "summary.csv", buf.getvalue())
    write_json_atomic(out / "summary.json", {
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": {"id": model.id, "sha256": model.sha256, "directory": str(model.directory), "threshold": model.threshold,
                  "atypical_threshold": model.atypical_threshold if model.has_subtype else None,
                  "backend": model.backend.name},
        "versions": versions(), "slides": records,
    })
