"""PyTorch: the exported weights (`model.pt` beside `model.onnx`) in the training code's own module.

On CUDA it runs the way a GPU node wants: half precision, channels-last,
pinned host buffers with asynchronous copies, and optionally `torch.compile`
(on by default on CUDA: first batches are slow while it compiles). On the CPU
it runs FP32 and is the fallback when ONNX Runtime is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def torch_file(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".pt")


class TorchBackend:
    def __init__(self, weights: Path, device: str = "auto", precision: str = "fp32", compile_model: bool | None = None,
                 threads: int = 0):
        try:
            import torch
        except ImportError:
            raise ValueError("the torch backend needs PyTorch: pip install torch") from None
        from mitoqp.training.dense_models import build_dense
        from mitoqp.training.model import build_model

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("the torch backend was asked for CUDA, but PyTorch here sees no GPU")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"the torch backend runs fp32 or fp16 (fp16 on CUDA only), not {precision}")
        if precision == "fp16" and device != "cuda":
            raise ValueError("fp16 on the torch backend needs a CUDA GPU; on the CPU use fp32")
        if not weights.exists():
            raise ValueError(f"{weights} is missing: the torch backend needs the weights that `mitoqp export` writes "
                             "beside the ONNX file (re-export the checkpoint)")
        try:
            saved = torch.load(weights, map_location="cpu", weights_only=True)
            if saved.get("kind") == "dense":
                model = build_dense(saved.get("method"), saved["model"])
            else:
                model = build_model(saved["model"], int(saved["child_classes"]))
            model.load_state_dict(saved["state_dict"])
        except Exception as exc:
            raise ValueError(f"cannot load torch weights {weights}: {str(exc).splitlines()[0]}") from None
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        self.torch, self.device = torch, torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        model = model.eval().to(self.device, self.dtype)
        if device == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.compiled = bool(compile_model if compile_model is not None else device == "cuda")
        if self.compiled:
            model = torch.compile(model, dynamic=True)
        self.model = model
        self.name = f"torch-{device}" + ("-fp16" if precision == "fp16" else "")

    def predict(self, patches: np.ndarray) -> np.ndarray:
        torch = self.torch
        n = len(patches)
        if self.compiled and n == 1:
            # torch.compile specialises a batch of one and compiles again, 12 s on the CPU here, in the middle
            # of a run (a subtype model is often sent a single detection): run it as two
            patches = np.concatenate([patches, patches])
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(patches))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            # NHWC uint8 -> NCHW float: a permuted view is channels-last memory, no copy
            x = x.permute(0, 3, 1, 2).to(self.dtype)
            out = self.model(x).float()
            out = out.reshape(len(patches), -1) if out.ndim <= 2 else out  # (N, K), or (N, K, h, w) maps
            return out[:n].cpu().numpy()
