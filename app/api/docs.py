"""The interactive API docs at `/docs`: Swagger UI with every file served by this server, so
the page works on a machine with no internet. Swagger UI's bundle, CSS and favicon come from
the fastapi-offline package (a dependency: its `static/` folder is swagger-ui-dist's files);
app/static/swagger-init.js starts it, so that the page's CSP allows scripts from 'self' only."""
from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

router = APIRouter(include_in_schema=False)

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
SWAGGER_DIR = Path(str(files("fastapi_offline") / "static"))
OUR_STATIC = Path(__file__).resolve().parent.parent / "static"
# URL name under /docs/ -> (file, content type). Only these; nothing else of either folder.
JS, CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
ASSETS = {
    "swagger-ui-bundle.js": (SWAGGER_DIR / "swagger-ui-bundle.js", JS),
    "swagger-ui.css": (SWAGGER_DIR / "swagger-ui.css", CSS),
    "favicon.png": (SWAGGER_DIR / "favicon.png", "image/png"),
    "swagger-init.js": (OUR_STATIC / "swagger-init.js", JS),
}
_missing = [str(path) for path, _ in ASSETS.values() if not path.is_file()]
if _missing:
    raise RuntimeError(f"the /docs page's files are missing: {', '.join(_missing)}; "
                       "reinstall svd-server (pip install -e .), which brings fastapi-offline")

# Everything from this origin, no inline script or style, no eval. Swagger UI's CSS draws its
# icons with data: URIs; "Try it out" calls the API with fetch (connect-src).
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{base}/favicon.png">
<link rel="stylesheet" href="{base}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{base}/swagger-ui-bundle.js"></script>
<script src="{base}/swagger-init.js"></script>
</body>
</html>
"""


@router.get(DOCS_URL)
async def docs_page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    app = request.app
    page = PAGE.format(title=html.escape(f"{app.title} - Swagger UI"),
                       base=html.escape(root + DOCS_URL),
                       openapi_url=html.escape(root + OPENAPI_URL))
    return HTMLResponse(page, headers={"content-security-policy": DOCS_CSP})


# A route of ours rather than FastAPI's built-in one (a plain Starlette route, which the
# request metrics would label `unmatched`).
@router.get(OPENAPI_URL)
async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def _asset_route(name: str, path: Path, media_type: str):
    async def asset() -> FileResponse:
        return FileResponse(path, media_type=media_type)
    asset.__name__ = "docs_" + name.replace("-", "_").replace(".", "_")
    return asset


for _name, (_path, _type) in ASSETS.items():
    router.add_api_route(f"{DOCS_URL}/{_name}", _asset_route(_name, _path, _type), methods=["GET"])
