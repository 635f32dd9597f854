"""Readers of annotated H&E data: fields (image + figure centres) for training and evaluation."""

from mitoqp.datasets.fields import Field, load_rgb
from mitoqp.datasets.amibr import read_amibr, read_atnorm
from mitoqp.datasets.coco import read_coco
from mitoqp.datasets.qupath_points import read_qupath_points

__all__ = ["Field", "load_rgb", "read_amibr", "read_atnorm", "read_coco", "read_qupath_points"]
