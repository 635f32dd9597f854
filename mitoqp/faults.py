"""Fault injection, for the tests and the soak benchmark that cause the faults a 24-hour batch meets.

`MITOQP_KILL_AT=STAGE:N` kills this process with SIGKILL the N-th time it
reaches STAGE (`STAGE:N:FLAGFILE`: only if FLAGFILE does not exist yet, which
the kill creates, so a retried task is not killed again);
`MITOQP_FAIL_AT=STAGE:N:ERRNO` raises OSError(ERRNO) there instead (ENOSPC
for a full disk). Stages: `read` (slide opened), `model`
(slide analysed), `write` (between two output files), `rename` (a temporary
file written, not yet renamed), `summary` (the batch's summary files).
`MITOQP_CHAOS=P_KILL:P_FAIL:SEED` (the soak) instead kills with probability
P_KILL and raises ENOSPC or EIO with probability P_FAIL at every checkpoint,
drawn from a generator seeded with SEED and the process id.
Without the variables a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import random
import signal
from collections import Counter

_reached: Counter = Counter()


def _matches(spec: str, stage: str) -> list[str] | None:
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != stage:
        return None
    return parts


def checkpoint(stage: str) -> None:
    """Kill or fail here if the environment asks for it at this stage's current count."""
    kill, fail = os.environ.get("MITOQP_KILL_AT"), os.environ.get("MITOQP_FAIL_AT")
    if not kill and not fail:
        if os.environ.get("MITOQP_CHAOS"):
            chaos(stage, os.environ["MITOQP_CHAOS"])
        return
    _reached[stage] += 1
    n = _reached[stage]
    if kill and (parts := _matches(kill, stage)) and int(parts[1]) == n:
        if len(parts) > 2:
            try:
                os.close(os.open(parts[2], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # killed once already
        os.kill(os.getpid(), signal.SIGKILL)
    if fail and (parts := _matches(fail, stage)) and int(parts[1]) == n:
        code = getattr(errno, parts[2]) if len(parts) > 2 else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (injected at {stage})")


_chaos: list[random.Random] = []


def chaos(stage: str, spec: str) -> None:
    p_kill, p_fail, seed = spec.split(":")
    if not _chaos:
        _chaos.append(random.Random(f"{seed}:{os.getpid()}"))  # a retried Ray task dies elsewhere
    draw = _chaos[0].random()
    if draw < float(p_kill):
        os.kill(os.getpid(), signal.SIGKILL)
    if draw < float(p_kill) + float(p_fail):
        code = _chaos[0].choice([errno.ENOSPC, errno.EIO])
        raise OSError(code, f"{os.strerror(code)} (injected at {stage})")
