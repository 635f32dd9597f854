"""Inference backends: a patch batch in, mitosis probabilities out.

Backends take uint8 (N, P, P, 3) patches, as cut from the slide; the model
graph holds its own normalisation. Later backends (TensorRT, PyTorch) follow
the same two-method interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str

    def predict(self, patches: np.ndarray) -> np.ndarray:
        """(N, P, P, 3) uint8 -> (N,) float32 probabilities."""


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

    def predict(self, patches: np.ndarray) -> np.ndarray:
        if len(patches) == 0:
            return np.zeros(0, np.float32)
        out = self.session.run(None, {self.input_name: to_nchw(patches)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


def make_backend(kind: str, onnx_path: Path, threads: int = 0) -> Backend:
    if kind in ("onnxruntime", "ort", "auto"):
        return OnnxRuntimeBackend(onnx_path, threads)
    raise ValueError(f"unknown backend {kind!r} (available: onnxruntime)")
