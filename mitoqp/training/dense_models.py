"""The network of each dense method, by the `method` name a checkpoint carries."""

from __future__ import annotations

from torch import nn

ARCHITECTURES = {"uts": "WeakFCN (UTS)", "rdlm": "GLB-FPN (RDLM)", "minugan": "pix2pixHD generator (MiNuGAN)"}


def build_dense(method: str | None, cfg: dict) -> nn.Module:
    """The untrained network of a dense `method` ("uts" for checkpoints from before methods were named)."""
    method = method or "uts"
    if method == "uts":
        from mitoqp.training.fcn import build_fcn
        return build_fcn(cfg)
    if method == "rdlm":
        from mitoqp.training.fpn import build_fpn
        return build_fpn(cfg)
    if method == "minugan":
        from mitoqp.training.minugan_net import build_generator
        return build_generator(cfg)
    raise ValueError(f"unknown dense method {method!r} (known: {', '.join(ARCHITECTURES)})")
