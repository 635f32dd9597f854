"""Whether this CPU runs ONNX Runtime's INT8 convolutions exactly.

Our INT8 graphs multiply uint8 activations by int8 weights (U8S8). On x86 CPUs
without VNNI, ONNX Runtime does that with VPMADDUBSW, whose 16-bit sums saturate:
on such a CPU (AMD Zen 3, measured 2026-12-01) the bundled INT8 detector moved a
score by 0.42 and flipped 2 of 256 validation decisions that a VNNI CPU (where the
export checked it) got right. So 8-bit INT8 weights run on the CPU only where VNNI is
present. Weights of 7 bits cannot saturate (2 x 255 x 64 = 32,640 <= 32,767): the
export writes those (model.json: precisions.int8.weight_bits = 7), and the runtime
runs them on every CPU.
"""

from __future__ import annotations

import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def int8_exact_on_cpu(flags: set[str] | None = None, machine: str | None = None, weight_bits: int = 8) -> bool:
    """False only where it is known that ONNX Runtime's U8S8 kernels saturate: x86 without VNNI, 8-bit weights."""
    if weight_bits <= 7:
        return True
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True  # ARM and others use kernels without the 16-bit saturation
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return True  # cannot tell (not Linux): the export's own check is all there is
    return any(f in flags for f in VNNI_FLAGS)
