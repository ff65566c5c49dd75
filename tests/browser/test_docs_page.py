"""The API docs at /docs, in headless Chromium with no internet: `svd-server serve` as a process,
then tests/browser/docs.spec.mjs (playwright-core) opens the page with every request to another
host aborted, and checks that it renders the whole API with no such request, no CSP violation
and no console error.

Needs Debian's chromium (/usr/bin/chromium), Node.js with npm, and `npm ci` run in this folder;
.ci/run installs them. Without them the test is skipped here and fails under CI=true."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, browser_node, browser_outcome

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve().parent
SPEC = HERE / "docs.spec.mjs"
ARTIFACT = HERE / "artifacts" / "docs.png"


def test_docs_page_renders_the_api_offline(tmp_path):
    node = browser_node()
    screenshot = tmp_path / "docs.png"
    # No worker: the docs page needs no model, only the app and its OpenAPI document.
    server = ServerProcess(tmp_path / "data", {"SVD_API_KEYS": "browser-test-key",
                                               "SVD_WORKERS": "0"}).start(wait_ready=False)
    try:
        run_env = {**os.environ, "DOCS_URL": server.url, "DOCS_SCREENSHOT": str(screenshot)}
        try:
            proc = subprocess.run([node, str(SPEC)], cwd=HERE, env=run_env, capture_output=True,
                                  text=True, timeout=180)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the browser test ran over 180 s:\n{exc.stdout or ''}\n{exc.stderr or ''}")
    finally:
        server.stop()
    browser_outcome(proc, screenshot, ARTIFACT, server)
    assert screenshot.stat().st_size > 0
