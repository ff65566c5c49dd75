"""What the benchmarks share: a real server process, images, percentiles, tables."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """Something broke (not a missed target): exit non-zero."""


def noise_png(width: int, height: int) -> bytes:
    """A deterministic noise PNG: a flat colour would compress to nothing and upload free."""
    import numpy as np
    from PIL import Image
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


class Server:
    """A running `python -m app.cli serve`: its URL, keys, process and log."""

    def __init__(self, url: str, keys: list[str], proc, data: Path, log_path: Path):
        self.url, self.keys, self.proc, self.data, self.log_path = url, keys, proc, data, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        return self.log()[-3000:]


@contextmanager
def server_process(size: str, frames: int, steps: int, keys: int = 1,
                   env: dict[str, str] | None = None, data_dir: Path | None = None,
                   ready_timeout_s: float = 120.0):
    """Yield a Server (tiny model) on a free port once /readyz answers 200, with `keys`
    random API keys and `env` added to its environment; stop it afterwards. `data_dir`:
    keep the data there (default: a temporary directory)."""
    import httpx

    from app.child_process import ServerNotReady, free_port, start_server, wait_until_ready
    port = free_port()
    api_keys = [secrets.token_hex(16) for _ in range(keys)]
    with tempfile.TemporaryDirectory(prefix="svd-bench-") as tmp:
        data, log_path = data_dir or Path(tmp) / "data", Path(tmp) / "server.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SVD_")}
        full_env.update(SVD_MODEL="tiny", SVD_API_KEYS=",".join(api_keys), SVD_ALLOWED_SIZES=size,
                        SVD_NUM_FRAMES=str(frames), SVD_STEPS=str(steps), SVD_DATA_DIR=str(data),
                        SVD_PORT=str(port), SVD_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        proc = start_server(full_env, ROOT, log_path)
        server = Server(f"http://127.0.0.1:{port}", api_keys, proc, data, log_path)
        try:
            wait_until_ready(proc, server.url + "/readyz", log_path, ready_timeout_s)
            yield server
        except ServerNotReady as exc:
            raise BenchError(str(exc)) from None
        except httpx.HTTPError as exc:
            raise BenchError(f"HTTP request failed: {exc!r}\nserver log:\n{server.tail()}") from exc
        finally:                                        # terminate, then kill
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def print_table(title: str, rows: list[tuple]) -> None:
    """Rows of (metric, value, target, passed), passed None where there is no target; a rich
    table when rich is installed, plain columns otherwise."""
    marks = {None: "", True: "PASS", False: "MISS"}
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        width = max(len(r[0]) for r in rows)
        for name, value, target, passed in rows:
            print(f"{name:<{width}}  {value:<40}  {target:<10}  {marks[passed]}")
        return
    table = Table(title=title)
    for col in ("metric", "value", "target", ""):
        table.add_column(col, no_wrap=True)
    for name, value, target, passed in rows:
        style = {True: "green", False: "red"}.get(passed, "default")
        table.add_row(name, value, target, f"[{style}]{marks[passed]}[/]")
    needed = sum(max(len(str(r[i])) for r in rows) for i in range(3)) + 4 + 13  # + borders
    Console(width=max(100, needed, Console().width)).print(table)


def size_arg(value: str) -> tuple[int, int]:
    from app.config import parse_sizes
    try:
        sizes = parse_sizes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError("one size, please")
    return sizes[0]



def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status."""
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of the whole machine without a pid."""
    if pid is None:                                  # /proc/stat: user nice system idle iowait ...
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    else:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        busy = int(fields[11]) + int(fields[12])
    return busy / os.sysconf("SC_CLK_TCK")


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def finish(res: dict, json_path: str | None) -> int:
    """How every benchmark ends: its wall time said, its numbers written as JSON if asked."""
    print(f"took {res['wall_s']:.0f} s", file=sys.stderr)
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def stats_ms(v: list[float]) -> dict:
    return {"n": len(v), "p50": percentile(v, 0.5) if v else None,
            "p99": percentile(v, 0.99) if v else None, "max": max(v, default=None)}

