"""The API docs at /docs, in headless Chromium with no internet: `svd-server serve` as a process,
then tests/browser/docs.spec.mjs (playwright-core) opens the page with every request to another
host aborted, and checks that it renders the whole API with no such request, no CSP violation
and no console error.

Needs Debian's chromium (/usr/bin/chromium), Node.js with npm, and `npm ci` run in this folder;
.ci/run installs them. Without them the test is skipped here and fails under CI=true."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve().parent
SPEC = HERE / "docs.spec.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACT = HERE / "artifacts" / "docs.png"


def requirements() -> str:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        skip_or_fail("Node.js and npm are needed for the browser test")
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        skip_or_fail("playwright-core is not installed (npm ci in tests/browser)")
    return node


def test_docs_page_renders_the_api_offline(tmp_path):
    node = requirements()
    screenshot = tmp_path / "docs.png"
    # No worker: the docs page needs no model, only the app and its OpenAPI document.
    server = ServerProcess(tmp_path / "data", {"SVD_API_KEYS": "browser-test-key",
                                               "SVD_WORKERS": "0"}).start(wait_ready=False)
    try:
        run_env = {**os.environ, "DOCS_URL": server.url, "DOCS_SCREENSHOT": str(screenshot),
                   "CHROMIUM_PATH": str(CHROMIUM)}
        try:
            proc = subprocess.run([node, str(SPEC)], cwd=HERE, env=run_env, capture_output=True,
                                  text=True, timeout=180)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the browser test ran over 180 s:\n{exc.stdout or ''}\n{exc.stderr or ''}")
    finally:
        server.stop()
    if screenshot.exists():
        ARTIFACT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, ARTIFACT)
    print(proc.stdout)
    if proc.returncode != 0:
        pytest.fail(f"the browser test failed (exit {proc.returncode}); screenshot: {ARTIFACT}\n"
                    f"{proc.stdout}\n{proc.stderr}\n"
                    f"--- server log (end) ---\n{server.log()[-4000:]}", pytrace=False)
    assert screenshot.stat().st_size > 0
