"""Child processes that never outlive the process that started them, and ports for the
servers among them.

A server started by a benchmark or a test must die with it however it ends: a timeout's
SIGKILL, a crash, Ctrl-C. Each child gets its own session (so a signal meant for the parent's
terminal group does not reach it half-way) and, on Linux, a parent-death signal: the kernel
sends it SIGKILL the moment its parent exits.
"""
from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1   # from <linux/prctl.h>


def popen_kwargs() -> dict:
    """Keyword arguments for subprocess.Popen that tie the child's life to this process."""
    if not sys.platform.startswith("linux"):
        return {"start_new_session": True}
    parent = os.getpid()

    def die_with_parent() -> None:            # runs in the child, between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:            # the parent died before prctl took effect
            os._exit(1)

    return {"start_new_session": True, "preexec_fn": die_with_parent}


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1, for a child server to bind
    later. Drawn at random below the kernel's ephemeral range (32768 and up), where every
    outgoing connection takes its port: a port from bind(0) could be taken by one of those,
    or by a neighbour test process, in the seconds before the child binds it."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")
