"""The one input layout every backend feeds its model."""

from __future__ import annotations

import numpy as np


def to_nchw(patches: np.ndarray) -> np.ndarray:
    """(N, P, P, 3) uint8 patches as cut from a slide -> (N, 3, P, P) float32, 0-255 (normalisation is in the graph)."""
    return np.ascontiguousarray(patches.transpose(0, 3, 1, 2), dtype=np.float32)
