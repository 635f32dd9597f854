"""A field: one RGB image with the figure centres known on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Field:
    """An annotated image. Coordinates are (x, y) in the image's pixels."""

    name: str
    path: Path
    dataset: str  # MIDOG21, TUPAC16, atnorm-br, ...
    split: str  # train, validation, test, external
    figures: np.ndarray  # (N, 2) mitotic figure centres
    lookalikes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # labelled hard negatives
    mpp: float = 0.25
    atypical: bool = False
    atypical_votes: int = -1  # experts (of 3) who called the figure atypical; -1 where not known
    source: str = ""  # scanner or dataset key (mitoqp.datasets.amibr.SOURCES); "" where not known

    def image(self) -> np.ndarray:
        return load_rgb(self.path)


def load_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8, with a one-line error for anything unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
