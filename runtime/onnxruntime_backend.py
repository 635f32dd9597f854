"""ONNX Runtime: the CPU backend everywhere, and the CUDA one where the onnxruntime-gpu build is installed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mitoqp.runtime.nchw import to_nchw

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def available_devices() -> list[str]:
    """The devices this onnxruntime build can run on, best first."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [d for d in ("cuda", "cpu") if PROVIDERS[d] in have]


class OnnxRuntimeBackend:
    """One ONNX file in an ONNX Runtime session; `device` auto takes CUDA before the CPU."""

    def __init__(self, onnx_path: Path, threads: int = 0, device: str = "cpu"):
        import onnxruntime as ort

        devices = available_devices()
        if device == "auto":
            device = devices[0]
        if device not in devices:
            raise ValueError(f"onnxruntime here has no {device.upper()} provider "
                             f"(pip install onnxruntime-gpu for CUDA); it has: {', '.join(devices)}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # batches vary in size (a window's last one); a memory pattern is cached per input shape, which grew
        # a batch's memory by about 1.5 MB a slide without end (benchmarks/RESULTS.md, "Soak")
        opts.enable_mem_pattern = False
        if device == "cpu" and os.environ.get("MITOQP_ORT_SPIN", "0") != "1":
            # idle pool threads spinning for work take the cores the front end needs beside the model:
            # 1.17x the whole-run throughput on 2 cores (benchmarks/RESULTS.md, "ONNX Runtime threads")
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=[PROVIDERS[device]])
        except Exception as exc:
            raise ValueError(f"cannot load ONNX model {onnx_path}: {exc}".splitlines()[0]) from None
        self.device = device
        self.name = f"onnxruntime-{device}"
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = int(np.prod(self.session.get_outputs()[0].shape[1:] or [1]))

    def predict(self, patches: np.ndarray) -> np.ndarray:
        if len(patches) == 0:
            return np.zeros((0, self.outputs), np.float32)
        out = np.asarray(self.session.run(None, {self.input_name: to_nchw(patches)})[0], dtype=np.float32)
        return out.reshape(len(patches), -1) if out.ndim <= 2 else out  # (N, K), or (N, K, h, w) maps
