"""What the commands show and write: a progress bar on stderr, errors that end a command
with an exit status, output files that are never half-written, in the format their suffix
names."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


class Failed(Exception):
    """Stop the command with a message and an exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class Bar:
    """Progress on stderr, one line per phase: rich's bars on a terminal, plain lines
    otherwise (logs, CI): on a new phase, at the end of one, and at most every 2 s between.
    With `items` (several videos): an overall "3/5 done" above one line for the current stage."""

    def __init__(self, items: int = 0):
        self.progress = self.task = self.overall = None
        self.phase = self._last = None
        self._printed_at = 0.0
        self.items, self.count_text = items, f"0/{items} done" if items else ""
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<10}"),
                                     BarColumn(), TextColumn("{task.fields[detail]}"),
                                     TimeElapsedColumn(), console=Console(stderr=True))
            self.progress.start()
            if items:
                self.overall = self.progress.add_task("videos", total=items, detail=self.count_text)

    def count(self, done: int, failed: int = 0) -> None:
        """With `items`: how many are finished (`failed` of them without a video)."""
        self.count_text = f"{done}/{self.items} done" + (f", {failed} failed" if failed else "")
        if self.progress is not None:
            self.progress.update(self.overall, completed=done, detail=self.count_text)

    def show(self, phase: str, done: float | None = None, total: float | None = None,
             detail: str = "") -> None:
        if self.progress is None:
            now = time.monotonic()
            if (phase, detail) != self._last and (
                    phase != self.phase or (total and done == total) or now - self._printed_at >= 2):
                self._last, self.phase, self._printed_at = (phase, detail), phase, now
                prefix = f"[{self.count_text}] " if self.items else ""
                print(f"{prefix}{phase} {detail}".rstrip(), file=sys.stderr, flush=True)
            return
        if phase != self.phase and self.items and self.task is not None:
            self.progress.update(self.task, description=phase)     # one stage line, reused
            self.phase = phase
        elif phase != self.phase:
            self._finish_task()
            self.task = self.progress.add_task(phase, total=total, detail=detail)
            self.phase = phase
        self.progress.update(self.task, total=total, completed=done or 0, detail=detail)

    def _finish_task(self) -> None:
        if self.task is not None:
            total = self.progress.tasks[-1].total or 1     # tasks are added in order
            self.progress.update(self.task, total=total, completed=total)

    def close(self, ok: bool = True) -> None:
        if self.progress is not None:
            if ok:
                self._finish_task()
            self.progress.stop()


def write_atomic(out: Path, write) -> None:
    """`write(temp_path)`, then rename into place: never a half-written OUT."""
    temp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        write(temp)
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)


# -o's suffix -> the container written (inference.base.FORMATS); no suffix: MP4.
VIDEO_SUFFIXES = {".mp4": "mp4", ".webm": "webm", ".gif": "gif"}
CODEC_NAMES = {"mp4": "H.264", "webm": "VP9 WebM", "gif": "GIF"}


def video_format(out: Path) -> str:
    """The format to write at `out`, from its suffix (any case; none: mp4); Failed (2) for a
    suffix that is not one of VIDEO_SUFFIXES."""
    suffix = out.suffix.lower()
    if not suffix:
        return "mp4"
    if suffix not in VIDEO_SUFFIXES:
        raise Failed(f"-o {out}: cannot write {out.suffix} videos; name the file .mp4 (H.264), "
                     ".webm (VP9) or .gif (animated GIF)", 2)
    return VIDEO_SUFFIXES[suffix]
