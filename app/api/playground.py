"""The web playground at `/`: one static page that uses only the public API."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"
# Inline script and style, same-origin API calls, videos and images from blob URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
            "script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
            "frame-ancestors 'none'")


@router.get("/")
async def playground():
    return FileResponse(PAGE, media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": PAGE_CSP})
