"""Request dependencies: the caller's identity."""
from __future__ import annotations

from fastapi import Request, Security
from fastapi.security import HTTPBearer

from app.api.errors import ApiError
from app.keys import key_from_header


# Declares the bearer scheme in the OpenAPI document, as Stability's spec does. It never
# refuses by itself: a bare key without "Bearer " is accepted too, below.
bearer = HTTPBearer(auto_error=False, scheme_name="bearerAuth",
                    description="Your API key, as 'Authorization: Bearer <key>'.")


async def require_owner(request: Request, _=Security(bearer)) -> str:
    """The owner id (hash) of a valid API key, or a 401. Async: a hash is cheaper than a
    hop to the threadpool, and clients poll in loops."""
    owner = request.app.state.keyring.owner_of(key_from_header(request.headers.get("authorization")))
    if owner is None:
        raise ApiError.unauthorized()
    return owner
