"""A subset of AMi-Br in its own layout, small enough to send to a lent GPU machine (64 MiB with the tree).

    python benchmarks/pack_fields.py .dev-train/fields --train 600

Copies AMI-BR.csv's rows of every validation field and of `--train` training fields (drawn with a fixed
seed, both datasets), their PNGs, and the MIDOG 2021 labels. For timing training there (gpu_train.sh);
the data itself stays outside the project: write the pack to an ignored folder.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

from mitoqp.datasets.amibr import split_of

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=600, help="training fields to copy (all validation fields go)")
    ap.add_argument("--amibr", type=Path, default=SHARED / "ami-br")
    ap.add_argument("--midog-json", type=Path, default=SHARED / "annotations" / "midog2021.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with (args.amibr / "AMI-BR.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    split = [split_of(r["dataset"], r["slide"]) for r in rows]
    train = [r for r, s in zip(rows, split) if s == "train"]
    keep = [r for r, s in zip(rows, split) if s == "validation"] + random.Random(args.seed).sample(train, min(args.train, len(train)))
    for sub in ("Normal", "Atypical"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    size = 0
    for r in keep:
        name = Path("Atypical" if r["majority_atypical"].strip() == "True" else "Normal") / f"{r['dataset']}_{r['uid']}.png"
        shutil.copyfile(args.amibr / name, args.out / name)
        size += (args.out / name).stat().st_size
    with (args.out / "AMI-BR.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(keep)
    shutil.copyfile(args.midog_json, args.out / "midog2021.json")
    print(f"{args.out}: {len(keep) - min(args.train, len(train))} validation and {min(args.train, len(train))} training "
          f"fields, {size / 2**20:.1f} MiB of PNG")


if __name__ == "__main__":
    main()
