"""The Ray executor on a local 2-CPU Ray: the same outputs as a local run, slide for slide, and a dead worker retried."""

import json
import os
from pathlib import Path

import pytest

from mitoqp.cli import main
from test_faults import outputs, run_cli, slides  # noqa: F401  (the slides fixture)

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_run(slides, tiny_model_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(["run", "-q", *map(str, slides), "-o", str(out), "--model", str(tiny_model_dir)]) == 0
    return out


def test_ray_outputs_equal_a_local_run_slide_for_slide(slides, tiny_model_dir, local_run, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    r = run_cli([*slides, "-o", out, "--model", tiny_model_dir, "--executor", "ray"])
    assert r.returncode == 0, r.stderr[-2000:]
    names = [s.stem for s in slides]
    assert outputs(out, names) == outputs(local_run, names)
    ray_rows = json.loads((out / "summary.json").read_text())["slides"]
    local_rows = json.loads((local_run / "summary.json").read_text())["slides"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in rows]  # noqa: E731
    assert strip(ray_rows) == strip(local_rows)  # the same summary, in input order
    again = run_cli([*slides, "-o", out, "--model", tiny_model_dir, "--executor", "ray"])
    assert again.returncode == 0 and {r["status"] for r in json.loads((out / "summary.json").read_text())["slides"]} \
        == {"skipped"}  # finished slides are not sent to Ray again


def test_a_killed_worker_is_retried_and_nothing_is_lost(slides, tiny_model_dir, local_run, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    flag = tmp_path / "killed-once"
    r = run_cli([*slides, "-o", out, "--model", tiny_model_dir, "--executor", "ray"],
                {"MITOQP_KILL_AT": f"write:1:{flag}"})  # the first worker to reach writing dies, once
    assert r.returncode == 0, r.stderr[-2000:]
    assert flag.exists()  # a worker was killed
    names = [s.stem for s in slides]
    assert outputs(out, names) == outputs(local_run, names)
    assert not list(out.glob(".*.tmp")) and not (out / ".mitoqp.lock").exists()


def test_ray_without_a_cluster_is_a_one_line_error(slides, tiny_model_dir, tmp_path, capsys):  # noqa: F811
    assert main(["run", "-q", str(slides[0]), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir),
                 "--executor", "ray", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot reach Ray at 127.0.0.1:1")
