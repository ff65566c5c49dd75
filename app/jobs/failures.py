"""How a job fails: the text a client reads, and the fault hook that kills the process at a
chosen phase (SVD_FAULT_CRASH_AT, for the crash tests; see docs/operations.md)."""
from __future__ import annotations

import errno
import logging
import os
import signal
import time

from app.logs import kv
from inference.base import is_out_of_memory

log = logging.getLogger("app.jobs.worker")


def crash_here(phase: str) -> None:
    """The fault hook (SVD_FAULT_CRASH_AT): die as a power cut or the OOM killer would.

    Half a second first, so that the 200 of the POST that queued the job has reached the
    test client (which must know the id to check that the job survives)."""
    log.critical(kv(event="fault_hook_crash", phase=phase))
    for handler in logging.getLogger().handlers:
        handler.flush()
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def describe_failure(exc: Exception) -> str:
    """The failure as the client will read it: short, without paths or tracebacks."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "could not store the video: the server's disk is full"
    if is_out_of_memory(exc):
        return "out of GPU memory, even with the lowest-memory settings"
    return f"{type(exc).__name__}: {exc}"[:500]
