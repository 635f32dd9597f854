"""Overlapped stages: the background iterator, and a slide analysed with and without overlap."""

import threading
import time

import numpy as np
import pytest

from conftest import CMU, needs_slides
from mitoqp.background import in_background


def test_items_arrive_in_order_from_another_thread():
    threads = set()

    def items():
        for i in range(50):
            threads.add(threading.get_ident())
            yield i

    assert list(in_background(items(), depth=3)) == list(range(50))
    assert threads and threading.get_ident() not in threads


def test_the_worker_stays_at_most_depth_items_ahead():
    made = []

    def items():
        for i in range(100):
            made.append(i)
            yield i

    it = in_background(items(), depth=3)
    next(it)
    time.sleep(0.2)
    assert len(made) <= 1 + 3 + 1  # the consumed one, a full queue, one waiting to be put
    it.close()


def test_a_worker_error_is_raised_in_the_consumer():
    def items():
        yield 1
        raise ValueError("corrupt tile at level 0 (3, 4)")

    it = in_background(items())
    assert next(it) == 1
    with pytest.raises(ValueError, match="corrupt tile"):
        next(it)


def test_stopping_early_stops_the_worker_and_runs_its_clean_up():
    closed = threading.Event()

    def items():
        try:
            for i in range(10_000):
                yield i
        finally:
            closed.set()

    for i in in_background(items(), depth=2):
        if i == 5:
            break
    assert closed.wait(2)


@needs_slides
def test_overlapped_and_serial_runs_find_the_same_figures(default_model):
    from mitoqp.pipeline import Options, analyse_slide
    from mitoqp.slide import open_slide

    with open_slide(CMU) as slide:
        a = analyse_slide(slide, default_model, Options(overlap=True, window_px=1024))
        b = analyse_slide(slide, default_model, Options(overlap=False, window_px=1024))
    assert a.candidates == b.candidates > 100
    assert np.array_equal(a.xy, b.xy) and np.array_equal(a.scores, b.scores)
    assert "model_wait" in a.timings and "model_wait" not in b.timings


def test_ctrl_c_in_the_consumer_leaves_no_thread_behind():
    before = threading.active_count()

    def items():
        while True:
            yield np.zeros(1000)

    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(in_background(items(), depth=2)):
            if i == 3:
                raise KeyboardInterrupt
    deadline = time.time() + 2
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before


def test_an_error_in_the_front_end_worker_fails_one_slide_and_the_batch_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    """A kernel failing on the worker thread: that slide's one-line error, the next slide done."""
    from PIL import Image

    import mitoqp.pipeline as pipeline
    from conftest import synthetic_field
    from mitoqp.batch import RunConfig, run_batch
    from mitoqp.runtime.model import load_model

    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray(np.hstack([synthetic_field(rng)[0] for _ in range(2)])).save(tmp_path / f"{name}.png")
    real = pipeline.find_candidates
    worker_threads = set()

    def failing(h, mpp, params):
        worker_threads.add(threading.get_ident())
        if h.shape[0] and failing.first:
            failing.first = False
            raise ValueError("blob kernel failed on window (0, 0)")
        return real(h, mpp, params)

    failing.first = True
    monkeypatch.setattr(pipeline, "find_candidates", failing)
    opts = pipeline.Options(mpp=0.25)
    recs = run_batch([str(tmp_path / "a.png"), str(tmp_path / "b.png")], load_model(tiny_model_dir),
                     RunConfig(tmp_path / "out", opts), progress=False)
    assert [r["status"] for r in recs] == ["error", "ok"]
    assert recs[0]["error"] == "blob kernel failed on window (0, 0)"
    assert threading.get_ident() not in worker_threads  # it ran on the worker, and still failed cleanly
    assert not (tmp_path / "out" / "a.geojson").exists() and (tmp_path / "out" / "b.geojson").exists()
