"""What every dense recipe (UTS, RDLM, MiNuGAN) does the same way: its settings, its epoch record, its checkpoint.

Kept apart from the recipes so that each of them says only what is its own
(the network, the loss, the samples).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mitoqp.candidates import CandidateParams
from mitoqp.training.model import count_macs


@dataclass
class DenseSettings:
    """The config's sections and the numbers every dense recipe reads first."""

    train: dict
    model: dict
    dense: dict
    seed: int
    radius_um: float  # a detection matches a figure within this
    min_distance_um: float  # peaks closer than this are one figure


def refuse_gpu(t_cfg: dict) -> None:
    """The dense recipes train on the CPU from scratch: `train.device = "cuda"` and `train.init` are errors, not a
    silent CPU run or a silent fresh start ("auto" is fine)."""
    if str(t_cfg.get("device", "auto")) == "cuda":
        raise ValueError("train.device = \"cuda\" is for the patch recipes; the dense methods (uts, rdlm, minugan) "
                         "train on the CPU")
    if t_cfg.get("init"):
        raise ValueError("train.init (fine-tuning) is for the patch recipes; the dense methods (uts, rdlm, minugan) "
                         "train from scratch")


def start_dense(cfg: dict, run_dir: Path) -> DenseSettings:
    """Reads the shared settings, seeds torch, sets its threads and makes the run folder."""
    t_cfg, d_cfg = cfg.get("train", {}), cfg.get("dense", {})
    seed = int(t_cfg.get("seed", 0))
    refuse_gpu(t_cfg)
    torch.manual_seed(seed)
    torch.set_num_threads(int(t_cfg.get("threads", torch.get_num_threads())))
    run_dir.mkdir(parents=True, exist_ok=True)
    return DenseSettings(t_cfg, cfg.get("model", {}), d_cfg, seed, float(cfg.get("match_radius_um", 7.5)),
                         float(d_cfg.get("min_distance_um", 8.0)))


def record_epoch(metrics: dict, run_dir: Path, model: torch.nn.Module, best: dict, best_state: dict | None
                 ) -> tuple[dict, dict | None]:
    """Appends the epoch's metrics to metrics.jsonl; returns the best so far by mean recall, with its weights."""
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(metrics) + "\n")
    if metrics["mean_recall"] > best["mean_recall"]:
        return metrics, {k: v.clone() for k, v in model.state_dict().items()}
    return best, best_state


def save_dense(model: torch.nn.Module, method: str, stage: str, cfg: dict, metrics: dict, state: dict, path: Path,
               context: int, outputs: list[str] | None = None) -> None:
    """The checkpoint `mitoqp export` turns into a dense model folder."""
    d_cfg = cfg.get("dense", {})
    tile = int(d_cfg.get("tile", 512))
    if tile <= 2 * context:
        raise ValueError(f"dense.tile {tile} must exceed twice the network's context ({context} px)")
    min_distance_um = float(d_cfg.get("min_distance_um", 8.0))
    torch.save({"kind": "dense", "method": method, "stage": stage, "state_dict": state, "config": cfg,
                "threshold": metrics["threshold"], "patch": tile, "val_metrics": metrics,
                "candidates": CandidateParams().to_dict(), "nms_um": min_distance_um, "macs": count_macs(model, tile),
                "outputs": outputs or ["mitosis"],
                "dense": {"output_stride": model.stride, "context_px": context, "min_distance_um": min_distance_um,
                          "peak_floor": float(d_cfg.get("peak_floor", 0.05))}}, path)
