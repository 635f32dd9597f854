"""TensorRT: an engine per model, GPU, TensorRT version and precision, built once and cached.

Written to TensorRT's documented Python API (10 and 11). TensorRT cannot be
installed on the machines this project is built on (its PyPI packages fetch
the real wheels from NVIDIA's index), so what runs here is everything around
the library: the cache key and its invalidation, the choice of ONNX graph and
builder flags per version and precision, and the I/O binding against a fake
engine (tests/test_backends.py). Device memory comes from PyTorch's CUDA
allocator, which every GPU node that trains these models has.

Precision by version (`precision_plan`): TensorRT 10 builds FP16 from the FP32
graph with the FP16 builder flag; TensorRT 11 removed the flag (networks are
strongly typed), so FP16 is built from the FP16 ONNX graph of the export. INT8
is explicit quantisation in both: the QDQ graph of the export.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mitoqp.io_utils import atomic_path
from mitoqp.runtime.nchw import to_nchw

MAX_BATCH = 256


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def precision_plan(trt_version: str, precision: str) -> tuple[str, list[str], bool]:
    """(which ONNX graph to parse: its precision, builder flags, strongly typed network?)."""
    major = trt_major(trt_version)
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"TensorRT precision is fp32, fp16 or int8, not {precision!r}")
    if major >= 11:  # strongly typed: the graph's own types decide
        return precision, [], True
    if major == 10:
        return {"fp32": ("fp32", [], False), "fp16": ("fp32", ["FP16"], False),
                "int8": ("int8", ["INT8", "FP16"], False)}[precision]  # FP16 for the layers left unquantised
    raise ValueError(f"TensorRT {trt_version} is too old: mitoqp needs TensorRT 10 or 11")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on: change any one and the cached engine is rebuilt."""

    model_sha256: str
    gpu: str
    compute_capability: str
    trt_version: str
    precision: str
    max_batch: int = MAX_BATCH

    def filename(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.model_sha256[:12]}-{self.precision}-{digest}.engine"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MITOQP_ENGINE_CACHE", Path.home() / ".cache" / "mitoqp" / "engines"))


class EngineCache:
    """Serialized engines with a JSON sidecar of their key and hash; anything that does not match is rebuilt."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def path(self, key: EngineKey) -> Path:
        return self.root / key.filename()

    def load(self, key: EngineKey, deserialize: Callable[[bytes], object]) -> object | None:
        path = self.path(key)
        meta_path = path.with_suffix(".json")
        if not path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            blob = path.read_bytes()
            if meta.get("key") != asdict(key):
                raise ValueError("it was built for another model, GPU, TensorRT or precision")
            if meta.get("sha256") != hashlib.sha256(blob).hexdigest():
                raise ValueError("the file is damaged (its sha256 differs)")
            try:
                engine = deserialize(blob)
            except Exception as exc:  # TensorRT raises its own types on a foreign or corrupt plan
                raise ValueError(f"TensorRT could not deserialize it ({exc})") from None
            if engine is None:
                raise ValueError("TensorRT could not deserialize it")
            return engine
        except (OSError, ValueError) as exc:
            warnings.warn(f"rebuilding the TensorRT engine {path.name}: {exc}", stacklevel=2)
            return None

    def store(self, key: EngineKey, blob: bytes) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"key": asdict(key), "sha256": hashlib.sha256(blob).hexdigest()}, indent=1))
        return path

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes], deserialize: Callable[[bytes], object]) -> object:
        engine = self.load(key, deserialize)
        if engine is None:
            self.store(key, build())
            engine = self.load(key, deserialize)
            if engine is None:
                raise ValueError(f"the TensorRT engine just built for {key.model_sha256[:12]} does not load")
        return engine


def build_engine(trt, onnx_path: Path, patch: int, flags: list[str], strongly_typed: bool,
                 timing_cache: Path, max_batch: int = MAX_BATCH) -> bytes:
    """ONNX -> serialized engine with a dynamic-batch optimisation profile and a persistent timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    net_flags = 0
    if strongly_typed:
        net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, 3, patch, patch), (max_batch, 3, patch, patch), (max_batch, 3, patch, patch))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ValueError(f"TensorRT could not build an engine from {onnx_path.name}")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(timing_cache) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(blob)


class TorchCudaBuffers:
    """Device memory, copies and the stream, from PyTorch's CUDA allocator."""

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    def upload(self, host: np.ndarray):
        return self.torch.from_numpy(host).pin_memory().to("cuda", non_blocking=True)

    def empty(self, shape: tuple[int, ...]):
        return self.torch.empty(shape, dtype=self.torch.float32, device="cuda")

    @staticmethod
    def address(buf) -> int:
        return int(buf.data_ptr())

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def download(self, buf) -> np.ndarray:
        self.stream.synchronize()
        return buf.cpu().numpy()


class TensorRTBackend:
    """Runs a deserialized engine: binds the input and output by tensor name for each batch."""

    def __init__(self, engine, buffers, input_mode, name: str = "tensorrt", max_batch: int = MAX_BATCH):
        self.engine, self.buffers, self.name, self.max_batch = engine, buffers, name, max_batch
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == input_mode]
        outputs = [n for n in names if engine.get_tensor_mode(n) != input_mode]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"a mitoqp engine has one input and one output, this one has {inputs} and {outputs}")
        self.input, self.output = inputs[0], outputs[0]

    def predict(self, patches: np.ndarray) -> np.ndarray:
        parts = [self._run(to_nchw(patches[i:i + self.max_batch])) for i in range(0, len(patches), self.max_batch)]
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        device_in = self.buffers.upload(x)
        self.context.set_input_shape(self.input, tuple(x.shape))
        self.context.set_tensor_address(self.input, self.buffers.address(device_in))
        shape = tuple(self.context.get_tensor_shape(self.output))
        device_out = self.buffers.empty(shape)
        self.context.set_tensor_address(self.output, self.buffers.address(device_out))
        if not self.context.execute_async_v3(self.buffers.stream_handle):
            raise RuntimeError("TensorRT failed to run the engine")
        out = np.asarray(self.buffers.download(device_out), np.float32)
        return out.reshape(len(x), -1) if out.ndim <= 2 else out


def gpu_identity() -> tuple[str, str]:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def load_tensorrt(folder: Path, onnx_file: str, precision: str, patch: int, cache: EngineCache | None = None):
    """The TensorRT backend of one ONNX file of a model folder (its engine built on first use)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ValueError("the tensorrt backend needs TensorRT: pip install tensorrt (NVIDIA GPU, Linux or Windows)") from None
    try:
        import torch
    except ImportError:
        raise ValueError("the tensorrt backend takes its GPU memory from PyTorch: pip install torch (a CUDA build)") from None
    if not torch.cuda.is_available():
        raise ValueError("the tensorrt backend needs an NVIDIA GPU, and none is visible")
    from mitoqp.runtime.backend import variant_name
    from mitoqp.runtime.model import sha256_file

    graph_precision, flags, strongly_typed = precision_plan(trt.__version__, precision)
    onnx_path = folder / variant_name(onnx_file, graph_precision)
    if not onnx_path.exists():
        raise ValueError(f"TensorRT {trt.__version__} builds {precision} from {onnx_path.name}, which {folder} lacks: "
                         f"mitoqp export -o {folder} --precision {graph_precision}")
    gpu, cc = gpu_identity()
    key = EngineKey(sha256_file(onnx_path), gpu, cc, trt.__version__, precision)
    cache = cache or EngineCache()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = cache.get_or_build(
        key, lambda: build_engine(trt, onnx_path, patch, flags, strongly_typed, cache.root / "timing.cache"),
        runtime.deserialize_cuda_engine)
    return TensorRTBackend(engine, TorchCudaBuffers(), trt.TensorIOMode.INPUT, f"tensorrt-{precision}")
