"""FP16 and INT8 variants of an exported model, each checked against its FP32 graph.

FP16 is the FP32 graph converted by onnxconverter-common (inputs and outputs
stay float32); it is what a GPU runs fast and what TensorRT 11, whose networks
are strongly typed, needs for FP16. INT8 is ONNX Runtime's static
quantisation in QDQ form (explicit quantise/dequantise nodes: what ONNX
Runtime runs on the CPU and TensorRT 10 and 11 take as explicit INT8),
calibrated on real validation patches, with 7-bit weights (INT8_WEIGHT_BITS): a
uint8 activation times a weight in [-64, 64], summed in pairs, stays inside the
16-bit range that ONNX Runtime's kernels use on x86 CPUs without VNNI, so the
same graph is exact on every CPU (runtime/cpu_features.py). A variant is kept only when no mitosis
decision at the model's threshold differs from FP32 on the check patches;
otherwise its file is removed and model.json says why.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from mitoqp.io_utils import atomic_path
from mitoqp.runtime.nchw import to_nchw
from mitoqp.runtime.backend import variant_name
from mitoqp.runtime.model import sha256_file, subtype_members
from mitoqp.runtime.onnxruntime_backend import OnnxRuntimeBackend

PRECISIONS = ("fp32", "fp16", "int8")
INT8_WEIGHT_BITS = 7  # 2 x 255 x 64 = 32,640 <= 32,767: no 16-bit saturation on CPUs without VNNI


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # it warns for each weight below FP16's range, which it clamps
        warnings.simplefilter("ignore")
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, batch: int = 64) -> None:
    """Static INT8 (per-channel 7-bit weights, uint8 activations) calibrated on `calibration` (N, P, P, 3) uint8."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.batches = iter([{name: to_nchw(calibration[i:i + batch])} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self.batches, None)

    name = OnnxRuntimeBackend(src).input_name
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        with atomic_path(dst) as target:
            # percentile ranges (99.999%): on the default model the largest score gap was 0.019 against 0.032 with
            # min-max ranges, on 256 validation patches. reduce_range: 7-bit weights (INT8_WEIGHT_BITS); with 8 bits
            # the v3 detector flipped 7 of 256 decisions on an AMD Zen 3 (no VNNI), with 7 bits none
            quantize_static(str(pre), str(target), Reader(name), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile, reduce_range=INT8_WEIGHT_BITS == 7)


def compare(fp32: Path, variant: Path, patches: np.ndarray, decisions: list[tuple[int, float]]) -> dict:
    """Largest output gap, and the decisions (output column, threshold) that flip, on the CPU."""
    a = OnnxRuntimeBackend(fp32).predict(patches)
    b = OnnxRuntimeBackend(variant).predict(patches)
    return {
        "patches": int(len(patches)),
        "max_abs_diff": float(np.abs(a - b).max()) if len(patches) else 0.0,
        "decisions_differ": int(sum(((a[:, c] >= t) != (b[:, c] >= t)).sum() for c, t in decisions)),
        "decisions": int(len(patches) * len(decisions)),
    }


def make_variant(folder: Path, onnx_file: str, precision: str, calibration: np.ndarray, check: np.ndarray,
                 decisions: list[tuple[int, float]]) -> dict:
    """Write one file's variant, compare it with FP32, and remove it again if any decision flips."""
    src, dst = folder / onnx_file, folder / variant_name(onnx_file, precision)
    if precision == "fp16":
        convert_fp16(src, dst)
    elif precision == "int8":
        quantize_int8(src, dst, calibration)
    else:
        raise ValueError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    report = {"file": dst.name, **compare(src, dst, check, decisions)}
    report["kept"] = report["decisions_differ"] == 0
    if report["kept"]:
        report["sha256"] = sha256_file(dst)
    else:
        dst.unlink()
        report["why_not"] = f"{report['decisions_differ']} of {report['decisions']} decisions differ from FP32"
    return report


def checked_on() -> dict:
    """The CPU a variant's check ran on: INT8 decisions checked on a CPU with VNNI hold only on such CPUs."""
    import platform

    from mitoqp.runtime.cpu_features import int8_exact_on_cpu

    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "int8_exact_kernels": int8_exact_on_cpu()}


def add_precisions(folder: Path, config: dict, precisions: list[str], patches: np.ndarray) -> dict:
    """Variants of every ONNX file of a model folder; half the patches calibrate, the other half check."""
    # each file is checked where its decisions are made: a member at its own threshold, an atypical
    # output (a head in the file, or a joined subtype model) at the atypical threshold
    atypical = float(config.get("atypical_threshold", 0.5))
    head = [(1, atypical)] if "atypical" in config.get("outputs", []) and not config.get("subtype_model") else []
    checks = {m["file"]: [(0, float(m["threshold"]))] + head for m in config.get("members", [])}
    checks = checks or {"model.onnx": [(0, float(config["threshold"]))] + head}
    if config.get("subtype_model"):
        sub = config["subtype_model"]
        for m in subtype_members(sub):  # each member of an averaged subtype model at the ensemble's cut
            checks[m["file"]] = [(int(sub.get("output", 1)), atypical)]
    if config.get("prefilter"):  # a prefilter decides which patches the detector sees, at its own threshold
        checks[config["prefilter"]["file"]] = [(0, float(config["prefilter"]["threshold"]))]
    calibration, check = patches[: len(patches) // 2], patches[len(patches) // 2:]
    out = dict(config.get("precisions", {}))
    for precision in precisions:
        if precision == "fp32":
            continue
        reports = {f: make_variant(folder, f, precision, calibration, check, d) for f, d in checks.items()}
        kept = all(r["kept"] for r in reports.values())
        if not kept:  # one file's variant without the others is no model: drop them all
            for r in reports.values():
                if r["kept"]:
                    (folder / r["file"]).unlink()
                    r.update(kept=False, why_not="another file of the model failed its check")
                    r.pop("sha256", None)
        out[precision] = {"kept": kept, "files": reports, "checked_on": checked_on()}
        if precision == "int8":
            out[precision]["weight_bits"] = INT8_WEIGHT_BITS
    return out
