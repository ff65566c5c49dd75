"""Child processes that never outlive the process that started them, and ports for the
servers among them.

A server started by a benchmark or a test must die with it however it ends: a timeout's
SIGKILL, a crash, Ctrl-C. Each child gets its own session (so a signal meant for the parent's
terminal group does not reach it half-way, or twice when the parent passes it on) and, on
Linux, a parent-death signal: the kernel sends it SIGKILL (or the signal asked for) the
moment its parent exits. `svd-server worker --gpus` starts its workers that way too, with
SIGTERM. `start_server` starts `svd-server serve` that
way; `wait_until_ready` waits until it answers.
"""
from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1   # from <linux/prctl.h>


def popen_kwargs(death_signal: int = signal.SIGKILL) -> dict:
    """Keyword arguments for subprocess.Popen that tie the child's life to this process: it
    gets `death_signal` when this process ends (SIGTERM lets a worker drain)."""
    if not sys.platform.startswith("linux"):
        return {"start_new_session": True}
    parent = os.getpid()

    def die_with_parent() -> None:            # runs in the child, between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, death_signal)
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


def start_server(env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """`svd-server serve` with this environment, tied to this process, its output appended
    to `log_path`."""
    with open(log_path, "ab") as log:                # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT, **popen_kwargs())


class ServerNotReady(RuntimeError):
    """A server exited, or did not answer in time; the message ends with its log's tail."""


def wait_until_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    """Return once GET `url` answers 200; raise ServerNotReady if `proc` exits first or
    `timeout` seconds pass."""
    def tail() -> str:
        return log_path.read_text(errors="replace")[-5000:] if log_path.exists() else ""

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerNotReady(f"server exited with {proc.returncode}:\n{tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServerNotReady(f"server not ready in {timeout:g} s:\n{tail()}")
        time.sleep(0.1)
