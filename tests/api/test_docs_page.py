"""The API docs at /docs work offline: the page names only same-origin files, each of them is
served here with a sensible content type, and its CSP allows only this origin (no inline
script). tests/browser/test_docs_page.py renders it in Chromium."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

EXPECTED_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class References(HTMLParser):
    """Every src= and href= of the page, with its tag; inline <script> and style= too."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.inline_scripts = 0
        self.style_attributes = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name) is not None:
                self.refs.append((tag, attrs[name]))
        if "style" in attrs:
            self.style_attributes += 1
        self._in_script_without_src = tag == "script" and "src" not in attrs
        if any(name.startswith("on") for name in attrs):
            self.inline_scripts += 1

    def handle_data(self, data):
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script_without_src = False


def parse_csp(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def test_docs_page_references_only_same_origin_files(server):
    r = httpx.get(server.url + "/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = References()
    page.feed(r.text)
    assert "<title>svd-server: Stable Video Diffusion API - Swagger UI</title>" in r.text
    assert page.inline_scripts == 0 and page.style_attributes == 0, r.text
    kinds = {tag for tag, _ in page.refs}
    assert {"script", "link"} <= kinds, page.refs
    for _, ref in page.refs:
        absolute = urlsplit(urljoin(server.url + "/docs", ref))
        assert (absolute.scheme, absolute.netloc) == ("http", urlsplit(server.url).netloc), ref
        assert not ref.startswith("//") and not re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I), ref
    # the favicon is ours: no request for one goes to another host either
    assert any(tag == "link" and ref.endswith(".png") for tag, ref in page.refs), page.refs
    assert 'data-openapi-url="/openapi.json"' in r.text
    assert not re.search(r"https?:|//", r.text), r.text  # no URL with a host, anywhere


def test_docs_page_csp_allows_only_self(server):
    r = httpx.get(server.url + "/docs")
    values = r.headers.get_list("content-security-policy")
    assert len(values) == 1, values                       # ours, not also the API's
    csp = parse_csp(values[0])
    assert not re.search(r"https?:|\*|wss?:", values[0]), values[0]
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]                 # no 'unsafe-inline', no 'unsafe-eval'
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert set(csp["img-src"]) <= {"'self'", "data:"}
    assert csp["frame-ancestors"] == ["'none'"]
    for sources in csp.values():
        assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources
    assert r.headers["x-frame-options"] == "DENY"


def test_every_file_the_docs_page_names_is_served(server):
    page = References()
    page.feed(httpx.get(server.url + "/docs").text)
    assert len(page.refs) >= 4                             # css, favicon, bundle, our init
    for _, ref in page.refs:
        r = httpx.get(urljoin(server.url + "/docs", ref))
        assert r.status_code == 200, ref
        suffix = "." + ref.rsplit(".", 1)[-1]
        assert r.headers["content-type"].startswith(EXPECTED_TYPES[suffix]), (ref, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert len(r.content) > 100, ref
        if suffix == ".js":
            assert "cdn.jsdelivr" not in r.text and "unpkg.com" not in r.text, ref
    init = httpx.get(server.url + "/docs/swagger-init.js").text
    assert "SwaggerUIBundle(" in init and "validatorUrl: null" in init
    bundle = httpx.get(server.url + "/docs/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle)
    assert version and int(version.group(1)) >= 5, "Swagger UI 5+ reads OpenAPI 3.1"


def test_docs_serves_only_its_own_files(server):
    for path in ("/docs/redoc.standalone.js", "/docs/oauth2-redirect", "/docs/../pyproject.toml",
                 "/docs/%2e%2e/app/main.py", "/redoc"):
        assert httpx.get(server.url + path).status_code == 404, path


def test_openapi_document_the_docs_page_loads_lists_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    assert "post" in paths["/v2beta/image-to-video"]
    assert "delete" in paths["/v2beta/image-to-video/result/{id}"]
    assert "get" in paths["/v2beta/image-to-video/result/{id}/events"]
    extensions = {(p, m) for p, ops in paths.items() for m, op in ops.items()
                  if "Extensions" in op.get("tags", [])}
    assert len(extensions) == 2, extensions
    assert not any(p.startswith("/docs") for p in paths)
