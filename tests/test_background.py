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
