"""Run an iterator on a worker thread, a bounded number of items ahead of its consumer.

Stages overlap this way: slide decoding runs ahead of the front end, and the
front end (deconvolution, candidates, patches) ahead of the model. numba
kernels, ONNX Runtime and image decoders release the GIL, so the threads run
at once. The queue bounds memory; an exception in the worker is raised in the
consumer; a consumer that stops early (an error, a break) stops the worker.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def in_background(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce() -> None:
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
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
