"""Structured log lines (key=value) and the id of the request being served."""
from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BARE = re.compile(r"^[A-Za-z0-9._:/@+-]+$")


def new_request_id(incoming: str | None) -> str:
    """The client's x-request-id when it is sane, else a fresh 32-hex id."""
    if incoming and _SAFE_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def kv(**fields) -> str:
    """`a=1 b="two words"`: one grep-able, parseable line. None values are left out."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.3f}"
        text = str(value)
        if not _BARE.match(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
