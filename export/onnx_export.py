"""`mitoqp export CHECKPOINT -o MODEL_DIR`: a checkpoint to ONNX plus the runtime's model config.

The exported graph is checked against PyTorch on real patches: maximum
absolute difference of the probabilities, and identical decisions at the
stored threshold. The config carries everything the runtime needs and the
sha256 of the ONNX file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mitoqp.candidates import CandidateParams
from mitoqp.datasets.amibr import SOURCES
from mitoqp.io_utils import atomic_path, write_json_atomic
from mitoqp.runtime.nchw import to_nchw
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend
from mitoqp.runtime.model import sha256_file
from mitoqp.training.dense_models import ARCHITECTURES, build_dense
from mitoqp.training.model import build_model

OPSET = 17
PARITY_BATCH_PIXELS = 4e6  # pixels per forward pass of the parity check (large dense tiles come a few at a time)
PARITY_PIXELS = 32e6  # at most this many pixels of patches in the check (a dense model's tiles are 1024 px)
# the recipe settings a model card reader wants to see in model.json
RECIPE_KEYS = ("seed", "epochs", "select", "child_classes", "dgsb", "center_weight", "child_weight", "stain_aug",
               "stain_sigma", "stain_bias", "ema_decay", "teacher", "teacher_views", "distill_weight", "distill_temperature",
               "domain_weight", "amp_mix_p", "amp_mix_strength", "init")
# what model.json says the graph does to the pixels first, by the recipe's model.input_norm
NORMALISATIONS = {
    "global": {"mean": 0.5, "std": 0.25, "scale": "x / 255"},
    "patch": {"per_patch": True, "scale": "per channel: (x - patch mean) / sqrt(patch variance + 4)"},
    "od": {"per_patch": True, "optical_density": True,
           "scale": "per channel: od = -ln((x + 1) / 256), then (od - patch mean) / sqrt(patch variance + 0.0001)"},
}


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt.get("kind") == "dense":
            model = build_dense(ckpt.get("method"), ckpt["config"].get("model", {}))
        else:
            model = build_model(ckpt["config"].get("model", {}), int(ckpt.get("child_classes", 0)))
        model.load_state_dict(ckpt["state_dict"])
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from None
    return model.eval(), ckpt


def export_onnx(model: torch.nn.Module, patch: int, path: Path) -> None:
    dummy = torch.zeros(2, 3, patch, patch)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model, (dummy,), str(tmp), input_names=["patches"], output_names=["probability"],
            dynamic_axes={"patches": {0: "batch"}, "probability": {0: "batch"}}, opset_version=OPSET,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))


def parity(model: torch.nn.Module, onnx_path: Path, patches: np.ndarray, threshold: float, column: int = 0) -> dict:
    """Max |p_torch - p_onnx| over every output, and the decisions of output `column` that differ at `threshold`."""
    step = max(1, int(PARITY_BATCH_PIXELS // (patches.shape[1] * patches.shape[2]))) if len(patches) else 1
    with torch.no_grad():
        p_torch = np.concatenate([model(torch.from_numpy(to_nchw(patches[i:i + step]))).numpy()
                                  for i in range(0, max(len(patches), 1), step)]) if len(patches) else np.zeros(0)
    ort = OnnxRuntimeBackend(onnx_path)
    p_onnx = (np.concatenate([ort.predict(patches[i:i + step]) for i in range(0, len(patches), step)])
              .reshape(p_torch.shape) if len(patches) else p_torch)
    # a patch model decides on one column (mitosis: 0); a dense model on every pixel of its map
    decide = (lambda p: p.reshape(len(p), -1)[:, column]) if p_torch.ndim <= 2 else (lambda p: p.ravel())
    return {
        "patches": int(len(patches)),
        "max_abs_diff": float(np.max(np.abs(p_torch - p_onnx))) if len(patches) else 0.0,
        "decisions_differ": int(((decide(p_torch) >= threshold) != (decide(p_onnx) >= threshold)).sum()),
    }


def save_torch_weights(model: torch.nn.Module, ckpt: dict, onnx_path: Path) -> Path:
    """`model.pt` beside `model.onnx`: what the torch backend runs (weights and the [model] table, no code)."""
    path = onnx_path.with_suffix(".pt")
    state = {k: v for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"kind": ckpt.get("kind", "patch"), "method": ckpt.get("method"), "model": ckpt["config"].get("model", {}),
                    "child_classes": int(ckpt.get("child_classes", 0)), "state_dict": state}, tmp)
    return path


def dense_output(ckpt: dict, model: torch.nn.Module) -> str:
    """What a dense model's output holds, for model.json."""
    names = ckpt.get("outputs", ["mitosis"])
    s = model.stride
    return f"(N, {len(names)}, H/{s}, W/{s}): probability maps of " + ", ".join(
        {"mitosis": "mitotic figures", "nuclei": "nuclei"}.get(n, n) for n in names)


def export_model(checkpoint: Path, out_dir: Path, patches: np.ndarray, extra: dict | None = None,
                 onnx_name: str = "model.onnx") -> dict:
    """Export and check; `patches` (N, P, P, 3) uint8 are real patches for the parity check."""
    model, ckpt = load_checkpoint(checkpoint)
    patch = int(ckpt["patch"])
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / onnx_name
    export_onnx(model, patch, onnx_path)
    check = parity(model, onnx_path, patches, float(ckpt["threshold"]))
    if check["decisions_differ"] or check["max_abs_diff"] > 1e-4:
        raise ValueError(f"ONNX export disagrees with PyTorch: {check}")
    torch_path = save_torch_weights(model, ckpt, onnx_path)
    cfg = ckpt["config"]
    m_cfg = cfg.get("model", {})
    subtype = getattr(model, "subtype_head", None) is not None
    dense = ckpt.get("kind") == "dense"
    named = list(cfg.get("data", {}).get("hold_out", []))
    kept = int(cfg.get("data", {}).get("keep_held_out", 0)) if named else 0  # a few of its fields trained (a lab's)
    held_out = [] if kept else named  # a source with trained fields is not held out: holdout:KEY would score them
    config = {
        "id": (extra or {}).get("id", out_dir.name),
        "kind": "dense" if dense else "patch",
        "architecture": (ARCHITECTURES[ckpt.get("method") or "uts"] if dense else "CompactResNet" + ("+SE" if m_cfg.get("se") else "")),
        "widths": list(m_cfg.get("widths", [24, 32, 64, 96] if dense else [16, 24, 48, 96])),
        "input_size": patch,
        "input": "float32 NCHW RGB 0..255 (normalisation inside the graph)",
        "normalisation": NORMALISATIONS.get(m_cfg.get("input_norm", "global"), NORMALISATIONS["global"]),
        "output": (dense_output(ckpt, model) if dense else
                   "(N, 2): probability of a mitotic figure, probability that it is atypical" if subtype
                   else "probability of a mitotic figure"),
        "outputs": ckpt.get("outputs", ["mitosis"]) if dense else ["mitosis", "atypical"] if subtype else ["mitosis"],
        "mpp": 0.25,
        "threshold": float(ckpt["threshold"]),
        "class_names": ["Mitotic figure (normal)", "Mitotic figure (atypical)"] if subtype else ["Mitotic figure"],
        "candidates": ckpt["candidates"],
        "nms_um": float(ckpt.get("nms_um", ckpt["candidates"]["merge_um"])),
        "macs_per_patch": int(ckpt.get("macs", 0)),
        "training_data": "AMi-Br train split (MIDOG21 + TUPAC16), complete MIDOG21 labels"
                         + "".join(f", without {SOURCES.get(k, k)}" for k in held_out)
                         + (f", of {' and '.join(SOURCES.get(k, k) for k in named)} only {kept} training fields" if kept else ""),
        "training_slides": [{"path": Path(s["path"]).name, "mpp": s.get("mpp"), "train_region": s.get("train_region"),
                             "annotated": bool(s.get("annotations"))} for s in cfg.get("data", {}).get("slides", [])],
        "validation_metrics": ckpt.get("val_metrics", {}),
        "recipe": {k: cfg.get("train", {}).get(k) for k in RECIPE_KEYS if k in cfg.get("train", {})},
        "onnx_opset": OPSET,
        "parity": check,
        "onnx_sha256": sha256_file(onnx_path),
        "torch_sha256": sha256_file(torch_path),
    }
    if held_out:
        config["held_out_sources"] = held_out
    if dense:
        config["dense"] = ckpt["dense"]
        config["method"] = ckpt.get("method")
    if subtype and ckpt.get("atypical_threshold") is not None:
        config["atypical_threshold"] = float(ckpt["atypical_threshold"])
    if ckpt.get("stain_reference"):
        config["stain_reference"] = ckpt["stain_reference"]
    config.update(extra or {})
    write_json_atomic(out_dir / "model.json", config)
    return config


SUBTYPE_KEYS = ("outputs", "class_names", "output", "atypical_threshold", "subtype_model")
SUBTYPE_FILES = ("subtype.onnx", "subtype.pt", "subtype_metrics.jsonl", "subtype_train.log")


def attach_subtype(out_dir: Path, subtype_checkpoint: Path, patches: np.ndarray) -> dict:
    """Export a second model's subtype output into the folder of an exported detector, and list it in model.json.

    The runtime then gives the detector's mitosis probability and this model's atypical one.
    `subtype_checkpoint` may also be a model folder that has one: see `carry_subtype`.
    """
    import tempfile

    if subtype_checkpoint.is_dir():
        return carry_subtype(subtype_checkpoint, out_dir, patches)
    config = json.loads((out_dir / "model.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        sub = export_model(subtype_checkpoint, Path(tmp), patches)
        if "atypical" not in sub["outputs"]:
            raise ValueError(f"{subtype_checkpoint} has no subtype head")
        for key in ("input_size", "mpp"):
            if sub[key] != config[key]:
                raise ValueError(f"the subtype model differs from the detector in {key}: {sub[key]} vs {config[key]}")
        for name in ("model.onnx", "model.pt"):
            with atomic_path(out_dir / name.replace("model", "subtype")) as target:
                (Path(tmp) / name).replace(target)
    previous = config.get("subtype_model")
    if previous:  # a replaced subtype model's cost no longer counts
        config["macs_per_patch"] = int(config["macs_per_patch"]) - int(previous.get("macs_per_patch", 0))
        drop_subtype_files(out_dir, previous)
    drop_precisions(out_dir, config)
    config.update(
        outputs=["mitosis", "atypical"], class_names=["Mitotic figure (normal)", "Mitotic figure (atypical)"],
        output="(N, 2): probability of a mitotic figure (model.onnx), probability that it is atypical (subtype.onnx)",
        atypical_threshold=sub["atypical_threshold"],
        macs_per_patch=int(config["macs_per_patch"]) + int(sub["macs_per_patch"]),
        subtype_model={"file": "subtype.onnx", "sha256": sub["onnx_sha256"], "torch_sha256": sub["torch_sha256"], "output": 1, "architecture": sub["architecture"],
                       "checkpoint": str(subtype_checkpoint), "recipe": sub.get("recipe"), "parity": sub["parity"],
                       "macs_per_patch": sub["macs_per_patch"],
                       "validation_subtype_balanced_accuracy": sub["validation_metrics"].get("subtype_balanced_accuracy")},
    )
    write_json_atomic(out_dir / "model.json", config)
    return config


def carry_subtype(source_dir: Path, out_dir: Path, patches: np.ndarray) -> dict:
    """Move an exported folder's subtype model, already checked, beside a newly exported detector.

    A new detector does not make the subtype model's training run come back: its checkpoint may be
    gone, but its ONNX file, torch weights, threshold and record are in the old folder. The ONNX file
    must still match its recorded sha256, and parity against those torch weights is checked again.
    """
    from mitoqp.runtime.model import load_model

    if source_dir.resolve() == out_dir.resolve():
        raise ValueError(f"{source_dir} is the folder being exported to: give the subtype model's own folder")
    try:
        source = json.loads((source_dir / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{source_dir} is not an exported model folder: {str(exc).splitlines()[0]}") from None
    entry = source.get("subtype_model")
    if not entry:
        raise ValueError(f"{source_dir} has no subtype model")
    if "members" in entry:
        raise ValueError(f"{source_dir} holds an averaged subtype model: give its members (checkpoints) to --subtype")
    config = json.loads((out_dir / "model.json").read_text())
    for key in ("input_size", "mpp"):
        if source[key] != config[key]:
            raise ValueError(f"the subtype model differs from the detector in {key}: {source[key]} vs {config[key]}")
    onnx_file, torch_file = source_dir / entry["file"], source_dir / "subtype.pt"
    if sha256_file(onnx_file) != entry["sha256"]:
        raise ValueError(f"{onnx_file} does not match the sha256 its model.json records")
    weights = torch.load(torch_file, map_location="cpu", weights_only=False)
    model = build_model(weights["model"], int(weights.get("child_classes", 0)))
    model.load_state_dict(weights["state_dict"])
    model.eval()
    column = int(entry.get("output", 1))
    check = parity(model, onnx_file, patches, float(source["atypical_threshold"]), column)
    if check["decisions_differ"] or check["max_abs_diff"] > 1e-4:
        raise ValueError(f"{onnx_file} disagrees with {torch_file}: {check}")
    previous = config.get("subtype_model")
    if previous:
        config["macs_per_patch"] = int(config["macs_per_patch"]) - int(previous.get("macs_per_patch", 0))
        drop_subtype_files(out_dir, previous)
    drop_precisions(out_dir, config)
    for name in SUBTYPE_FILES:
        if (source_dir / name).exists():
            with atomic_path(out_dir / name) as target:
                target.write_bytes((source_dir / name).read_bytes())
    config.update({k: source[k] for k in SUBTYPE_KEYS})
    config["subtype_model"] = {**entry, "parity": check, "carried_from": str(source_dir)}
    config["macs_per_patch"] = int(config["macs_per_patch"]) + int(entry.get("macs_per_patch", 0))
    write_json_atomic(out_dir / "model.json", config)
    load_model(out_dir, backend="onnxruntime")  # the folder must load as the runtime reads it
    return config


def attach_subtype_ensemble(out_dir: Path, sources: list[Path], patches: np.ndarray) -> dict:
    """Several subtype models in the folder of an exported detector; the runtime averages their atypical outputs.

    Each source (a checkpoint, or a model folder whose subtype model is carried over) is exported or checked
    as a single one would be, then stored as `subtypeI.onnx` / `subtypeI.pt`. Their mean has no validation
    record of its own: its atypical threshold is chosen by `--rethreshold` (main_export asks for it).
    """
    import shutil
    import tempfile

    from mitoqp.runtime.model import load_model, members_sha256

    config = json.loads((out_dir / "model.json").read_text())
    members, staged = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, source in enumerate(sources):
            work = Path(tmp) / str(i)
            shutil.copytree(out_dir, work, ignore=shutil.ignore_patterns("subtype*", "*.fp16.onnx", "*.int8.onnx", "*.engine"))
            joined = attach_subtype(work, source, patches)
            entry = {**joined["subtype_model"], "atypical_threshold": float(joined["atypical_threshold"])}
            if "members" in entry:
                raise ValueError(f"{source} holds an averaged subtype model: give its members' checkpoints instead")
            files = {name: name.replace("subtype", f"subtype{i}", 1) for name in SUBTYPE_FILES if (work / name).exists()}
            members.append({**entry, "file": files["subtype.onnx"]})
            staged += [(work / name, out_dir / renamed) for name, renamed in files.items()]
        outputs = {int(m.get("output", 1)) for m in members}
        if len(outputs) != 1:
            raise ValueError(f"the subtype models give their atypical output in different columns: {sorted(outputs)}")
        previous = config.get("subtype_model")
        if previous:
            config["macs_per_patch"] = int(config["macs_per_patch"]) - int(previous.get("macs_per_patch", 0))
            drop_subtype_files(out_dir, previous)
        drop_precisions(out_dir, config)
        for source_file, target_file in staged:
            with atomic_path(target_file) as target:
                source_file.replace(target)
    macs = sum(int(m.get("macs_per_patch", 0)) for m in members)
    config.update(
        outputs=["mitosis", "atypical"], class_names=["Mitotic figure (normal)", "Mitotic figure (atypical)"],
        output=f"(N, 2): probability of a mitotic figure (model.onnx), probability that it is atypical (the mean of "
               f"{len(members)} subtype models)",
        atypical_threshold=float(np.mean([m["atypical_threshold"] for m in members])),  # until --rethreshold
        macs_per_patch=int(config["macs_per_patch"]) + macs,
        subtype_model={"members": members, "sha256": members_sha256([m["sha256"] for m in members]),
                       "output": outputs.pop(), "architecture": f"ensemble of {len(members)} x {members[0]['architecture']}",
                       "macs_per_patch": macs},
    )
    write_json_atomic(out_dir / "model.json", config)
    load_model(out_dir, backend="onnxruntime")  # the folder must load as the runtime reads it
    return config


def drop_subtype_files(out_dir: Path, previous: dict) -> None:
    """Remove the files of a replaced averaged subtype model (a single one's are overwritten by name)."""
    for m in previous.get("members", []):
        for name in SUBTYPE_FILES:
            (out_dir / name.replace("subtype", Path(m["file"]).stem, 1)).unlink(missing_ok=True)


def drop_precisions(out_dir: Path, config: dict) -> None:
    """Remove the folder's FP16/INT8 variants, files and entries, when a subtype model or prefilter joins it or
    the threshold is chosen again.

    A precision is checked over every file of the model; left in place, `--precision int8` would
    run a replaced model's old variant. `mitoqp export -o DIR --precision fp16,int8` makes new ones.
    """
    for entry in config.pop("precisions", {}).values():
        for report in entry.get("files", {}).values():
            if isinstance(report, dict) and report.get("file"):
                (out_dir / report["file"]).unlink(missing_ok=True)


def parity_patches_from_fields(fields, patch: int, params, limit: int = 512) -> np.ndarray:
    """Real patches around the candidates of some fields."""
    from mitoqp.training.samples import field_candidates
    from mitoqp.patches import extract_patches

    out = []
    for f in fields:
        img = f.image()
        out.append(extract_patches(img, field_candidates(img, f.mpp, params), patch))
        if sum(len(o) for o in out) >= limit:
            break
    return np.concatenate(out)[:limit] if out else np.zeros((0, patch, patch, 3), np.uint8)


def check_patches(amibr: Path | None, midog_json: Path | None, patch: int, candidates: dict,
                  limit: int = 512) -> tuple[np.ndarray, list]:
    """Real validation patches around the runtime's candidates (random pixels without the data), and the fields."""
    from mitoqp.datasets import read_amibr

    fields = read_amibr(amibr, midog_json, {"validation"}) if amibr and Path(amibr).exists() else []
    limit = min(limit, max(16, int(PARITY_PIXELS // patch ** 2)))
    patches = parity_patches_from_fields(fields, patch, CandidateParams(**candidates), limit)
    if len(patches) == 0:
        patches = np.random.default_rng(0).integers(0, 256, (min(64, limit), patch, patch, 3), dtype=np.uint8)
    return patches, fields


def main_export(checkpoints: list[Path], out_dir: Path, amibr: Path | None, midog_json: Path | None,
                subtype: Path | list[Path] | None = None, precisions: list[str] | None = None, model_id: str | None = None,
                prefilter: Path | None = None, rethreshold: bool = False,
                candidate_settings: dict[str, float] | None = None) -> dict:
    """One checkpoint: a model folder. Several: an ensemble folder, its thresholds chosen on validation.

    No checkpoint: add to the folder in `out_dir` (a subtype model, a prefilter, precision variants).
    `candidate_settings`: candidate settings to change in the folder's model.json (before any threshold is chosen).
    """
    from mitoqp.export.ensemble import export_ensemble
    from mitoqp.export.precision import PRECISIONS, add_precisions

    subtypes = [subtype] if isinstance(subtype, Path) else list(subtype or [])
    if len(subtypes) > 1 and not rethreshold:
        raise ValueError("several --subtype models are averaged: their atypical threshold is chosen on validation, "
                         "give --rethreshold")
    subtype = subtypes[0] if subtypes else None
    precisions = [p for p in (precisions or []) if p != "fp32"]
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"unknown precision {p!r} (choose from {', '.join(PRECISIONS)})")
    if candidate_settings:
        unknown = sorted(set(candidate_settings) - set(CandidateParams.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown candidate setting {unknown[0]!r} (choose from "
                             f"{', '.join(CandidateParams.__dataclass_fields__)})")
    if not (checkpoints or subtype or prefilter or precisions or model_id or rethreshold or candidate_settings):
        raise ValueError("give a checkpoint to export, or --subtype / --prefilter / --precision / --rethreshold / "
                         "--candidates to add to the model folder in -o")
    first = checkpoints[0] if checkpoints else subtype or prefilter
    if first is not None and not first.is_dir():
        _, ckpt = load_checkpoint(first)
        patch, candidates = int(ckpt["patch"]), ckpt["candidates"]
    else:  # the check patches of the folder added to (or of the folder a subtype model comes from)
        folder = out_dir if first is None else first
        if not (folder / "model.json").exists():
            raise ValueError(f"{folder} holds no exported model to add to" if first is None
                             else f"{folder} is not an exported model folder")
        existing = json.loads((folder / "model.json").read_text())
        patch, candidates = int(existing["input_size"]), existing.get("candidates", {})
    candidates = {**candidates, **(candidate_settings or {})}  # the check patches lie where the model will look
    CandidateParams(**candidates)  # a bad combination fails here, before anything is written
    patches, fields = check_patches(amibr, midog_json, patch, candidates)
    if not checkpoints and not (out_dir / "model.json").exists():
        raise ValueError(f"{out_dir} holds no exported model to add a {'subtype model' if subtype else 'prefilter'} to")
    if len(checkpoints) > 1:
        if not fields:
            raise ValueError("an ensemble's thresholds are chosen on the AMi-Br validation split: give --amibr")
        config = export_ensemble(checkpoints, out_dir, patches, fields, candidate_settings, choose=not rethreshold)
        print(json.dumps([m["parity"] for m in config["members"]]))
    elif checkpoints:
        config = export_model(checkpoints[0], out_dir, patches, {"id": model_id} if model_id else None)
        print(json.dumps(config["parity"]))
    else:
        config = json.loads((out_dir / "model.json").read_text())
    held_out = config.get("held_out_sources", [])
    fields = [f for f in fields if f.source not in held_out]  # a held-out scanner chooses nothing
    if model_id and config.get("id") != model_id:
        config["id"] = model_id
        write_json_atomic(out_dir / "model.json", config)
    if candidate_settings:
        config["candidates"] = {**config.get("candidates", {}), **candidate_settings}
        write_json_atomic(out_dir / "model.json", config)
        print(json.dumps({"candidates": config["candidates"]}))
    if len(subtypes) > 1:
        config = attach_subtype_ensemble(out_dir, subtypes, patches)
        print(json.dumps([m["parity"] for m in config["subtype_model"]["members"]]))
    elif subtype is not None:
        config = attach_subtype(out_dir, subtype, patches)
        print(json.dumps(config["subtype_model"]["parity"]))
    if prefilter is not None:
        from mitoqp.export.prefilter import attach_prefilter

        config = attach_prefilter(out_dir, prefilter, patches, fields)
        print(json.dumps({"prefilter": {k: config["prefilter"][k] for k in ("threshold", "parity", "validation")}}))
    if rethreshold:  # before the precisions: their decisions are checked at the threshold
        if not fields:
            raise ValueError("--rethreshold chooses the threshold on the AMi-Br validation split: give --amibr")
        from mitoqp.export.thresholds import choose_thresholds

        before = config["threshold"]
        drop_precisions(out_dir, config)  # checked at the old threshold
        atypical_before = config.get("atypical_threshold")
        fresh = len(checkpoints) > 1  # an ensemble's first choice: no earlier threshold to record
        config = choose_thresholds(out_dir, config, fields, atypical=True, again=not fresh)
        print(json.dumps({"threshold": config["threshold"], **({} if fresh else {"threshold_before": before}),
                          "rule": config["validation_metrics"].get("threshold_rule", "best HPF-F1"),
                          **({"atypical_threshold": config["atypical_threshold"],
                              "atypical_threshold_before": atypical_before} if atypical_before is not None else {})}))
    if precisions:
        config["precisions"] = add_precisions(out_dir, config, precisions, patches)
        write_json_atomic(out_dir / "model.json", config)
        for p, entry in config["precisions"].items():
            print(json.dumps({"precision": p, "kept": entry["kept"],
                              **{f: {k: r[k] for k in ("max_abs_diff", "decisions_differ")} for f, r in entry["files"].items()}}))
    return config
