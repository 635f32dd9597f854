"""Where the slides of a batch run: here, one after another, or as Ray tasks spread over a cluster.

Both hand each slide's record to the batch as it finishes, so the project,
the progress bar and the summary see a Ray run exactly as a local one. Under
Ray a worker writes the slide's files itself (the output folder must be on
storage every node sees) and loads the model once per worker process; a
task whose worker dies (killed, out of memory, node lost) is retried, and a
slide finished before is never sent (the batch skips it first).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mitoqp.runtime.model import Model


@dataclass(frozen=True)
class Job:
    """One slide to analyse: its path, output name and the run settings for it (its ROI, say)."""

    path: Path
    name: str
    cfg: object  # batch.RunConfig


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # None: start a local Ray on this machine
    cpus_per_slide: float = 1.0
    gpus_per_slide: float = 0.0
    memory_gb_per_slide: float = 2.0  # the streamed pipeline peaks under 1 GB (benchmarks/RESULTS.md)
    max_retries: int = 3  # for tasks whose worker process died
    model_args: dict | None = None  # load_model's arguments, for the workers


Done = Callable[[Job, dict], None]


def run_local(jobs: list[Job], model: Model, done: Done, progress: bool = False) -> None:
    from mitoqp.batch import process_slide

    for job in jobs:
        done(job, process_slide(job.path, job.name, model, job.cfg, progress))


def run_ray(jobs: list[Job], model: Model, settings: RaySettings, done: Done) -> None:
    """Each job as a Ray task; `done` is called in the order the tasks finish."""
    if not jobs:  # every slide finished before: no cluster needed
        return
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'mitoqp[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if settings.address:
            check_reachable(settings.address)
        try:
            ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:  # a wrong address, a cluster that is down
            raise ValueError(f"cannot reach Ray at {settings.address or 'a new local instance'}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    try:
        task = ray.remote(analyse_on_worker).options(
            num_cpus=settings.cpus_per_slide, num_gpus=settings.gpus_per_slide,
            memory=int(settings.memory_gb_per_slide * 2**30), max_retries=settings.max_retries,
            retry_exceptions=False)
        args = settings.model_args or {"directory": str(model.directory)}
        pending = {task.remote(job.path, job.name, job.cfg, args, model.sha256): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # the worker died more often than max_retries, or a bug
                    first = str(exc).strip().splitlines()
                    record = {"slide": str(job.path), "name": job.name, "status": "error",
                              "error": f"Ray task failed: {type(exc).__name__}: {first[0] if first else ''}"[:500]}
                done(job, record)
    finally:
        if started:
            ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a cluster that is down: ray.init itself retries a dead address for minutes."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r} is not HOST:PORT (the head node's GCS port, 6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(f"cannot reach Ray at {address}: {exc.strerror or exc} "
                         f"(is `ray start --head` running there?)") from None


_models: dict[str, Model] = {}  # per worker process: a worker analyses many slides with one loaded model


def analyse_on_worker(path: Path, name: str, cfg, model_args: dict, sha256: str) -> dict:
    """A Ray task: load the model once per worker (checking it is the driver's), analyse one slide."""
    from mitoqp.batch import process_slide
    from mitoqp.runtime.model import load_model

    key = repr(sorted(model_args.items()))
    if key not in _models:
        _models[key] = load_model(**model_args)
    model = _models[key]
    if model.sha256 != sha256:
        return {"slide": str(path), "name": name, "status": "error",
                "error": f"the worker's model {model_args.get('directory')} is not the driver's (sha256 differs)"}
    return process_slide(path, name, model, cfg)
