"""Backends: the choice among them, PyTorch against ONNX Runtime, precision variants, and TensorRT's cache and binding."""

import ctypes
import importlib.util
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from mitoqp.runtime.backend import resolve_backend
from mitoqp.runtime.model import load_model
from mitoqp.runtime.tensorrt_backend import EngineCache, EngineKey, TensorRTBackend, precision_plan

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def patches(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_auto_takes_onnxruntime_without_tensorrt_and_names_it():
    if HAS_TRT:
        pytest.skip("TensorRT is installed here")
    assert resolve_backend("auto") == "onnxruntime"
    assert resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="unknown backend 'trt'"):
        resolve_backend("trt")


def test_auto_takes_torch_on_a_gpu_only_where_onnxruntime_has_no_cuda_and_the_folder_has_its_weights(monkeypatch):
    if HAS_TRT:
        pytest.skip("TensorRT is installed here")
    import mitoqp.runtime.backend as backend
    import mitoqp.runtime.onnxruntime_backend as ort_backend

    monkeypatch.setattr(backend, "gpu_visible", lambda: True)
    monkeypatch.setattr(ort_backend, "available_devices", lambda: ["cpu"])
    assert resolve_backend("auto", torch_weights=True) == "torch"
    assert resolve_backend("auto", torch_weights=True, precision="fp16") == "torch"
    assert resolve_backend("auto", torch_weights=True, precision="int8") == "onnxruntime"  # torch runs no INT8
    assert resolve_backend("auto", torch_weights=False) == "onnxruntime"  # a folder of ONNX files alone
    assert resolve_backend("onnxruntime", torch_weights=True) == "onnxruntime"  # asked for by name: kept
    monkeypatch.setattr(ort_backend, "available_devices", lambda: ["cuda", "cpu"])
    assert resolve_backend("auto", torch_weights=True) == "onnxruntime"  # its own CUDA build comes first
    monkeypatch.setattr(ort_backend, "available_devices", lambda: ["cpu"])
    monkeypatch.setattr(backend, "gpu_visible", lambda: False)
    assert resolve_backend("auto", torch_weights=True) == "onnxruntime"


def test_no_nvidia_driver_means_no_gpu_without_asking_pytorch(monkeypatch):
    import mitoqp.runtime.backend as backend

    monkeypatch.setattr(backend, "nvidia_driver_present", lambda: False)
    assert backend.gpu_visible() is False


def test_missing_backend_is_a_one_line_error_naming_what_to_install(tmp_path, tiny_model_dir):
    if HAS_TRT:
        pytest.skip("TensorRT is installed here")
    from PIL import Image

    Image.fromarray(patches(1, 64)[0]).save(tmp_path / "field.png")
    r = subprocess.run([sys.executable, "-m", "mitoqp.cli", "run", str(tmp_path / "field.png"), "-o", str(tmp_path / "o"),
                        "--model", str(tiny_model_dir), "--backend", "tensorrt", "--mpp", "0.25"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "pip install tensorrt" in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_subtype_model_dir"])
def test_torch_backend_gives_onnxruntimes_outputs(fixture, request):
    pytest.importorskip("torch")
    folder = request.getfixturevalue(fixture)
    ort, pt = load_model(folder, backend="onnxruntime"), load_model(folder, backend="torch")
    assert ort.backend.name.startswith("onnxruntime") and pt.backend.name.startswith("torch")
    x = patches(70, ort.patch)
    a, b = ort.backend.predict(x), pt.backend.predict(x)
    assert a.shape == b.shape == (70, 2 if ort.has_subtype else 1)
    assert np.abs(a - b).max() < 1e-5
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        if not __import__("torch").cuda.is_available():
            load_model(folder, backend="torch", precision="fp16")
        else:
            raise ValueError("needs a CUDA GPU")  # a GPU machine runs fp16: nothing to refuse


def test_torch_backend_without_weights_says_to_re_export(tmp_path, tiny_model_dir):
    pytest.importorskip("torch")
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.pt").unlink()
    with pytest.raises(ValueError, match="re-export"):
        load_model(folder, backend="torch")


def test_precision_variants_are_checked_and_kept_only_when_decisions_match(tmp_path, tiny_subtype_model_dir, monkeypatch):
    from mitoqp.export import precision as prec
    from mitoqp.export.onnx_export import main_export
    from mitoqp.runtime.cpu_features import int8_exact_on_cpu

    folder = tmp_path / "m"
    shutil.copytree(tiny_subtype_model_dir, folder)
    main_export([], folder, None, None, precisions=["fp16", "int8"])
    cfg = json.loads((folder / "model.json").read_text())
    for p in ("fp16", "int8"):
        entry = cfg["precisions"][p]
        assert set(entry["files"]) == {"model.onnx"}
        for name, r in entry["files"].items():
            assert r["patches"] == 32 and r["decisions"] == 64  # mitosis and atypical decisions
            assert r["max_abs_diff"] >= 0
            assert (folder / r["file"]).exists() == r["kept"] == (r["decisions_differ"] == 0 and entry["kept"])
        if entry["kept"]:
            fp32, variant = load_model(folder), load_model(folder, backend="onnxruntime", precision=p)
            assert variant.backend.name.endswith(f"-{p}+subtype") or p in variant.backend.name
            x = patches(16, fp32.patch)
            assert np.abs(fp32.backend.predict(x) - variant.backend.predict(x)).max() < 0.1
        else:
            with pytest.raises(ValueError, match="decisions differ|failed its check"):
                load_model(folder, precision=p)
    # a variant whose decisions differ is removed, and so is the rest of that precision
    real_compare = prec.compare
    monkeypatch.setattr(prec, "compare", lambda a, b, x, d: {**real_compare(a, b, x, d), "decisions_differ": 1})
    out = prec.add_precisions(folder, cfg, ["fp16"], patches(8, 32))
    assert out["fp16"]["kept"] is False and not (folder / "model.fp16.onnx").exists()
    assert out["fp16"]["checked_on"]["int8_exact_kernels"] == int8_exact_on_cpu()  # where the check ran
    assert "1 of 8 decisions differ" in out["fp16"]["files"]["model.onnx"]["why_not"]


def test_a_precision_the_folder_lacks_says_how_to_make_it(tiny_model_dir):
    with pytest.raises(ValueError, match="--precision int8"):
        load_model(tiny_model_dir, backend="onnxruntime", precision="int8")


def test_precision_plan_by_tensorrt_version():
    assert precision_plan("10.9.0", "fp16") == ("fp32", ["FP16"], False)  # the builder flag on the FP32 graph
    assert precision_plan("10.9.0", "int8")[0] == "int8"  # explicit Q/DQ graph
    assert precision_plan("11.0.1", "fp16") == ("fp16", [], True)  # strongly typed: the FP16 graph itself
    assert precision_plan("11.0.1", "int8") == ("int8", [], True)
    with pytest.raises(ValueError, match="too old"):
        precision_plan("8.6.1", "fp32")


KEY = EngineKey("ab" * 32, "NVIDIA H100 80GB HBM3", "9.0", "10.9.0", "fp16")


def test_engine_key_changes_with_every_field():
    names = {KEY.filename()}
    for field, value in [("model_sha256", "cd" * 32), ("gpu", "NVIDIA H200"), ("compute_capability", "8.9"),
                         ("trt_version", "11.0.0"), ("precision", "int8"), ("max_batch", 64)]:
        names.add(EngineKey(**{**KEY.__dict__, field: value}).filename())
    assert len(names) == 7


def test_engine_cache_builds_once_reuses_and_rebuilds_what_is_damaged(tmp_path):
    cache = EngineCache(tmp_path)
    builds = []

    def build():
        builds.append(1)
        return b"ENGINE" + bytes(100)

    def deserialize(blob):
        if not blob.startswith(b"ENGINE"):
            raise RuntimeError("not a plan")
        return ("engine", len(blob))

    assert cache.get_or_build(KEY, build, deserialize) == ("engine", 106) and len(builds) == 1
    assert cache.get_or_build(KEY, build, deserialize) == ("engine", 106) and len(builds) == 1  # reused
    other = EngineKey(**{**KEY.__dict__, "gpu": "NVIDIA H200"})
    cache.get_or_build(other, build, deserialize)
    assert len(builds) == 2  # another GPU: its own engine
    path = cache.path(KEY)
    path.write_bytes(b"ENGINE" + bytes(99) + b"\x01")  # damaged: the hash in the sidecar no longer matches
    with pytest.warns(UserWarning, match="damaged"):
        cache.get_or_build(KEY, build, deserialize)
    assert len(builds) == 3 and path.read_bytes() == b"ENGINE" + bytes(100)
    foreign = b"garbage plan"  # a foreign file with a matching sidecar: TensorRT refuses it, never loaded
    path.write_bytes(foreign)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = __import__("hashlib").sha256(foreign).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="could not deserialize"):
        assert cache.get_or_build(KEY, build, deserialize) == ("engine", 106)
    assert len(builds) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(KEY, deserialize) == ("engine", 106)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="does not load"):
        EngineCache(tmp_path / "x").get_or_build(KEY, lambda: b"bad", deserialize)


class HostBuffers:
    """Host memory standing in for the device: the binding logic sees real addresses."""

    stream_handle = 0

    def upload(self, host):
        return np.array(host, copy=True)

    def empty(self, shape):
        return np.zeros(shape, np.float32)

    @staticmethod
    def address(buf):
        return buf.ctypes.data

    def download(self, buf):
        return buf.copy()


class FakeContext:
    """TensorRT's execution-context API over host memory: output = mean pixel / 255 and its square."""

    def __init__(self, log):
        self.shapes, self.addresses, self.log = {}, {}, log

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        self.log.append(shape[0])
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["patches"][0], 2)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        n, c, h, w = self.shapes["patches"]
        x = np.ctypeslib.as_array(ctypes.cast(self.addresses["patches"], ctypes.POINTER(ctypes.c_float)), (n, c, h, w))
        y = np.ctypeslib.as_array(ctypes.cast(self.addresses["probability"], ctypes.POINTER(ctypes.c_float)), (n, 2))
        m = x.reshape(n, -1).mean(axis=1) / 255
        y[:, 0], y[:, 1] = m, m * m
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self):
        self.log = []

    def get_tensor_name(self, i):
        return ["patches", "probability"][i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "patches" else "OUTPUT"

    def create_execution_context(self):
        return FakeContext(self.log)


def test_tensorrt_binding_by_name_in_batches():
    engine = FakeEngine()
    backend = TensorRTBackend(engine, HostBuffers(), "INPUT", max_batch=16)
    x = patches(40, 12)
    out = backend.predict(x)
    mean = x.reshape(40, -1).mean(axis=1) / 255
    assert out.shape == (40, 2) and np.allclose(out[:, 0], mean, atol=1e-6) and np.allclose(out[:, 1], mean**2, atol=1e-6)
    assert engine.log == [16, 16, 8]
    assert backend.predict(x[:0]).shape[0] == 0


def test_tensorrt_backend_refuses_an_engine_with_other_io():
    engine = FakeEngine()
    engine.get_tensor_mode = lambda name: "INPUT"
    with pytest.raises(ValueError, match="one input and one output"):
        TensorRTBackend(engine, HostBuffers(), "INPUT")


def backend_cases():
    from mitoqp.runtime.cpu_features import int8_exact_on_cpu
    from mitoqp.runtime.model import default_model_dir

    int8 = json.loads((default_model_dir() / "model.json").read_text()).get("precisions", {}).get("int8", {})
    no_vnni = pytest.mark.skip(reason="x86 CPU without VNNI and 8-bit INT8 weights: ONNX Runtime's INT8 kernels "
                                      "saturate here, and the runtime refuses them (test_int8_weights_are_7_bit...)")
    cases = [("onnxruntime", p) for p in ("fp32", "fp16")] + [("torch", "fp32")]
    not_kept = pytest.mark.skip(reason="the bundled folder keeps no INT8 graph: its export check flipped decisions at "
                                       "the folder's threshold (model.json precisions.int8)")
    int8_marks = [] if int8_exact_on_cpu(weight_bits=int(int8.get("weight_bits", 8))) else [no_vnni]
    cases += [pytest.param("onnxruntime", "int8", marks=int8_marks if int8.get("kept") else [not_kept])]
    gpu = pytest.mark.skip(reason="no CUDA GPU here: the GPU backends run only where one is present")
    cases += [pytest.param("torch", "fp16", marks=gpu), pytest.param("tensorrt", "fp16", marks=gpu)]
    return cases


@pytest.mark.parametrize("backend,precision", backend_cases())
def test_every_backend_and_precision_matches_the_pytorch_weights_on_real_validation_patches(backend, precision):
    """The bundled model's weights in PyTorch are the reference; each engine must make the same decisions."""
    torch = pytest.importorskip("torch")
    from conftest import AMIBR, MIDOG_JSON

    if not AMIBR.exists():
        pytest.skip("../shared/data/ami-br is not present")
    from mitoqp.export.onnx_export import check_patches
    from mitoqp.runtime.model import default_model_dir
    from mitoqp.training.model import build_model

    folder = default_model_dir()
    cfg = json.loads((folder / "model.json").read_text())
    if precision != "fp32" and not cfg.get("precisions", {}).get(precision, {}).get("kept"):
        pytest.skip(f"the bundled model has no {precision} variant (model.json says why)")
    x, _ = check_patches(AMIBR, MIDOG_JSON, int(cfg["input_size"]), cfg["candidates"])
    x = x[len(x) // 2:]  # the half the export did not calibrate on
    saved = torch.load(folder / "model.pt", weights_only=True)
    reference = build_model(saved["model"], saved["child_classes"])
    reference.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        want = reference.eval()(torch.from_numpy(x).permute(0, 3, 1, 2).float()).reshape(len(x), -1).numpy()
    model = load_model(folder, backend=backend, precision=precision)
    got = (model.backend.detector if hasattr(model.backend, "detector") else model.backend).predict(x)
    t = model.threshold
    assert ((got[:, 0] >= t) != (want[:, 0] >= t)).sum() == 0
    # the gap a precision may leave: INT8's 7-bit weights moved the default's scores by up to 0.053, where the
    # saturating 8-bit kernels of a CPU without VNNI moved them by 0.42-0.74; in FP32, `mitoqp-v5`'s per-patch
    # standardisation (a division by each patch's own spread) leaves engines up to 1.4e-5 apart (its export parity)
    assert np.abs(got[:, 0] - want[:, 0]).max() < {"fp32": 1e-4, "fp16": 0.05, "int8": 0.1}[precision]


def test_int8_runs_on_the_cpu_only_where_vnni_makes_it_exact(tmp_path):
    from mitoqp.runtime.cpu_features import cpu_flags, int8_exact_on_cpu

    assert int8_exact_on_cpu({"sse2", "avx2", "fma"}, "x86_64") is False  # Zen 3, Haswell: VPMADDUBSW saturates
    assert int8_exact_on_cpu({"sse2", "avx2", "fma"}, "x86_64", weight_bits=7) is True  # 7-bit weights cannot
    assert int8_exact_on_cpu({"avx2", "avx512f", "avx512_vnni"}, "x86_64") is True
    assert int8_exact_on_cpu({"avx2", "avx_vnni"}, "AMD64") is True
    assert int8_exact_on_cpu(set(), "aarch64") is True
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "absent") is None


def test_int8_weights_are_7_bit_and_only_8_bit_ones_are_refused_where_the_cpu_would_saturate(tmp_path, tiny_model_dir,
                                                                                                monkeypatch):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    import mitoqp.runtime.cpu_features as features
    from mitoqp.export.precision import quantize_int8
    from mitoqp.runtime.model import sha256_file

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "model.json").read_text())
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", patches(32, int(cfg["input_size"])))
    graph = onnx.load(str(folder / "model.int8.onnx")).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)  # 7 bits: 2 x 255 x 64 fits in 16
    entry = {"kept": True, "files": {"model.onnx": {"file": "model.int8.onnx", "kept": True,
                                                    "sha256": sha256_file(folder / "model.int8.onnx")}}}

    def write(**extra):
        (folder / "model.json").write_text(json.dumps({**cfg, "precisions": {"int8": {**entry, **extra}}}))

    monkeypatch.setattr(features, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})  # x86 without VNNI
    monkeypatch.setattr(features.platform, "machine", lambda: "x86_64")
    write(weight_bits=7)
    assert load_model(folder, backend="onnxruntime", precision="int8").backend.name.endswith("-int8")
    write()  # a folder exported before 7-bit weights: 8 bits
    with pytest.raises(ValueError, match="needs a CPU with VNNI.*--precision int8"):
        load_model(folder, backend="onnxruntime", precision="int8")
    assert load_model(folder, backend="onnxruntime", precision="fp32").backend is not None
    monkeypatch.setattr(features, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512_vnni"})
    assert load_model(folder, backend="onnxruntime", precision="int8").backend is not None


def test_a_compiled_torch_backend_never_runs_a_batch_of_one(tiny_model_dir):
    """torch.compile specialises a batch of one and compiles again mid-run: such a batch runs as two."""
    pytest.importorskip("torch")
    from mitoqp.runtime.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir / "model.pt", device="cpu", compile_model=False)
    x = patches(3, 32)
    alone = backend.predict(x[:1])
    sizes, inner = [], backend.model
    backend.model = lambda t: (sizes.append(t.shape[0]), inner(t))[1]
    backend.compiled = True  # as torch.compile leaves it; compiling for real takes most of a minute here
    out = backend.predict(x[:1])
    assert sizes == [2] and out.shape == alone.shape == (1, 1)
    np.testing.assert_allclose(out, alone, atol=1e-6)
    assert backend.predict(x).shape == (3, 1) and sizes[-1] == 3
