"""Inference backends: a patch batch in, the model's outputs out.

Backends take uint8 (N, P, P, 3) patches, as cut from the slide; the model
graph holds its own normalisation. They return (N, K) float32: column 0 is the
mitosis probability, column 1 (models with a subtype head) the probability
that the figure is atypical. Later backends (TensorRT, PyTorch) follow the same
interface; `DihedralTTA` wraps any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str

    def predict(self, patches: np.ndarray) -> np.ndarray:
        """(N, P, P, 3) uint8 -> (N, K) float32 probabilities."""


def to_nchw(patches: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(patches.transpose(0, 3, 1, 2), dtype=np.float32)


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU (or another provider where that build has it)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int = 0, providers: list[str] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            raise ValueError(f"cannot load ONNX model {onnx_path}: {exc}".splitlines()[0]) from None
        self.input_name = self.session.get_inputs()[0].name

        self.outputs = int(np.prod(self.session.get_outputs()[0].shape[1:] or [1]))

    def predict(self, patches: np.ndarray) -> np.ndarray:
        if len(patches) == 0:
            return np.zeros((0, self.outputs), np.float32)
        out = self.session.run(None, {self.input_name: to_nchw(patches)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(patches), -1)


class EnsembleBackend:
    """The mean output of several members (each a backend of its own)."""

    def __init__(self, members: list[Backend]):
        self.members = members
        self.name = f"{members[0].name}x{len(members)}"

    def predict(self, patches: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(patches) for m in self.members], axis=0).astype(np.float32)


class SubtypeJoin:
    """A detector's mitosis probability beside a second model's atypical probability (its output `column`)."""

    def __init__(self, detector: Backend, subtype: Backend, column: int = 1):
        self.detector, self.subtype, self.column = detector, subtype, column
        self.name = f"{detector.name}+subtype"

    def predict(self, patches: np.ndarray) -> np.ndarray:
        det = self.detector.predict(patches)[:, :1]
        return np.concatenate([det, self.subtype.predict(patches)[:, self.column:self.column + 1]], axis=1)


DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))  # rotations by k*90 degrees, then a mirror


def dihedral_view(patches: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(patches, k, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if flip else out)


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
        return np.mean([self.inner.predict(dihedral_view(patches, k, f)) for k, f in self.views], axis=0).astype(np.float32)


def make_backend(kind: str, onnx_path: Path, threads: int = 0) -> Backend:
    if kind in ("onnxruntime", "ort", "auto"):
        return OnnxRuntimeBackend(onnx_path, threads)
    raise ValueError(f"unknown backend {kind!r} (available: onnxruntime)")
