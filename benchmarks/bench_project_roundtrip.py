"""A 200-image QuPath project round trip (issue 10's goal): results in, a lab annotation added, re-run, results
replaced and nothing else touched. Real 40x fields (AMi-Br test split) with the bundled default model.

Needs QuPath's classes: PAQUO_QUPATH_DIR=$(python ../shared/qupath/make_qupath_dir.py).

    python benchmarks/bench_project_roundtrip.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED, machine

TOOL = Path(__file__).resolve().parents[1] / "tests" / "qupath" / "project_tool.py"


def describe(project: Path) -> dict:
    r = subprocess.run([sys.executable, str(TOOL), "describe", str(project)], capture_output=True, text=True, check=True)
    return json.loads(next(x for x in r.stdout.splitlines() if x.startswith("PROJECT-JSON ")).removeprefix("PROJECT-JSON "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    from mitoqp.datasets import read_amibr

    fields = [f.path for f in read_amibr(SHARED / "ami-br", None, {"test"})][: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        listing = tmp / "fields.txt"
        listing.write_text("\n".join(str(p) for p in fields) + "\n")
        project = tmp / "proj" / "project.qpproj"
        cmd = [sys.executable, "-m", "mitoqp.cli", "run", "-q", str(listing), "-o", str(tmp / "out"), "--mpp", "0.25",
               "--project", str(project)]
        t = time.perf_counter()
        first_run = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        t_first = time.perf_counter() - t
        assert first_run.returncode == 0, first_run.stderr[-2000:]
        first = describe(project)
        subprocess.run([sys.executable, str(TOOL), "annotate", str(project)], check=True, capture_output=True)
        t = time.perf_counter()
        again = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env=os.environ)
        t_again = time.perf_counter() - t
        assert again.returncode == 0, again.stderr[-2000:]
        second = describe(project)
    same = all(second["entries"][k]["detections"] == v["detections"] and second["entries"][k]["tiles"] == v["tiles"]
               for k, v in first["entries"].items())
    kept = all(e["annotations"].get("Tumor") == 1 for e in second["entries"].values())
    figures = sum(n for e in first["entries"].values() for c, n in e["detections"].items() if c.startswith("Mitotic figure"))
    print(machine())
    print("| images | entries after run / re-run | figures | run s | re-run s | replaced, not doubled | lab annotations kept |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(fields)} | {len(first['entries'])} / {len(second['entries'])} | {figures} | {t_first:.1f} | "
          f"{t_again:.1f} | {same} | {kept} |")


if __name__ == "__main__":
    main()
