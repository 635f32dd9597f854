"""Inference backends: a patch batch in, the model's outputs out, and the choice among them.

Backends take uint8 (N, P, P, 3) patches, as cut from the slide; the model
graph holds its own normalisation. They return (N, K) float32: column 0 is the
mitosis probability, column 1 (models with a subtype head) the probability
that the figure is atypical. Three engines run a model file: TensorRT, ONNX
Runtime (CPU, or CUDA with onnxruntime-gpu) and PyTorch; ensembles, a joined
subtype model and test-time augmentation wrap any of them.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


class Backend(Protocol):
    name: str

    def predict(self, patches: np.ndarray) -> np.ndarray:
        """(N, P, P, 3) uint8 -> (N, K) float32 probabilities."""


class EnsembleBackend:
    """The mean output of several members (each a backend of its own)."""

    def __init__(self, members: list[Backend]):
        self.members = members
        self.name = f"{members[0].name}x{len(members)}"

    def predict(self, patches: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(patches) for m in self.members], axis=0).astype(np.float32)


class SubtypeJoin:
    """A detector's mitosis probability beside a second model's atypical probability (its output `column`).

    The subtype model runs only on patches the detector scores at least `floor` (NaN elsewhere): a run
    sets it to its threshold, so every detection has its subtype and the subtype model costs nothing on
    the candidates that are not figures. With TTA both backends come wrapped in their views.
    """

    def __init__(self, detector: Backend, subtype: Backend, column: int = 1, floor: float = 0.0):
        self.detector, self.subtype, self.column, self.floor = detector, subtype, column, floor
        self.name = f"{detector.name}+subtype"

    def predict(self, patches: np.ndarray) -> np.ndarray:
        det = self.detector.predict(patches)[:, :1]
        out = np.full((len(det), 2), np.nan, np.float32)
        out[:, 0] = det[:, 0]
        ask = np.flatnonzero(out[:, 0] >= self.floor)  # the float32 score the run compares with its threshold
        if len(ask):
            out[ask, 1] = self.subtype.predict(patches[ask])[:, self.column]
        return out


class PrefilterCascade:
    """A cheap prefilter on every patch; the full model only on the patches it passes (`threshold`).

    A patch the prefilter rejects scores 0 for mitosis (and NaN for the subtype): the prefilter's
    threshold is chosen on validation so that it passes every candidate the detector scores at
    least 0.25 there, far below the detection threshold (export/prefilter.py).
    """

    def __init__(self, prefilter: Backend, inner: Backend, threshold: float, columns: int = 1):
        self.prefilter, self.inner, self.threshold, self.columns = prefilter, inner, threshold, columns
        self.name = f"prefilter+{inner.name}"
        self.seen = self.passed = 0  # patches scored, and passed on to the full model

    def predict(self, patches: np.ndarray) -> np.ndarray:
        ask = np.flatnonzero(self.prefilter.predict(patches)[:, 0] >= self.threshold)
        self.seen += len(patches)
        self.passed += len(ask)
        out = np.zeros((len(patches), self.columns), np.float32)
        out[:, 1:] = np.nan
        if len(ask):
            out[ask] = self.inner.predict(patches[ask])
        return out


DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))  # rotations by k*90 degrees, then a mirror


def dihedral_view(patches: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(patches, k, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if flip else out)


def undo_view(out: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """A dense model's (N, K, h, w) maps back in the patch's own orientation; (N, K) scores need nothing."""
    if out.ndim != 4:
        return out
    out = out[..., ::-1] if flip else out
    return np.rot90(out, -k, axes=(2, 3))


class DihedralTTA:
    """Test-time augmentation: the mean of a backend's outputs over `views` of the 8 dihedral transforms.

    With all 8 the result is the same for a patch and any rotation or mirror of it.
    """

    def __init__(self, inner: Backend, views: int = 8):
        if views not in (1, 2, 4, 8):
            raise ValueError(f"test-time augmentation takes 1, 2, 4 or 8 views, not {views}")
        self.inner, self.views = inner, DIHEDRAL[:: 8 // views] if views < 8 else DIHEDRAL
        self.name = f"{inner.name}+tta{views}"

    def predict(self, patches: np.ndarray) -> np.ndarray:
        views = [undo_view(self.inner.predict(dihedral_view(patches, k, f)), k, f) for k, f in self.views]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a subtype left out (NaN) in every view stays NaN
            return np.nanmean(views, axis=0).astype(np.float32)


def nvidia_driver_present() -> bool:
    """An NVIDIA driver on this machine: checked before importing PyTorch, which costs a CPU-only run seconds."""
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/gpus"))


def gpu_visible() -> bool:
    """An NVIDIA GPU that PyTorch can see (TensorRT here takes its buffers from PyTorch)."""
    if importlib.util.find_spec("torch") is None or not nvidia_driver_present():
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_backend(kind: str, torch_weights: bool = False, precision: str = "fp32") -> str:
    """`auto`: TensorRT where it imports and a GPU is present; ONNX Runtime where its CUDA build is installed;
    PyTorch on a GPU it sees, where the folder has the weights (`torch_weights`) and the precision is one it
    runs (2.3x ONNX Runtime on 16 CPU cores per dense slide: benchmarks/RESULTS.md, "On a GPU"); else ONNX
    Runtime on the CPU, then PyTorch on the CPU.
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r} (choose from {', '.join(BACKENDS)})")
    if kind != "auto":
        return kind
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if importlib.util.find_spec("tensorrt") is not None and gpu_visible():
        return "tensorrt"
    if has_ort:
        from mitoqp.runtime.onnxruntime_backend import available_devices

        if "cuda" in available_devices():
            return "onnxruntime"
    if torch_weights and precision in ("fp32", "fp16") and gpu_visible():
        return "torch"
    if has_ort:
        return "onnxruntime"
    if importlib.util.find_spec("torch") is not None:
        return "torch"
    raise ValueError("no inference engine is installed: pip install onnxruntime")


def variant_name(onnx_file: str, precision: str) -> str:
    """A precision's file beside the FP32 graph: model.onnx -> model.int8.onnx; FP32 is the file itself."""
    return onnx_file if precision == "fp32" else onnx_file.removesuffix(".onnx") + f".{precision}.onnx"


def make_backend(kind: str, onnx_path: Path, threads: int = 0, precision: str = "fp32", patch: int = 96,
                 int8_weight_bits: int = 8) -> Backend:
    """A backend for one ONNX file of a model folder, in `precision` (the folder must hold that variant).

    `int8_weight_bits`: as the export recorded it (older folders: 8, exact only on CPUs with VNNI).
    """
    from mitoqp.runtime.torch_backend import torch_file

    kind = resolve_backend(kind, torch_file(onnx_path).exists(), precision)
    if kind == "tensorrt":
        from mitoqp.runtime.tensorrt_backend import load_tensorrt

        return load_tensorrt(onnx_path.parent, onnx_path.name, precision, patch)
    if kind == "torch":
        from mitoqp.runtime.torch_backend import TorchBackend

        return TorchBackend(torch_file(onnx_path), precision=precision, threads=threads)
    from mitoqp.runtime.cpu_features import int8_exact_on_cpu
    from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend

    variant = onnx_path.parent / variant_name(onnx_path.name, precision)
    if not variant.exists():
        raise ValueError(f"{onnx_path.parent} has no {precision} model ({variant.name}): "
                         f"mitoqp export -o {onnx_path.parent} --precision {precision} makes one")
    backend = OnnxRuntimeBackend(variant, threads, device="auto")
    if precision == "int8" and backend.device == "cpu" and not int8_exact_on_cpu(weight_bits=int8_weight_bits):
        raise ValueError("this INT8 model (8-bit weights) needs a CPU with VNNI (avx512_vnni or avx_vnni): on this CPU "
                         "ONNX Runtime's INT8 kernels saturate and change decisions; use --precision fp32, or "
                         f"re-export it with 7-bit weights: mitoqp export -o {onnx_path.parent} --precision int8")
    if precision != "fp32":
        backend.name += f"-{precision}"
    return backend
