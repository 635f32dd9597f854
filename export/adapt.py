"""`mitoqp adapt SLIDES -o DIR`: a model's batch-norm statistics moved onto a lab's own scanner.

Each batch-norm layer normalises its features by statistics learnt on the training scanners; another
scanner shifts them. The shift is measured without labels: the layer statistics over the lab's candidate
patches against the same statistics over the training fields' candidates, measured the same way, and the
difference is added to the trained statistics ("relative AdaBN"). Replacing them outright (AdaBN, Li et
al. 2016) cost a tenth of mean recall in domain here, because training batches are not what a slide's
candidates look like. `mitoqp export -o DIR --adapt-reference` stores the training side in the folder, so
a lab needs only its slides. The weights, the threshold and the subtype model stay as they are.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from mitoqp.candidates import CandidateParams
from mitoqp.io_utils import atomic_path, write_json_atomic
from mitoqp.pipeline import Options, halo_for, patch_batches, prepare
from mitoqp.runtime.model import sha256_file
from mitoqp.runtime.nchw import to_nchw
from mitoqp.slide import ImageField, SlideError, open_slide

REFERENCE_FILE = "adapt_reference.npz"
BATCH = 256  # patches per statistics pass: every pass averages the same size of batch
PARITY_PATCHES = 256
Stats = list[tuple[np.ndarray, np.ndarray]]  # per batch-norm layer: (mean, variance) per channel


def batchnorm_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.BatchNorm2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]


class LayerStatistics:
    """The cumulative mean and variance of every batch-norm layer's input over patches fed in batches of BATCH.

    A copy of the model runs with its batch-norm layers in training mode (each batch normalised by its own
    statistics, as the layers were trained); the model given is left untouched.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval()
        for _, bn in batchnorm_layers(self.model):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches
            bn.train()
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.patches = 0  # patches that went into the statistics
        self.batches = 0

    def add(self, patches: np.ndarray) -> None:
        if len(patches):
            self.buffer.append(patches)
            self.buffered += len(patches)
        while self.buffered >= BATCH:
            chunk = np.concatenate(self.buffer)
            self._forward(chunk[:BATCH])
            rest = chunk[BATCH:]
            self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)

    def _forward(self, patches: np.ndarray) -> None:
        with torch.no_grad():
            self.model(torch.from_numpy(to_nchw(patches)))
        self.patches += len(patches)
        self.batches += 1

    def result(self) -> Stats:
        """The statistics; a last partial batch counts only when it is the only one (each batch weighs the same)."""
        if self.buffered and not self.batches:
            self._forward(np.concatenate(self.buffer))
        self.buffer, self.buffered = [], 0
        if not self.batches:
            raise ValueError("no candidate patches to measure: the inputs hold no tissue with candidates")
        return [(bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()) for _, bn in batchnorm_layers(self.model)]


def sample_patches(batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], keep: int,
                   rng: np.random.Generator) -> np.ndarray | None:
    """At most `keep` patches drawn uniformly from all a slide gives (a reservoir: a slide is never held whole).

    None where it gives no candidate at all."""
    kept: np.ndarray | None = None
    seen = 0
    for _, _, patches in batches:
        for p in patches:
            if kept is None:
                kept = np.empty((keep, *p.shape), p.dtype)
            if seen < keep:
                kept[seen] = p
            else:
                j = int(rng.integers(0, seen + 1))
                if j < keep:
                    kept[j] = p
            seen += 1
    return kept[: min(seen, keep)] if kept is not None else None


def gather(inputs: list[tuple[Path, float | None]], stats: LayerStatistics, params: CandidateParams, patch: int,
           model_mpp: float, per_input: int, seed: int = 0, log: Callable[[str], None] = print,
           keep_for_parity: int = PARITY_PATCHES) -> tuple[list[str], np.ndarray]:
    """Feed up to `per_input` candidate patches of each (path, mpp) to `stats`, cut as `mitoqp run` cuts them.

    A plain image (a field) is analysed whole, a slide inside its tissue. An input that cannot be read is
    reported in one line and skipped. Returns the skipped inputs' messages and some patches for a parity check.
    """
    rng = np.random.default_rng(seed)
    skipped, parity = [], []
    halo = halo_for(patch, params, model_mpp)
    for path, mpp in inputs:
        try:
            with open_slide(path) as slide:
                opts = Options(mpp=mpp, use_tissue_mask=not isinstance(slide, ImageField), workers=1)
                prep = prepare(slide, model_mpp, halo, opts)
                patches = sample_patches(patch_batches(slide, prep, params, patch, BATCH, 1), per_input, rng)
        except (SlideError, ValueError, OSError) as exc:
            message = f"{Path(path).name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            log(f"skipped {message}")
            skipped.append(message)
            continue
        if patches is None:
            continue
        stats.add(patches)
        if sum(len(p) for p in parity) < keep_for_parity:
            parity.append(patches)
    parity_patches = np.concatenate(parity)[:keep_for_parity] if parity else np.zeros((0, patch, patch, 3), np.uint8)
    return skipped, parity_patches


def shifted(trained: Stats, reference: Stats, target: Stats) -> Stats:
    """The trained statistics moved by the target's difference from the reference (variances by their ratio)."""
    return [(m0 + mt - mr, v0 * vt / np.maximum(vr, 1e-6))
            for (m0, v0), (mr, vr), (mt, vt) in zip(trained, reference, target)]


def load_weights(folder: Path, config: dict) -> tuple[torch.nn.Module, dict]:
    """The patch model of an exported folder, from `model.pt` (checked against its sha256)."""
    from mitoqp.training.model import build_model

    if config.get("kind", "patch") != "patch" or config.get("members"):
        raise ValueError(f"{folder}: only a single patch model can be adapted (not a dense model or an ensemble)")
    path = folder / "model.pt"
    if not path.exists() or ("torch_sha256" in config and sha256_file(path) != config["torch_sha256"]):
        raise ValueError(f"{folder} has no model.pt matching its model.json: re-export the checkpoint")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(saved["model"], int(saved["child_classes"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def save_reference(path: Path, layers: list[str], stats: Stats) -> None:
    arrays = {"layers": np.array(layers)}
    for i, (m, v) in enumerate(stats):
        arrays[f"mean_{i}"], arrays[f"var_{i}"] = m, v
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_reference(folder: Path, config: dict, layers: list[str]) -> Stats:
    entry = config.get("adapt_reference")
    path = folder / REFERENCE_FILE
    if not entry or not path.exists():
        raise ValueError(f"{folder} has no adaptation reference: add it with `mitoqp export -o {folder} --adapt-reference`")
    if sha256_file(path) != entry.get("sha256"):
        raise ValueError(f"{path} does not match the sha256 in its model.json")
    with np.load(path) as z:
        if list(z["layers"]) != layers:
            raise ValueError(f"{path} was measured on another network than {folder}'s model.pt")
        return [(z[f"mean_{i}"], z[f"var_{i}"]) for i in range(len(layers))]


def add_reference(folder: Path, fields: list, per_field: int = 64, log: Callable[[str], None] = print) -> dict:
    """Measure the training side (the candidates of `fields`, the model's training fields) and store it."""
    config = json.loads((folder / "model.json").read_text())
    model, _ = load_weights(folder, config)
    layers = [n for n, _ in batchnorm_layers(model)]
    if not layers:
        raise ValueError(f"{folder}'s network has no batch-norm layer to adapt")
    stats = LayerStatistics(model)
    skipped, _ = gather([(f.path, f.mpp) for f in fields], stats, CandidateParams(**config["candidates"]),
                        int(config["input_size"]), float(config["mpp"]), per_field, log=log)
    reference = stats.result()
    save_reference(folder / REFERENCE_FILE, layers, reference)
    config["adapt_reference"] = {"file": REFERENCE_FILE, "sha256": sha256_file(folder / REFERENCE_FILE),
                                 "fields": len(fields) - len(skipped), "patches": stats.patches,
                                 "what": "batch-norm input statistics over the candidates of the training fields"}
    write_json_atomic(folder / "model.json", config)
    return config["adapt_reference"]


def early_layers(names: list[str], blocks: int | None) -> list[bool]:
    """Which batch-norm layers to move: all (None), or the stem's and the first `blocks` residual blocks'.

    Colour and scanner shifts show first in the low-level features; deeper statistics also follow what the
    tissue holds, which a lab's inputs may not share with the training fields."""
    if blocks is None:
        return [True] * len(names)
    if blocks < 0:
        raise ValueError(f"--early-blocks must be 0 or more, not {blocks}")
    return [n.startswith("stem.") or (n.startswith("stages.") and int(n.split(".")[1]) < blocks) for n in names]


def adapt_folder(source: Path, inputs: list[tuple[Path, float | None]], out: Path, max_patches: int = 8192,
                 model_id: str | None = None, log: Callable[[str], None] = print,
                 early_blocks: int | None = None) -> dict:
    """Write `out`: `source` with its detector's batch-norm statistics moved onto `inputs` (slides or fields);
    with `early_blocks`, only those of the stem and the first `early_blocks` residual blocks."""
    from mitoqp.export.onnx_export import drop_precisions, export_onnx, parity, save_torch_weights

    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists: give a new folder for the adapted model")
    if not inputs:
        raise ValueError("no slides or fields to adapt to")
    config = json.loads((source / "model.json").read_text())
    if config.get("adapted"):
        raise ValueError(f"{source} is already adapted (to {config['adapted']['inputs']} inputs): adapt the model it "
                         f"came from, {config['adapted']['from']}, instead")
    model, saved = load_weights(source, config)
    named = batchnorm_layers(model)
    reference = load_reference(source, config, [n for n, _ in named])
    moved = early_layers([n for n, _ in named], early_blocks)
    stats = LayerStatistics(model)
    per_input = max(1, -(-max_patches // len(inputs)))
    skipped, check = gather(inputs, stats, CandidateParams(**config["candidates"]), int(config["input_size"]),
                            float(config["mpp"]), per_input, log=log)
    target = stats.result()
    trained = [(bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()) for _, bn in named]
    for (_, bn), (m, v), move in zip(named, shifted(trained, reference, target), moved):
        if not move:
            continue
        bn.running_mean.copy_(torch.from_numpy(m))
        bn.running_var.copy_(torch.from_numpy(v))

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp)
        drop_precisions(tmp, config)  # FP16/INT8 variants of the old statistics: re-add with mitoqp export --precision
        export_onnx(model, int(config["input_size"]), tmp / "model.onnx")
        check_result = parity(model, tmp / "model.onnx", check, float(config["threshold"]))
        if check_result["decisions_differ"] or check_result["max_abs_diff"] > 1e-4:
            raise ValueError(f"ONNX export of the adapted model disagrees with PyTorch: {check_result}")
        torch_path = save_torch_weights(model, {"kind": "patch", "config": {"model": saved["model"]},
                                                "child_classes": saved["child_classes"]}, tmp / "model.onnx")
        config.update({
            "id": model_id or f"{config.get('id', source.name)}-adapted",
            "parity": check_result,
            "onnx_sha256": sha256_file(tmp / "model.onnx"),
            "torch_sha256": sha256_file(torch_path),
            "adapted": {"from": config.get("id", source.name), "from_onnx_sha256": config["onnx_sha256"],
                        "inputs": len(inputs) - len(skipped), "skipped": skipped, "patches": stats.patches,
                        "method": "relative batch-norm statistics of the detector (mitoqp adapt)",
                        "layers": f"{sum(moved)} of {len(moved)} batch-norm layers"
                                  + ("" if early_blocks is None else f" (the stem and {early_blocks} residual blocks)"),
                        "date": datetime.date.today().isoformat()},
        })
        write_json_atomic(tmp / "model.json", config)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config
