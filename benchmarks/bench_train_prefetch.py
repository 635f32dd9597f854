"""Seconds per training epoch with `train.prefetch` on and off, the default's recipe, in the same run.

    python benchmarks/bench_train_prefetch.py [--epochs 3] [--repeat 2] [--threads 2] [--device cpu]

Prefetching augments the next batches on a worker thread while the current one trains; the draws and the
weights stay the same (tests/test_training.py). The runs alternate (off, on, off, on, ...) so that a change
in the machine's load falls on both; each run's first epoch (warm-up) is left out, and the rest include
the epoch's validation, which prefetching does not touch. Prints each run and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["--set", "model.se=true", "--set", 'train.select="mean_recall"', "--set", 'model.input_norm="patch"',
          "--set", "train.scale_jitter=0.15"]  # mitoqp-v6's, as benchmarks/gpu_train.sh


def epoch_seconds(prefetch: bool, args: argparse.Namespace, out: Path) -> list[float]:
    cmd = [sys.executable, "-m", "mitoqp.cli", "train", str(ROOT / "configs" / "baseline.toml"), "-o", str(out), *RECIPE,
           "--set", f"train.epochs={args.epochs}", "--set", f"train.threads={args.threads}",
           "--set", f'train.device="{args.device}"', "--set", f"train.prefetch={str(prefetch).lower()}"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(machine())
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for prefetch in (False, True):
                s = epoch_seconds(prefetch, args, Path(tmp) / f"{prefetch}_{i}")
                seconds[prefetch] += s
                print(f"run {i + 1}, prefetch {'on ' if prefetch else 'off'}: " + ", ".join(f"{x:.1f}" for x in s) + " s")
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"| train.prefetch | seconds per epoch (median of {len(seconds[True])}) | vs off |\n|---|---|---|\n"
          f"| off | {off:.1f} | 1.00x |\n| on | {on:.1f} | {off / on:.2f}x |")


if __name__ == "__main__":
    main()
