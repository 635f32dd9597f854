"""mitoqp.runtime: model loading and inference backends (no PyTorch needed)."""

from mitoqp.runtime.backend import Backend, make_backend, resolve_backend
from mitoqp.runtime.model import Model, default_model_dir, load_model
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend

__all__ = ["Backend", "OnnxRuntimeBackend", "make_backend", "resolve_backend", "Model", "default_model_dir", "load_model"]
