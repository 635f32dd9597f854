"""`mitoqp bench`: the latency report per slide, as a table and as JSON."""

import json

import numpy as np
from PIL import Image

from conftest import synthetic_field
from mitoqp.bench import STAGES
from mitoqp.cli import main


def test_bench_reports_wall_time_stages_throughput_and_memory(tiny_model_dir, tmp_path, capsys):
    rng = np.random.default_rng(5)
    img = np.vstack([np.hstack([synthetic_field(rng)[0] for _ in range(3)]) for _ in range(3)])
    Image.fromarray(img).save(tmp_path / "field.png")
    (tmp_path / "broken.svs").write_bytes(b"not a slide")
    rc = main(["bench", str(tmp_path / "field.png"), str(tmp_path / "broken.svs"), "--model", str(tiny_model_dir),
               "--mpp", "0.25", "--repeat", "2", "--json", str(tmp_path / "bench.json")])
    out, err = capsys.readouterr()
    assert rc == 1 and err.strip().count("\n") == 0 and "failed" in err  # the bad slide, in one line
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["backend"] == "onnxruntime-cpu" and report["repeat"] == 2 and report["warm_up_s"] > 0
    ok, bad = report["slides"]
    assert bad["status"] == "error" and "broken" in out
    assert ok["status"] == "ok" and ok["runs"] == 2 and ok["megapixels"] == round(384 * 384 / 1e6, 1)
    assert 0 < ok["wall_min_s"] <= ok["wall_median_s"]
    assert ok["patches"] > 0 and ok["patches_per_s"] > 0 and ok["megapixels_per_s"] > 0
    assert set(ok["stages_s"]) == set(STAGES) and ok["stages_s"]["model"] > 0
    assert all(0 <= v <= 1.5 for v in ok["stage_share"].values())
    assert "field" in out and "not timed" in out


def test_the_warm_up_sends_a_dense_model_no_more_tiles_than_a_run_does(tmp_path):
    """256 tiles of 1024 px at once took a dense model past 24 GB before the first slide (OOM-killed)."""
    from test_dense import darkness_model

    from mitoqp.bench import warm_up
    from mitoqp.dense import tiles_per_batch
    from mitoqp.runtime.model import load_model

    model = load_model(darkness_model(tmp_path / "d", tile=256))
    sizes = []
    real = model.backend.predict
    model.backend.predict = lambda x: sizes.append(len(x)) or real(x)
    warm_up(model, 256)
    assert sizes and max(sizes) == tiles_per_batch(256, 256) == 128


def test_the_warm_up_runs_the_subtype_model_too(tiny_model_dir, tiny_subtype_model_dir):
    """A join sends its subtype model only the detections: warming the join alone can leave it cold."""
    from mitoqp.bench import backend_parts, warm_up
    from mitoqp.runtime.backend import SubtypeJoin
    from mitoqp.runtime.model import load_model

    model = load_model(tiny_model_dir, backend="onnxruntime")
    inner = load_model(tiny_subtype_model_dir, backend="onnxruntime").backend
    sizes = []

    class Counting:
        name = inner.name

        def predict(self, patches):
            sizes.append(len(patches))
            return inner.predict(patches)

    # a floor no score reaches: through the join alone the subtype model would never run
    model.backend = SubtypeJoin(model.backend, Counting(), 1, floor=2.0)
    assert [type(p).__name__ for p in backend_parts(model.backend)] == ["SubtypeJoin", "OnnxRuntimeBackend", "Counting"]
    warm_up(model, 32)
    assert sizes == [32, 7, 32]


def test_the_warm_up_compiles_the_hotspot_search(tiny_model_dir, monkeypatch):
    """The first slide with detections compiled the hotspot kernels inside its timed write stage (9-12 s)."""
    import mitoqp.bench as bench
    from mitoqp.runtime.model import load_model

    seen = []
    real = bench.find_hotspot
    monkeypatch.setattr(bench, "find_hotspot", lambda xy, area, mpp, shape: seen.append((len(xy), shape)) or
                        real(xy, area, mpp, shape))
    bench.warm_up(load_model(tiny_model_dir, backend="onnxruntime"), 8)
    assert sorted(shape for _, shape in seen) == ["circle", "square"] and all(n > 1 for n, _ in seen)
