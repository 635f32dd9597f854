"""mitoqp.runtime: model loading and inference backends (no PyTorch needed)."""

from mitoqp.runtime.backend import Backend, OnnxRuntimeBackend, make_backend
from mitoqp.runtime.model import Model, default_model_dir, load_model

__all__ = ["Backend", "OnnxRuntimeBackend", "make_backend", "Model", "default_model_dir", "load_model"]
