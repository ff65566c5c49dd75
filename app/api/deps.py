"""Request dependencies: the caller's identity."""
from __future__ import annotations

from fastapi import Request

from app.api.errors import ApiError
from app.keys import key_from_header


async def require_owner(request: Request) -> str:
    """The owner id (hash) of a valid API key, or a 401. Async: a hash is cheaper than a
    hop to the threadpool, and clients poll in loops."""
    owner = request.app.state.keyring.owner_of(key_from_header(request.headers.get("authorization")))
    if owner is None:
        raise ApiError.unauthorized()
    return owner
