"""The `mitoqp` command: run, bench, models, info, train, evaluate, export, ablation, stain-survey."""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import os
import signal
import sys
import threading
from pathlib import Path

from mitoqp import __version__
from mitoqp.hotspot import HPF_AREA_PRESETS_MM2, SHAPES, parse_area

SHARED = Path("../shared/data")


def cmd_run(args: argparse.Namespace) -> int:
    from mitoqp.batch import RunConfig, run_batch
    from mitoqp.pipeline import Options
    from mitoqp.roi import read_roi
    from mitoqp.runtime.model import load_model

    try:
        model = load_model(args.model, backend=args.backend, threads=args.threads, tta=args.tta, precision=args.precision,
                           prefilter=args.prefilter, threshold=args.threshold)
        roi = read_roi(args.roi) if args.roi else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"model {model.id}, backend {model.backend.name}" + (" (chosen by auto)" if args.backend == "auto" else ""))
    opts = Options(mpp=args.mpp, threshold=args.threshold, batch_size=args.batch_size, workers=args.workers,
                   stain=args.stain, roi=roi, window_px=args.window, stain_normalise=args.stain_normalise)
    try:
        hotspot_mm2 = parse_area(args.hpf_area)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bool(args.slides) == bool(args.from_project) or (args.roi_class and not args.from_project):
        print("error: give SLIDES or --from-project P.qpproj (one of them; --roi-class goes with --from-project)",
              file=sys.stderr)
        return 2
    ray = None
    if args.executor == "ray":
        from mitoqp.executors import RaySettings

        gpu = any(k in model.backend.name for k in ("cuda", "tensorrt"))
        gpus = args.ray_gpus_per_slide if args.ray_gpus_per_slide is not None else (1.0 if gpu else 0.0)
        ray = RaySettings(args.address, args.ray_cpus_per_slide, gpus, args.ray_memory_gb,
                          model_args={"directory": str(model.directory), "backend": args.backend,
                                      "threads": args.threads or max(1, round(args.ray_cpus_per_slide)),
                                      "tta": args.tta, "precision": args.precision, "prefilter": args.prefilter,
                                      "threshold": args.threshold})
    elif args.address:
        print("error: --address goes with --executor ray", file=sys.stderr)
        return 2
    try:
        records = run_batch(args.slides, model, RunConfig(args.out, opts, args.overwrite, args.reader, args.geometry,
                                                          hotspot_mm2, args.hotspot_shape,
                                                          args.from_project or args.project, bool(args.from_project),
                                                          args.roi_class, args.on_tile_error, args.executor, ray),
                            progress=not args.quiet)
    except ValueError as exc:  # the project cannot be opened, or another run holds -o: nothing was run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the summary could not be written (a full disk): earlier files are intact
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the slide in progress left no file; finished ones are complete
        print("\ninterrupted: finished slides are kept; the same command goes on from there", file=sys.stderr)
        return 130
    if not records:
        print("error: no slides found in the inputs", file=sys.stderr)
        return 2
    for r in records:
        if r["status"] in ("ok", "skipped") and not r["tissue_area_mm2"]:
            print(f"{r['name']}: {r['status']}, no tissue found")
        elif r["status"] in ("ok", "skipped"):
            atypical = f", {r['atypical_count']} atypical" if r.get("atypical_count") is not None else ""
            print(f"{r['name']}: {r['status']}, {r['mitotic_count']} mitotic figures{atypical} in {r['tissue_area_mm2']} mm2 "
                  f"({r['count_per_mm2']}/mm2, hotspot {r['hotspot_count']} in {hotspot_mm2:g} mm2)")
        else:
            print(f"{r['name']}: error: {r['error']}")
    failed = sum(r["status"] == "error" for r in records)
    print(f"{len(records) - failed} of {len(records)} slides done, results in {args.out}")
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mitoqp.bench import bench_main, format_table
    from mitoqp.pipeline import Options
    from mitoqp.runtime.model import load_model

    def job() -> None:
        model = load_model(args.model, backend=args.backend, threads=args.threads, precision=args.precision,
                           prefilter=args.prefilter)
        opts = Options(mpp=args.mpp, batch_size=args.batch_size, workers=args.workers, window_px=args.window,
                       overlap=not args.serial)
        report = bench_main(args.slides, model, opts, args.repeat, args.reader, args.precision, args.json)
        print(format_table(report), end="")
        if any(r["status"] != "ok" for r in report["slides"]):
            raise ValueError("some slides failed (see the table)")

    return one_line_errors(job)


def cmd_models(args: argparse.Namespace) -> int:
    from mitoqp.runtime.registry import list_models, search_roots

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("name | id | kind | input | outputs | M MACs | precisions | val. F1 | test F1 | AtNorM-Br F1 | where")
    for r in rows:
        if "error" in r:
            print(f"{r['name']} | error: {r['error']}")
            continue
        macs = f"{r['macs_per_patch'] / 1e6:.1f}" if r.get("macs_per_patch") else "-"
        print(f"{r['name']} | {r['id']} | {r['kind']} | {r['input_size']} px @ {r['mpp']} um | {'+'.join(r['outputs'])} | "
              f"{macs} | {','.join(r['precisions'])} | {r['validation_hpf_f1'] or '-'} | {r['hpf_f1'].get('test', '-')} | "
              f"{r['hpf_f1'].get('atnorm-br', '-')} | {r['where']}")
    print("searched: " + ", ".join(f"{w} {p}" for w, p in search_roots()))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mitoqp.slide import SlideError, open_slide
    from mitoqp.tissue import detect_tissue

    try:
        with open_slide(args.slide, args.reader) as slide:
            i = slide.info
            mpp = args.mpp or i.mpp
            out = {
                "path": i.path, "format": i.format, "vendor": i.vendor, "levels": len(i.level_dimensions),
                "level_dimensions": [list(d) for d in i.level_dimensions],
                "level_downsamples": [round(d, 4) for d in i.level_downsamples],
                "tile_size": [list(t) for t in i.tile_sizes], "mpp": i.mpp,
            }
            if mpp:
                tm = detect_tissue(slide, mpp)
                out["size_mm"] = [round(d * mpp / 1000, 3) for d in i.dimensions]
                out["tissue_fraction"] = round(float(tm.mask.mean()), 4)
                out["tissue_area_mm2"] = round(tm.area_mm2, 3)
            else:
                out["tissue_fraction"] = None
                out["note"] = "no microns-per-pixel in the metadata: give --mpp for sizes and tissue"
    except SlideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")
    return 0


def one_line_errors(job) -> int:
    """Run `job()`; a ValueError (bad input) becomes one line on stderr and exit status 1."""
    try:
        job()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mitoqp.training.train import train_from_config

    return one_line_errors(lambda: train_from_config(args.config, args.out, args.set))


def candidate_settings(pairs: list[str]) -> dict[str, float]:
    """`KEY=VALUE` pairs of candidate settings, each a number >= 0."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not key or not number >= 0 or number == float("inf"):
            raise ValueError(f"--candidates {pair!r}: give KEY=NUMBER with a number >= 0, e.g. centre_power=2")
        out[key.strip()] = number
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from mitoqp.export.onnx_export import main_export

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]

    def export() -> None:
        from mitoqp.runtime.model import load_model

        if (args.checkpoints or args.subtype or args.prefilter or args.id or [p for p in precisions if p != "fp32"]
                or args.rethreshold or args.candidates or not (args.engine or args.adapt_reference)):
            main_export(args.checkpoints, args.out, args.amibr, args.midog_json, args.subtype or None, precisions, args.id,
                        args.prefilter, args.rethreshold, candidate_settings(args.candidates))
        if args.adapt_reference:
            add_adapt_reference(args.out, args.amibr, args.midog_json)
        if args.engine:  # TensorRT engines now, not on a slide's first batch
            for p in precisions or ["fp32"]:
                model = load_model(args.out, backend="tensorrt", precision=p)
                print(f"TensorRT engine ready: {model.backend.name}")

    return one_line_errors(export)


def add_adapt_reference(folder: Path, amibr: Path, midog_json: Path) -> None:
    """The training side of `mitoqp adapt`, measured on the model's own training fields."""
    from mitoqp.datasets import read_amibr
    from mitoqp.export.adapt import add_reference

    if not (folder / "model.json").exists():
        raise ValueError(f"{folder} holds no exported model to add an adaptation reference to")
    if not Path(amibr).exists():
        raise ValueError(f"--adapt-reference measures the AMi-Br training fields: {amibr} is missing")
    held_out = json.loads((folder / "model.json").read_text()).get("held_out_sources", [])
    fields = [f for f in read_amibr(amibr, midog_json, {"train"}) if f.source not in held_out]
    entry = add_reference(folder, fields, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"adapt_reference": {k: entry[k] for k in ("fields", "patches")}}))


def cmd_adapt(args: argparse.Namespace) -> int:
    from mitoqp.batch import expand_inputs
    from mitoqp.slide import FIELD_SUFFIXES
    from mitoqp.runtime.registry import resolve_model
    from mitoqp.runtime.model import default_model_dir

    def job() -> None:
        from mitoqp.export.adapt import adapt_folder

        source = resolve_model(args.model) or default_model_dir()
        if not (source / "model.json").exists():
            raise ValueError(f"{source} is not a mitoqp model folder")
        inputs = [(p, args.mpp) for p in expand_inputs(args.slides)]
        slides = sum(p.suffix.lower() not in FIELD_SUFFIXES for p, _ in inputs)
        if slides:  # measured on fields; on two whole slides it moved in-domain scores far (MODEL_CARD.md)
            print(f"warning: {slides} of the inputs are whole slides: adaptation was validated on fields of tumour "
                  "only (whole slides mix in other tissue); prefer tumour fields", file=sys.stderr)
        config = adapt_folder(source, inputs, args.out, args.max_patches, args.id,
                              log=lambda m: print(m, file=sys.stderr), early_blocks=args.early_blocks)
        a = config["adapted"]
        print(f"{config['id']}: {a['from']} adapted to {a['inputs']} inputs ({a['patches']} candidate patches"
              + (f", {len(a['skipped'])} skipped" if a["skipped"] else "") + f"), written to {args.out}")

    return one_line_errors(job)


def cmd_stain_survey(args: argparse.Namespace) -> int:
    from mitoqp.io_utils import write_json_atomic
    from mitoqp.training.stain_survey import survey

    def job():
        result = survey(args.amibr, args.midog_json, args.atnorm,
                        hold_out=[k for k in (args.hold_out or "").split(",") if k])
        write_json_atomic(args.out, result)
        for name, s in {**result["sources"], "all training slides": result["training"]}.items():
            print(f"{name}: {s['slides']} slides, H {[round(v, 3) for v in s['h_mean']]} (max {s['h_angle_deg_max']:.1f} deg off), "
                  f"E {[round(v, 3) for v in s['e_mean']]} (max {s['e_angle_deg_max']:.1f} deg off)")

    return one_line_errors(job)


def cmd_ablation(args: argparse.Namespace) -> int:
    from mitoqp.ablation import ablation_table
    from mitoqp.io_utils import write_text_atomic

    def job():
        table = ablation_table(args.rows)
        if args.out:
            write_text_atomic(args.out, table)
        print(table, end="")

    return one_line_errors(job)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mitoqp.evaluate import evaluate_main
    from mitoqp.methods import compare_models

    if args.models:
        return one_line_errors(lambda: compare_models(args, evaluate_main))
    return one_line_errors(lambda: evaluate_main(args))


def add_backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime", "torch"], default="auto",
                   help="inference engine (auto: TensorRT with a GPU, then ONNX Runtime CUDA, then PyTorch CUDA, "
                        "then ONNX Runtime CPU, then PyTorch CPU)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="model precision (fp16/int8: the variants `mitoqp export --precision` wrote and checked)")
    p.add_argument("--no-prefilter", dest="prefilter", action="store_false",
                   help="score every candidate with the full model, even where the model folder has a prefilter")


def add_robustness_options(p: argparse.ArgumentParser) -> None:
    add_backend_options(p)
    p.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=1,
                   help="test-time augmentation: average the model over this many dihedral views (1: off)")
    p.add_argument("--stain-normalise", action="store_true",
                   help="Macenko-normalise each slide's patches to the model's training stain reference")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mitoqp", description="Mitotic figure detection on H&E slides, results for QuPath.")
    p.add_argument("--version", action="version", version=f"mitoqp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="detect mitotic figures on slides", description=(
        "Detect mitotic figures on slides or fields. Writes <name>.geojson (QuPath detections), "
        "<name>.tissue.png (QC) and <name>.result.json per slide, and summary.csv/summary.json per run."))
    r.add_argument("slides", nargs="*", help="slide files, folders, globs, or a .txt file listing paths")
    r.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    r.add_argument("--model", default=None, help="model name (mitoqp models) or folder (default: the bundled model)")
    r.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    r.add_argument("--batch-size", type=int, default=256, help="patches per model call")
    r.add_argument("--workers", type=int, default=2, help="tile decoding threads")
    r.add_argument("--threads", type=int, default=0, help="model inference threads (0: all cores)")
    r.add_argument("--mpp", type=float, default=None, help="microns per pixel, overriding the slide's metadata")
    r.add_argument("--roi", type=Path, default=None, help="QuPath GeoJSON of polygons (level-0 px) to restrict to")
    r.add_argument("--stain", choices=["ruifrok", "macenko"], default="ruifrok", help="stain vectors for the candidates")
    add_robustness_options(r)
    r.add_argument("--reader", choices=["auto", "tiffslide", "openslide"], default="auto",
                   help="slide reader (auto: tiffslide, OpenSlide for MIRAX/VMS, plain reader for PNG/JPEG)")
    r.add_argument("--geometry", choices=["circle", "point"], default="circle", help="GeoJSON shape per detection")
    r.add_argument("--window", type=int, default=2048, help="window size in level pixels (memory vs overhead)")
    r.add_argument("--overwrite", action="store_true", help="redo slides whose outputs are complete")
    r.add_argument("--on-tile-error", choices=["fail", "skip"], default="fail",
                   help="an undecodable tile fails its slide (default), or is skipped as glass, counted and marked")
    r.add_argument("--hpf-area", default="2mm2", metavar="MM2_OR_PRESET",
                   help="area of the hotspot (the ten high-power fields a grade counts in): mm2, or a preset: "
                        + ", ".join(HPF_AREA_PRESETS_MM2) + " (fnNN: ten fields of field number NN at 40x)")
    r.add_argument("--hotspot-shape", choices=SHAPES, default="circle", help="shape of the hotspot window")
    r.add_argument("--project", type=Path, default=None, metavar="P.qpproj",
                   help="also fill this QuPath project (created if missing): one entry per slide with its figures, "
                        "hotspot and density tiles; a re-run replaces mitoqp's objects and keeps the rest (paquo)")
    r.add_argument("--from-project", type=Path, default=None, metavar="P.qpproj",
                   help="run on every image of this QuPath project (no SLIDES) and write the results back into it")
    r.add_argument("--roi-class", default=None, metavar="CLASS",
                   help="with --from-project: analyse only inside each entry's annotations of this class (e.g. Tumor); "
                        "an entry without one is reported as an error")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="run slides here one after another, or as Ray tasks (pip install 'mitoqp[ray]')")
    r.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="with --executor ray: the cluster to join (default: start a local Ray)")
    r.add_argument("--ray-cpus-per-slide", type=float, default=1.0, help="Ray: CPUs reserved per slide task")
    r.add_argument("--ray-gpus-per-slide", type=float, default=None,
                   help="Ray: GPUs per slide task (default: 1 if the backend uses a GPU, else 0)")
    r.add_argument("--ray-memory-gb", type=float, default=2.0, help="Ray: memory reserved per slide task (GB)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("models", help="list the bundled and installed models", description=(
        "Bundled models (inside the package) and installed ones (folders under MITOQP_MODEL_PATH, else "
        "~/.local/share/mitoqp/models): kind, input, outputs, cost, precisions, HPF-equivalent F1. "
        "--model takes a listed name or a folder."))
    m.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(func=cmd_models)

    b = sub.add_parser("bench", help="latency per slide: wall time, stages, throughput, memory", description=(
        "Run each slide end to end --repeat times after an untimed warm-up (kernels compiled, the backend's first "
        "batches run); print wall time (median, min), seconds and share per stage, MP/s, patches/s and peak memory."))
    b.add_argument("slides", nargs="+", help="slide files, folders, globs, or a .txt file listing paths")
    b.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    b.add_argument("--repeat", type=int, default=3, help="timed runs per slide")
    b.add_argument("--model", default=None, help="model name (mitoqp models) or folder (default: the bundled model)")
    add_backend_options(b)
    b.add_argument("--batch-size", type=int, default=256, help="patches per model call")
    b.add_argument("--workers", type=int, default=2, help="tile decoding threads")
    b.add_argument("--threads", type=int, default=0, help="model inference threads (0: all cores)")
    b.add_argument("--mpp", type=float, default=None, help="microns per pixel, overriding the slide's metadata")
    b.add_argument("--window", type=int, default=2048, help="window size in level pixels")
    b.add_argument("--reader", choices=["auto", "tiffslide", "openslide"], default="auto")
    b.add_argument("--serial", action="store_true", help="no overlap of front end and model (for comparison)")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="describe a slide", description="Format, levels, size, microns per pixel, vendor, tile size, tissue fraction.")
    i.add_argument("slide", type=Path)
    i.add_argument("--mpp", type=float, default=None, help="microns per pixel when the metadata lacks it")
    i.add_argument("--reader", choices=["auto", "tiffslide", "openslide"], default="auto")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train a model from a recipe (needs the train extra)",
                       description="Train the recipe in CONFIG (TOML); writes config, log, metrics.jsonl and best.pt into --out.")
    t.add_argument("config", type=Path)
    t.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe setting, e.g. --set train.seed=1 (repeatable)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a checkpoint to an ONNX model folder",
                       description="ONNX (dynamic batch, opset 17) + model.json, checked against PyTorch on real patches. "
                                   "Several checkpoints make an ensemble (outputs averaged; thresholds chosen on validation).")
    e.add_argument("checkpoints", type=Path, nargs="*", metavar="CHECKPOINT",
                   help="one checkpoint, several (an ensemble), or none with --subtype/--prefilter (added to the folder in -o)")
    e.add_argument("--subtype", type=Path, action="append", default=[], metavar="CHECKPOINT_OR_DIR",
                   help="a second model (with a subtype head) whose atypical output joins the detector's folder; "
                        "or a model folder whose subtype model is carried over (checked again); repeated, the "
                        "models' atypical outputs are averaged (give --rethreshold)")
    e.add_argument("--prefilter", type=Path, default=None, metavar="CHECKPOINT",
                   help="a cheap first stage (configs/prefilter.toml) for the detector's folder: the detector then sees "
                        "only the candidates it passes; its threshold is chosen on the validation split")
    e.add_argument("-o", "--out", type=Path, required=True, help="model folder")
    e.add_argument("--amibr", type=Path, default=SHARED / "ami-br", help="AMi-Br folder (patches for the parity check)")
    e.add_argument("--midog-json", type=Path, default=SHARED / "annotations/midog2021.json")
    e.add_argument("--precision", default="", metavar="fp32,fp16,int8",
                   help="also write these precisions (FP16 graph; INT8 calibrated on validation patches), each kept "
                        "only if no decision differs from FP32")
    e.add_argument("--id", default=None, help="the model's id in model.json (default: the folder's name)")
    e.add_argument("--candidates", action="append", default=[], metavar="KEY=VALUE",
                   help="change a candidate setting in the folder's model.json (repeatable), e.g. centre_power=2; "
                        "give --rethreshold with it, so the threshold is chosen on the candidates the model will see")
    e.add_argument("--rethreshold", action="store_true",
                   help="choose the detection threshold again on the validation fields, through the runtime, by the "
                        "current rule (for a model exported before the rule changed, or with other candidate settings), "
                        "and the atypical threshold where the folder has a subtype output; give --precision again to "
                        "re-check the precisions at it")
    e.add_argument("--adapt-reference", action="store_true",
                   help="measure the batch-norm statistics of the model on its training fields' candidates and store "
                        "them in the folder (what `mitoqp adapt` compares a lab's slides with)")
    e.add_argument("--engine", action="store_true",
                   help="build the TensorRT engines of the folder's precisions ahead of time (needs TensorRT and a GPU)")
    e.set_defaults(func=cmd_export)

    ad = sub.add_parser("adapt", help="adapt a model to a lab's scanner with unlabelled slides (a new model folder)",
                        description="Measure the model's batch-norm statistics on the candidates of your own slides "
                                    "(no labels), move them by their difference from the training fields, and write "
                                    "the result as a new model folder for `mitoqp run --model`. Needs PyTorch.")
    ad.add_argument("slides", nargs="+", help="slide files, folders, globs, or a .txt file listing paths")
    ad.add_argument("-o", "--out", type=Path, required=True, help="the new model folder (must not exist)")
    ad.add_argument("--model", default=None, help="model name or folder to adapt (default: the bundled model)")
    ad.add_argument("--mpp", type=float, default=None, help="microns per pixel, overriding the slides' metadata")
    ad.add_argument("--max-patches", type=int, default=8192,
                    help="candidate patches measured at most, shared out over the inputs")
    ad.add_argument("--id", default=None, help="the adapted model's id (default: the model's id + '-adapted')")
    ad.add_argument("--early-blocks", type=int, default=None, metavar="N",
                    help="move only the statistics of the stem and the first N residual blocks (default: all)")
    ad.set_defaults(func=cmd_adapt)

    s = sub.add_parser("stain-survey", help="measure the stain vectors of the training slides (for stain augmentation)",
                       description="Macenko H and E vectors and densities per training slide, summarised per source; "
                                   "AtNorM-Br is measured for reference only.")
    s.add_argument("-o", "--out", type=Path, required=True, help="JSON file (configs/stain_survey.json for the recipes)")
    s.add_argument("--amibr", type=Path, default=SHARED / "ami-br")
    s.add_argument("--midog-json", type=Path, default=SHARED / "annotations/midog2021.json")
    s.add_argument("--atnorm", type=Path, default=SHARED / "atnorm-br", help="measured and reported, never used")
    s.add_argument("--hold-out", metavar="SOURCES", help="comma-separated sources to leave out (as data.hold_out: "
                                                          "midog21-xr, midog21-s360, midog21-cs2, tupac16)")
    s.set_defaults(func=cmd_stain_survey)

    a = sub.add_parser("ablation", help="one table from several evaluations (a row per recipe, seeds pooled)",
                       description="Rows LABEL=EVAL_DIR[,EVAL_DIR...]: each folder holds one seed's evaluation.json. "
                                   "Cells are the mean over seeds and the min-max spread.")
    a.add_argument("rows", nargs="+", metavar="LABEL=EVAL_DIRS")
    a.add_argument("-o", "--out", type=Path, default=None, help="markdown file to write")
    a.set_defaults(func=cmd_ablation)

    v = sub.add_parser("evaluate", help="evaluate a model on held-out fields and slides",
                       description="Runs the full runtime path on each field; FROC, HPF-equivalent F1, AUC, bootstrap intervals.")
    v.add_argument("--model", default=None, help="model name (mitoqp models) or folder (default: the bundled model)")
    v.add_argument("--models", default=None, metavar="A,B,...",
                   help="compare several models (names or folders): each evaluated into OUT/<name>, the table in OUT/methods.md")
    v.add_argument("--table", type=Path, default=None, help="with --models: also write the table here (benchmarks/METHODS.md)")
    v.add_argument("--bench-slide", type=Path, default=None, help="with --models: also time each model on this slide")
    v.add_argument("--fresh", action="store_true",
                   help="with --models: evaluate every model again, even where OUT/<name> holds an evaluation of it")
    v.add_argument("--splits", default="validation,test,atnorm-br",
                   help="comma-separated: validation, test, atnorm-br, holdout:SOURCE (the train and validation "
                        "fields of a source the model was trained without: data.hold_out; its validation then "
                        "leaves that source out, as its training did)")
    v.add_argument("--amibr", type=Path, default=SHARED / "ami-br")
    v.add_argument("--atnorm", type=Path, default=SHARED / "atnorm-br")
    v.add_argument("--midog-json", type=Path, default=SHARED / "annotations/midog2021.json")
    v.add_argument("--slides", nargs="*", type=Path, default=None, help="slides for detections per mm2 of tissue")
    v.add_argument("--threshold", type=float, default=None, help="operating threshold (default: the model's)")
    v.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    v.add_argument("--limit", type=int, default=None, help="fields per split (quick checks)")
    add_robustness_options(v)
    v.add_argument("-o", "--out", type=Path, required=True, help="folder for evaluation.json and evaluation.md")
    v.set_defaults(func=cmd_evaluate)
    return p


def dump_threads_on_usr1() -> None:
    """`kill -USR1 PID` prints where every thread is: what a hung run needs first. Skipped where stderr has no file
    descriptor (a captured stream) or the platform has no SIGUSR1."""
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dump_threads_on_usr1()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input (that has its own message): one line unless asked
        if os.environ.get("MITOQP_DEBUG"):
            raise
        first = str(exc).strip().splitlines()
        print(f"error: internal error, please report it (MITOQP_DEBUG=1 shows the traceback): "
              f"{type(exc).__name__}: {first[0] if first else ''}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
