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
            text = '"' + escape(text) + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def escape(text: str) -> str:
    """Backslash, quote and every character that could forge or colour a log line (C0/C1
    controls, DEL, NUL, line and paragraph separators, bidi and other format characters)
    written as escapes; a request path with %0d%0a can then never start a new line."""
    return "".join(_escaped(c) for c in text)


def _escaped(c: str) -> str:
    if c == "\\" or c == '"':
        return "\\" + c
    if c.isprintable():
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def configure_logging(level: str) -> None:
    """Log lines to stderr at `level`, as every svd-server command writes them."""
    import logging
    import sys
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)    # app.main logs the revision
