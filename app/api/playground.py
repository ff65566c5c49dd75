"""The web playground at `/`: one static page that uses only the public API, and the few
facts it needs about this server (GET /playground/config.json) to fit images before upload."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

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


@router.get("/playground/config.json")
async def playground_config(request: Request):
    """What the page shows and fits images to. Public, like /readyz and x-svd-model: the
    sizes are in every refusal's message anyway. Frames and steps are the loaded model's
    defaults, else the configured overrides, else null (not known until a worker loads)."""
    settings = request.app.state.settings
    runtime = request.app.state.runtime
    generator = next((w.generator for w in runtime.workers if w.loaded), None)
    frames = getattr(generator, "default_frames", None) or settings.num_frames
    steps = getattr(generator, "default_steps", None) or settings.steps
    return JSONResponse({
        "model": runtime.model_label,
        "model_description": getattr(generator, "description", None),
        "ready": generator is not None,
        "allowed_sizes": [list(size) for size in settings.allowed_sizes],
        "any_size": settings.any_size,
        "max_pixels": settings.max_pixels,
        "max_body_bytes": settings.max_body_bytes,
        "defaults": {"frames": frames, "steps": steps, "fps": settings.output_fps,
                     "cfg_scale": 1.8, "motion_bucket_id": 127},
    })
