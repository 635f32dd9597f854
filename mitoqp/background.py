"""Run an iterator on a worker thread, a bounded number of items ahead of its consumer.

Stages overlap this way: slide decoding runs ahead of the front end, and the
front end (deconvolution, candidates, patches) ahead of the model. numba
kernels, ONNX Runtime and image decoders release the GIL, so the threads run
at once. The queue bounds memory; an exception in the worker is raised in the
consumer; a consumer that stops early (an error, a break, Ctrl-C) stops the
worker, and waits for it at most STOP_WAIT_S: a worker stuck where it cannot see
the stop (on a lock an interrupted thread left held, say) is left behind as a
daemon thread rather than hanging the run.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
WAKE_S = 0.2  # the consumer's longest wait without looking at signals
STOP_WAIT_S = 20.0  # the longest a consumer that stops waits for its worker (one item's work is far less)


def block_ctrl_c() -> None:
    """Keep SIGINT off this thread and the native threads it starts (decoder pools, numba's workers), so that
    Ctrl-C reaches the main thread. A run once hung on Ctrl-C with the main thread still waiting on its queue
    (test_huge_slide's thread dump, 2026-12-03): most likely another thread had taken the signal."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def in_background(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        block_ctrl_c()
        it = iter(items)
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # handed to the consumer, which raises it
            q.put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # a generator's own clean-up (a thread pool, a file) runs here, on this thread
            q.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=WAKE_S)
            except queue.Empty:  # wake now and then: a Ctrl-C is raised here even if another thread caught the signal
                continue
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        deadline = time.monotonic() + STOP_WAIT_S
        while thread.is_alive() and time.monotonic() < deadline:  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
