"""Soak: a batch of generated slides run again and again under random faults until it is done.

    python benchmarks/soak.py [--slides 200] [--megapixels 1] [--p-kill 0.003] [--p-fail 0.003] [--executor local|ray]

Every attempt is a whole `mitoqp run` over the batch (the same command a
cron job or an operator would repeat) with faults injected at random
(`MITOQP_CHAOS`, mitoqp/faults.py): at every checkpoint (slide read, model
done, between output files, before each rename, the summary) the process is
killed with SIGKILL with probability P_KILL, or a full disk (ENOSPC) or an
I/O error (EIO) is raised with probability P_FAIL. A few slides are bad on
purpose (truncated, not an image, a corrupt tile). Attempts with faults go
on until every good slide is done; then a clean attempt. Then every output is
checked: each good slide has all its files, each parses, no temporary file
is left, no slide finished in an earlier attempt was redone, and the bad
slides are reported with one-line errors. Reports done, failed, retried,
lost (must be 0), redone (must be 0), peak memory and throughput over time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from common import machine, real_patches
from mitoqp.synthetic_slide import mosaic_source, write_svs_like

OUTPUTS = (".geojson", ".tissue.png", ".density.geojson", ".tissue.geojson", ".hotspot.geojson", ".overview.png",
           ".result.json")


def make_batch(folder: Path, n: int, megapixels: float, rng: random.Random) -> tuple[list[Path], dict[str, str]]:
    """n slides of real tissue; about 3% of them broken on purpose (their names and how are returned)."""
    patches = real_patches()
    side = max(512, int((megapixels * 1e6) ** 0.5) // 256 * 256)
    paths, bad = [], {}
    for i in range(n):
        path = folder / f"s{i:04d}.svs"
        write_svs_like(path, mosaic_source(patches, seed=i), side, side, 0.25, 256, levels=2, quality=85)
        paths.append(path)
    for k, i in enumerate(rng.sample(range(n), max(1, n // 33))):
        path, kind = paths[i], ("truncated", "not an image", "corrupt tile")[k % 3]
        data = bytearray(path.read_bytes())
        if kind == "truncated":
            path.write_bytes(bytes(data[: len(data) // 3]))
        elif kind == "not an image":
            path.write_bytes(b"%PDF-1.4 this is not a slide\n" * 20)
        else:  # scribble over the middle of the file: tile data in the middle of level 0
            mid = len(data) // 2
            data[mid:mid + 4000] = bytes(rng.randrange(256) for _ in range(4000))
            path.write_bytes(bytes(data))
        bad[path.stem] = kind
    return paths, bad


def finished(out: Path) -> dict[str, tuple[int, int]]:
    """Slides with a complete record, with the identity of that record file (inode, mtime)."""
    done = {}
    for p in out.glob("*.result.json"):
        st = p.stat()
        done[p.name[: -len(".result.json")]] = (st.st_ino, st.st_mtime_ns)
    return done


def check_outputs(out: Path, name: str) -> str | None:
    """Why a finished slide's outputs are not whole, or None."""
    for suffix in OUTPUTS:
        p = out / f"{name}{suffix}"
        if not p.exists():
            return f"{p.name} missing"
        try:
            if suffix.endswith(".png"):
                Image.open(p).verify()
            else:
                json.loads(p.read_text())
        except Exception as exc:  # noqa: BLE001 - any parse failure is a half-written file
            return f"{p.name} unreadable: {exc}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--megapixels", type=float, default=1.0)
    ap.add_argument("--p-kill", type=float, default=0.003, help="chance of SIGKILL at each checkpoint")
    ap.add_argument("--p-fail", type=float, default=0.003, help="chance of ENOSPC or EIO at each checkpoint")
    ap.add_argument("--max-attempts", type=int, default=80, help="attempts with faults, at most")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bucket-s", type=float, default=15.0, help="seconds per line of throughput over time")
    ap.add_argument("--keep", action="store_true", help="keep the generated slides and outputs (printed folder)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="mitoqp-soak-"))
    t = time.perf_counter()
    (tmp / "slides").mkdir()
    paths, bad = make_batch(tmp / "slides", args.slides, args.megapixels, rng)
    print(f"machine: {machine()}")
    print(f"{len(paths)} slides of {args.megapixels:g} MP generated in {time.perf_counter() - t:.0f} s, "
          f"{len(bad)} broken on purpose")
    out = tmp / "out"
    cmd = [sys.executable, "-m", "mitoqp.cli", "run", "-q", str(tmp / "slides"), "-o", str(out),
           "--executor", args.executor] + (["--model", args.model] if args.model else [])
    attempts, first_done, redone = [], {}, set()
    start = time.time()
    good = {p.stem for p in paths} - set(bad)
    while True:
        # faults until every good slide is done, then clean attempts (at most 3) until one ends normally
        faulty = not good <= set(first_done) and len(attempts) < args.max_attempts
        chaos = f"{args.p_kill}:{args.p_fail}:{args.seed * 1000 + len(attempts)}"
        env = {"MITOQP_CHAOS": chaos} if faulty else {}
        before = finished(out) if out.exists() else {}
        t = time.perf_counter()
        r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        after = finished(out) if out.exists() else {}
        for name, ident in after.items():
            first_done.setdefault(name, ident[1] / 1e9 - start)  # when its record was written
            if name in before and before[name] != ident:
                redone.add(name)  # a finished slide was analysed again
        # slides cut short by this attempt's faults, left for the next: the one in progress when the process
        # was killed (slides run in input order, so a kill that leaves good slides undone came during one),
        # and each slide an injected disk error failed (its one-line error on the console)
        cut = 1 if r.returncode == -9 and not good <= set(after) else 0
        cut += sum(1 for line in r.stderr.splitlines() if line.startswith("error:") and "(injected at" in line
                   and not any(f in line for f in ("summary.", "report.html", "at summary")))
        how = ("killed" if r.returncode == -9 else f"exit {r.returncode}")
        attempts.append((faulty, r.returncode, len(after) - len(before), time.perf_counter() - t, cut))
        print(f"attempt {len(attempts):2d}: {'faults' if faulty else 'clean '} {how:8s} {len(after) - len(before):3d} "
              f"slides finished, {cut} cut short, {attempts[-1][3]:.0f} s", flush=True)
        if not faulty and (r.returncode in (0, 1) or sum(1 for a in attempts if not a[0]) >= 3):
            break
    wall = time.time() - start
    summary = json.loads((out / "summary.json").read_text())
    rows = {Path(row["slide"]).stem: row for row in summary["slides"]}
    done = {n for n, row in rows.items() if row["status"] in ("ok", "skipped")}
    failed = {n for n, row in rows.items() if row["status"] == "error"}
    broken = {n: why for n in done if (why := check_outputs(out, n))}
    lost = {p.stem for p in paths} - done - failed
    wrongly_failed = failed - set(bad)
    retried = sum(a[4] for a in attempts)
    temporaries = [p.name for p in out.rglob("*.tmp")]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nslides: {len(paths)}, done {len(done)}, failed {len(failed)} (broken on purpose {len(bad)}; "
          f"failed though good: {len(wrongly_failed)}), lost {len(lost) + len(broken)}, redone {len(redone)}, "
          f"half-written or temporary files {len(broken) + len(temporaries)}")
    print(f"attempts: {len(attempts)} ({sum(1 for a in attempts if a[0])} with faults: P(kill) {args.p_kill}, "
          f"P(ENOSPC or EIO) {args.p_fail} at each of about 15 checkpoints a slide); slides cut short by a fault and "
          f"retried by a later attempt: {retried}")
    print(f"peak memory of one run: {peak_mb:.0f} MB; wall {wall:.0f} s, {60 * len(done) / wall:.1f} slides/min overall")
    for n in sorted(failed):
        print(f"  failed {n} ({bad.get(n, 'good')}): {rows[n]['error']}")
    for n in sorted(set(bad) - failed):
        print(f"  analysed though broken on purpose: {n} ({bad[n]}: the bytes hit decode without an error)")
    for n, why in broken.items():
        print(f"  BROKEN {n}: {why}")
    print(f"throughput over time (slides finished per {args.bucket_s:g} s):")
    times = sorted(first_done.values())
    for b in range(int(wall // args.bucket_s) + 1):
        k = sum(1 for x in times if b * args.bucket_s <= x < (b + 1) * args.bucket_s)
        print(f"  {b * args.bucket_s:5.0f}-{(b + 1) * args.bucket_s:.0f} s: {k}")
    if args.keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp)
    if lost or broken or redone or temporaries or wrongly_failed:
        sys.exit("soak FAILED: " + json.dumps({"lost": sorted(lost), "broken": broken, "redone": sorted(redone),
                                               "temporaries": temporaries, "failed though good": sorted(wrongly_failed)}))


if __name__ == "__main__":
    main()
