"""Shared helpers: real tissue for benchmark inputs, best-of-n timing, peak memory."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_patches(limit: int | None = None) -> list[np.ndarray]:
    """The real AMi-Br patches (128 px, 0.25 um/px), or a clear error without them."""
    paths = sorted(glob.glob(str(SHARED / "ami-br" / "*" / "*.png")))[:limit]
    if not paths:
        raise SystemExit(f"benchmarks need the real patches under {SHARED / 'ami-br'}")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def tissue_image(size: int, seed: int = 0) -> np.ndarray:
    """A (size, size, 3) mosaic of real patches."""
    from mitoqp.synthetic_slide import mosaic_source

    return mosaic_source(real_patches(600), seed)(0, 0, size, size)


def per_patch_ms(backend, patches: np.ndarray, batch: int, reps: int = 3) -> float:
    """A backend's milliseconds per patch over `patches` in batches of `batch`, best of `reps` (one call first)."""
    backend.predict(patches[:batch])
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        for i in range(0, len(patches), batch):
            backend.predict(patches[i:i + batch])
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(patches)


def best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM)."""
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
