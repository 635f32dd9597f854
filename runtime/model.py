"""An exported model: `model.onnx` plus `model.json` (what the runtime needs to use it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mitoqp.candidates import CandidateParams
from mitoqp.runtime.backend import Backend, DihedralTTA, EnsembleBackend, SubtypeJoin, make_backend


SUBTYPE_FLOOR = 0.25  # detector score from which a joined subtype model is asked (thresholds lie far above)


@dataclass
class Model:
    directory: Path
    config: dict
    backend: Backend

    @property
    def id(self) -> str:
        return str(self.config.get("id", self.directory.name))

    @property
    def sha256(self) -> str:
        """The model's identity (a re-run redoes slides done by another): with a subtype model, of both files."""
        sub = self.config.get("subtype_model")
        return members_sha256([self.config["onnx_sha256"], sub["sha256"]]) if sub else str(self.config["onnx_sha256"])

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
               tta: int = 1, precision: str = "fp32", subtype_floor: float | None = None) -> Model:
    """Load an exported model folder (or a model by its registry name); checks the files against their hashes.

    `backend`: auto, tensorrt, onnxruntime or torch; `precision`: fp32, fp16 or int8 where the folder
    (or TensorRT) has it; `tta` > 1 averages the outputs over that many dihedral views of each patch.
    """
    from mitoqp.runtime.registry import resolve_model

    resolved = resolve_model(directory)
    directory = resolved if resolved is not None else default_model_dir()
    cfg_path = directory / "model.json"
    if not cfg_path.exists():
        raise ValueError(f"{directory} is not a mitoqp model folder (needs model.json and model.onnx)")
    try:
        config = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ValueError(f"bad model config {cfg_path}: {exc}") from None
    for key in ("input_size", "mpp", "threshold", "onnx_sha256"):
        if key not in config:
            raise ValueError(f"model config {cfg_path} lacks {key!r}")
    patch = int(config["input_size"])

    def file_backend(onnx_file: str, sha256: str) -> Backend:
        onnx_path = directory / onnx_file
        if not onnx_path.exists():
            raise ValueError(f"{directory} is not a complete mitoqp model folder: {onnx_file} is missing")
        if verify and sha256_file(onnx_path) != sha256:
            raise ValueError(f"{onnx_path} does not match the sha256 in its model.json")
        check_variant(directory, config, onnx_file, precision, verify)
        return make_backend(backend, onnx_path, threads, precision, patch)

    # an ensemble lists its members, each with its own hash; a plain model is model.onnx
    members = config.get("members") or [{"file": "model.onnx", "sha256": config["onnx_sha256"]}]
    if verify and "members" in config:
        if members_sha256([m["sha256"] for m in members]) != config["onnx_sha256"]:
            raise ValueError(f"the members listed in {cfg_path} do not match its sha256")
    runners = [file_backend(m["file"], m["sha256"]) for m in members]
    runner = runners[0] if len(runners) == 1 else EnsembleBackend(runners)
    sub = config.get("subtype_model")
    if sub:  # a second model in the folder gives the atypical probability
        floor = float(config.get("subtype_floor", SUBTYPE_FLOOR)) if subtype_floor is None else subtype_floor
        runner = SubtypeJoin(runner, file_backend(sub["file"], sub["sha256"]), int(sub.get("output", 1)), floor)
    return Model(directory, config, DihedralTTA(runner, tta) if tta > 1 else runner)
