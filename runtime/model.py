"""An exported model: `model.onnx` plus `model.json` (what the runtime needs to use it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mitoqp.candidates import CandidateParams
from mitoqp.runtime.backend import Backend, DihedralTTA, EnsembleBackend, PrefilterCascade, SubtypeJoin, make_backend


@dataclass
class Model:
    directory: Path
    config: dict
    backend: Backend
    subtype_floor: float = 0.0  # the detector score from which the subtype model is asked: the run's threshold

    @property
    def id(self) -> str:
        return str(self.config.get("id", self.directory.name))

    @property
    def sha256(self) -> str:
        """The model's identity (a re-run redoes slides done by another): of every file it runs."""
        extra = [self.config[k]["sha256"] for k in ("subtype_model", "prefilter") if self.config.get(k)]
        return members_sha256([self.config["onnx_sha256"], *extra]) if extra else str(self.config["onnx_sha256"])

    @property
    def kind(self) -> str:
        """`patch`: scores a patch around each candidate; `dense`: maps a tile to probability maps."""
        return str(self.config.get("kind", "patch"))

    @property
    def patch(self) -> int:
        return int(self.config["input_size"])

    @property
    def mpp(self) -> float:
        return float(self.config["mpp"])

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    @property
    def nms_um(self) -> float:
        """Scored candidates closer than this to a higher-scoring one are the same figure (split telophase)."""
        return float(self.config.get("nms_um", self.candidates.merge_um))

    def check_threshold(self, threshold: float) -> None:
        """Refuse a detection threshold this loaded model cannot serve whole: one its subtype model was not asked
        from (detections without a subtype), or one below the detector score its prefilter was chosen to pass
        (figures the prefilter rejected would be missing)."""
        if self.has_subtype and threshold < self.subtype_floor:
            raise ValueError(f"threshold {threshold:g} is below {self.subtype_floor:g}, the score from which this model "
                             f"asks its subtype model: load it with load_model(..., threshold={threshold:g})")
        pre = self.config.get("prefilter")
        keep = float(pre.get("keep_above", 0.0)) if pre else 0.0
        if threshold < keep:
            raise ValueError(f"threshold {threshold:g} is below {keep:g}, the lowest detector score this model's "
                             "prefilter was chosen to pass: run with --no-prefilter (load_model(..., prefilter=False))")

    @property
    def has_subtype(self) -> bool:
        """Whether the model also scores atypical vs normal (a second output)."""
        return "atypical" in self.config.get("outputs", [])

    @property
    def atypical_threshold(self) -> float:
        return float(self.config.get("atypical_threshold", 0.5))

    @property
    def stain_reference(self) -> dict | None:
        """Macenko H and E vectors and densities of the training data: the target of --stain-normalise."""
        return self.config.get("stain_reference")

    @property
    def candidates(self) -> CandidateParams:
        return CandidateParams(**self.config.get("candidates", {}))


def default_model_dir() -> Path:
    """The model shipped inside the package."""
    import mitoqp.models

    return Path(mitoqp.models.__file__).parent / "default"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def members_sha256(shas: list[str]) -> str:
    """An ensemble's identity: a hash of its members' hashes, in order."""
    return hashlib.sha256("".join(shas).encode()).hexdigest()


def subtype_members(entry: dict) -> list[dict]:
    """The files of a folder's subtype model: itself, or the members whose atypical outputs the runtime averages."""
    return entry.get("members") or [entry]


def check_variant(directory: Path, config: dict, onnx_file: str, precision: str, verify: bool) -> None:
    """A precision other than FP32 must have passed the export's check; its file must match its hash."""
    if precision == "fp32":
        return
    entry = config.get("precisions", {}).get(precision)
    if entry is None:
        return  # make_backend says how to make it, or TensorRT builds it from FP32
    report = entry["files"].get(onnx_file, {})
    if not entry.get("kept"):
        raise ValueError(f"{directory} has no {precision} model: {report.get('why_not', 'it failed its check')}")
    if verify and sha256_file(directory / report["file"]) != report["sha256"]:
        raise ValueError(f"{directory / report['file']} does not match the sha256 in its model.json")


def load_model(directory: Path | str | None = None, backend: str = "auto", threads: int = 0, verify: bool = True,
               tta: int = 1, precision: str = "fp32", subtype_floor: float | None = None, prefilter: bool = True,
               threshold: float | None = None) -> Model:
    """Load an exported model folder (or a model by its registry name); checks the files against their hashes.

    `backend`: auto, tensorrt, onnxruntime or torch; `precision`: fp32, fp16 or int8 where the folder
    (or TensorRT) has it; `tta` > 1 averages the outputs over that many dihedral views of each patch;
    `prefilter`: run the folder's prefilter cascade, where it has one (False: the detector on every patch);
    `threshold`: the detection threshold the run will use (None: the folder's). A joined subtype model
    sees exactly the patches whose detector score (after TTA) reaches it, the same float32 comparison that
    makes a detection, so every detection and nothing else gets a subtype; `subtype_floor` overrides it.
    """
    from mitoqp.runtime.registry import resolve_model

    resolved = resolve_model(directory)
    directory = resolved if resolved is not None else default_model_dir()
    cfg_path = directory / "model.json"
    if not cfg_path.exists():
        raise ValueError(f"{directory} is not a mitoqp model folder (needs model.json and model.onnx)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"bad model config {cfg_path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    check_config(config, cfg_path)
    if not prefilter:
        config.pop("prefilter", None)  # and out of the model's identity: its results are the detector's own
    patch = int(config["input_size"])

    def file_backend(onnx_file: str, sha256: str) -> Backend:
        onnx_path = directory / onnx_file
        if not onnx_path.exists():
            raise ValueError(f"{directory} is not a complete mitoqp model folder: {onnx_file} is missing")
        if verify and sha256_file(onnx_path) != sha256:
            raise ValueError(f"{onnx_path} does not match the sha256 in its model.json")
        try:
            check_variant(directory, config, onnx_file, precision, verify)
            bits = int(config["precisions"]["int8"].get("weight_bits", 8)) if precision == "int8" and \
                "int8" in config.get("precisions", {}) else 8
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"model config {cfg_path}: its {precision!r} precision entry is malformed") from None
        return make_backend(backend, onnx_path, threads, precision, patch, int8_weight_bits=bits)

    # an ensemble lists its members, each with its own hash; a plain model is model.onnx
    members = config.get("members") or [{"file": "model.onnx", "sha256": config["onnx_sha256"]}]
    if verify and "members" in config:
        if members_sha256([m["sha256"] for m in members]) != config["onnx_sha256"]:
            raise ValueError(f"the members listed in {cfg_path} do not match its sha256")
    runners = [file_backend(m["file"], m["sha256"]) for m in members]
    runner = runners[0] if len(runners) == 1 else EnsembleBackend(runners)
    runner = DihedralTTA(runner, tta) if tta > 1 else runner
    sub = config.get("subtype_model")
    floor = 0.0
    if sub:  # a second model in the folder gives the atypical probability, for the detections only
        floor = subtype_floor if subtype_floor is not None else \
            float(config["threshold"]) if threshold is None else float(threshold)
        files = subtype_members(sub)
        if verify and "members" in sub and members_sha256([m["sha256"] for m in files]) != sub["sha256"]:
            raise ValueError(f"the subtype members listed in {cfg_path} do not match its sha256")
        parts = [file_backend(m["file"], m["sha256"]) for m in files]
        subtype = parts[0] if len(parts) == 1 else EnsembleBackend(parts)
        subtype = DihedralTTA(subtype, tta) if tta > 1 else subtype  # the views of the patches it is asked for
        runner = SubtypeJoin(runner, subtype, int(sub.get("output", 1)), floor)
    pre = config.get("prefilter")
    if pre:  # once per patch, outside the TTA views: it decides which patches the full model sees
        runner = PrefilterCascade(file_backend(pre["file"], pre["sha256"]), runner, float(pre["threshold"]),
                                  2 if "atypical" in config.get("outputs", []) else 1)
    model = Model(directory, config, runner, floor)
    check_io(model, cfg_path)
    if threshold is not None:
        model.check_threshold(float(threshold))
    return model


def check_config(config, cfg_path: Path) -> None:
    """Every value the runtime reads from model.json, checked for type and range: a one-line error naming the
    key, rather than a crash on the first slide (the folder may come from anywhere)."""
    def fail(why: str):
        raise ValueError(f"model config {cfg_path}: {why}")

    def number(key, lo: float, hi: float, where: dict | None = None, required: bool = False) -> None:
        where = config if where is None else where
        if key not in where:
            if required:
                fail(f"lacks {key!r}")
            return
        v = where[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:  # NaN fails too
            fail(f"{key!r} is {v!r}, not a number from {lo:g} to {hi:g}")

    def plain_file(entry, what: str) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            fail(f"{what} needs a file and its sha256")
        name = entry.get("file")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            fail(f"{what} names {name!r}, not a file inside the model folder")

    if not isinstance(config, dict):
        fail("not a JSON object")
    number("input_size", 8, 4096, required=True)
    if not isinstance(config["input_size"], int):
        fail(f"'input_size' is {config['input_size']!r}, not a whole number of pixels")
    number("mpp", 0.01, 20, required=True)
    number("threshold", 0, 1, required=True)
    if not isinstance(config.get("onnx_sha256"), str):
        fail("lacks 'onnx_sha256' (the model file's sha256, a string)")
    if config.get("kind", "patch") not in ("patch", "dense"):
        fail(f"'kind' is {config.get('kind')!r}, not 'patch' or 'dense'")
    outputs = config.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        fail("'outputs' is not a list of names")
    number("nms_um", 0, 1000)
    number("atypical_threshold", 0, 1)
    cands = config.get("candidates", {})
    fields = set(CandidateParams.__dataclass_fields__)
    if not isinstance(cands, dict) or not set(cands) <= fields:
        fail(f"'candidates' must be an object with keys among {sorted(fields)}")
    for key in cands:
        number(key, 0, 1e6, cands)
    if "members" in config:
        if not isinstance(config["members"], list) or not config["members"]:
            fail("'members' is not a list of model files")
        for i, m in enumerate(config["members"]):
            plain_file(m, f"member {i}")
    if config.get("prefilter"):
        if config.get("kind", "patch") != "patch":
            fail("'prefilter' is for a patch model, not a dense one")
        plain_file(config["prefilter"], "'prefilter'")
        t = config["prefilter"].get("threshold")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            fail(f"'prefilter' threshold is {t!r}, not a number from 0 to 1")
        k = config["prefilter"].get("keep_above", 0.0)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 <= k <= 1:
            fail(f"'prefilter' keep_above is {k!r}, not a number from 0 to 1")
    if config.get("subtype_model"):
        sub = config["subtype_model"]
        if isinstance(sub, dict) and "members" in sub:
            if not isinstance(sub["members"], list) or not sub["members"]:
                fail("'subtype_model' members is not a list of model files")
            for i, m in enumerate(sub["members"]):
                plain_file(m, f"subtype member {i}")
            if not isinstance(sub.get("sha256"), str):
                fail("'subtype_model' needs the sha256 of its members")
        else:
            plain_file(sub, "'subtype_model'")
        out = sub.get("output", 1)
        if isinstance(out, bool) or not isinstance(out, int) or out < 0:
            fail(f"'subtype_model' output is {out!r}, not a column number")
    for key in ("precisions", "dense", "stain_reference"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            fail(f"{key!r} is not an object")
    ref = config.get("stain_reference")
    if ref is not None:
        try:
            ok = np.asarray(ref["he"], float).shape == (2, 3) and np.asarray(ref["max_conc"], float).shape == (2,)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            fail("'stain_reference' needs 'he' (2 x 3) and 'max_conc' (2)")


def check_io(model: Model, cfg_path: Path) -> None:
    """One glass patch through the model: its input and output shapes must be what model.json says."""
    from mitoqp.dense import DenseSpec

    size = model.patch
    try:
        spec = DenseSpec.from_config(model.config) if model.kind == "dense" else None
        out = model.backend.predict(np.full((1, size, size, 3), 255, np.uint8))
    except ValueError as exc:
        raise ValueError(f"model config {cfg_path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # the runtime's own error for a graph that does not take this input
        first = str(exc).strip().splitlines()
        raise ValueError(f"model {cfg_path.parent} does not take a {size} x {size} patch as its model.json says "
                         f"({type(exc).__name__}: {first[0][:200] if first else ''})") from None
    need = 1 + max([0] + [i for i, o in enumerate(model.config.get("outputs", []))])
    if spec is None:
        ok = out.ndim == 2 and out.shape[0] == 1 and out.shape[1] >= need
    else:
        ok = out.ndim == 4 and out.shape[0] == 1 and out.shape[1] >= need and out.shape[2:] == (size // spec.stride,) * 2
    if not ok or not np.isfinite(out[:, 0]).all():  # a joined subtype column is NaN where not asked
        raise ValueError(f"model {cfg_path.parent} gives output {tuple(out.shape)} for one patch, not what model.json "
                         f"describes ({len(model.config.get('outputs', [])) or 1} outputs, kind {model.kind})")
