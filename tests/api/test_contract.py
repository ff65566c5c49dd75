"""Contract conformance, checked by schemathesis against a real server over HTTP.

Two contracts:
- Stability's published spec, `tests/data/stability-svd-openapi.yml` (a verbatim copy): what
  existing clients rely on. The server may answer only with the statuses, media types and
  bodies that it documents.
- The app's own `/openapi.json`, loaded from the running server: it must describe what the
  server really does.

Two kinds of requests, each response run through every check in CHECKS:
- generated: schemathesis' examples, coverage and fuzzing phases (positive and negative data),
  MAX_EXAMPLES per operation, deterministic (fixed schemathesis seed, derandomized hypothesis);
- known states that random data cannot reach (random bytes are never an image of an allowed
  size, random ids never name a job): a started job, a 202 while it runs, the MP4 and the
  base64 JSON once it is done, a missing key, an unknown id, a rate-limited start; and, against
  the app's own spec only, what Stability's spec leaves out but the hosted service also does
  (413 for a body over the limit, 500 for a generation that failed), and /readyz's 503 while
  the model loads.

The server is the real app behind uvicorn, with the fast fake generator. Its rate limit is off
so that the generated starts are never refused by it; test_rate_limited_start covers the 429.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from app.main import create_app
from tests.fakes import FakeGenerator
from tests.helpers import KEY_A, ServerThread, make_settings, png_bytes, running_server

SPEC = Path(__file__).resolve().parent.parent / "data" / "stability-svd-openapi.yml"
START = "/v2beta/image-to-video"
RESULT = "/v2beta/image-to-video/result/{id}"
AUTH = {"Authorization": f"Bearer {KEY_A}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# For the known cases whose answer is a documented 5xx.
CHECKS_5XX_EXPECTED = [c for c in CHECKS if c is not not_a_server_error]
FAILING_MOTION = 13          # the fake generator fails jobs with this motion_bucket_id
SEED = 20240613
MAX_EXAMPLES = 100
# Generated cases that each of the two Stability operations must have received (about 150 and
# 110 with MAX_EXAMPLES = 100). Operations without parameters (/healthz, /readyz, /metrics)
# have a handful of distinct requests, and need only one.
MIN_GENERATED = MAX_EXAMPLES // 2

HYPOTHESIS = settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), print_blob=False)

# (spec, operation) -> number of generated cases sent; read by test_generated_cases_were_run.
GENERATED: dict[str, Counter] = {"stability": Counter(), "own": Counter()}


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("contract"),
                        generator=FakeGenerator(fail_on_motion=FAILING_MOTION),
                        rate_limit="0") as server:
        yield server


# Framing headers belong to the HTTP client, not to the API: a generated `content-length: }"Qo`
# makes the request invalid HTTP, which the HTTP server itself refuses (plain 400) before any
# application code runs. The case still runs, with its path, query and body, minus those.
FRAMING_HEADERS = {"content-length", "transfer-encoding", "host", "connection", "te", "upgrade"}


def call(case, server):
    if case.headers:
        for name in [n for n in case.headers if n.lower() in FRAMING_HEADERS]:
            del case.headers[name]
    case.call_and_validate(base_url=server.url, headers=AUTH, checks=CHECKS)


# --- the Stability spec: loaded at import, so pytest parametrizes it directly ---------------

stability = schemathesis.openapi.from_path(SPEC, config=schemathesis.Config(seed=SEED))
# One test per operation: parametrizing the whole schema gives every operation's item the
# same node id, and the test runner's two processes (pytest-xdist) would then run only one.
stability_start = stability.include(method="POST", path=START)
stability_result = stability.include(method="GET", path=RESULT)


@stability_start.parametrize()
@HYPOTHESIS
def test_stability_spec_start(case, contract_server):
    call(case, contract_server)
    GENERATED["stability"][case.operation.label] += 1


@stability_result.parametrize()
@HYPOTHESIS
def test_stability_spec_result(case, contract_server):
    call(case, contract_server)
    GENERATED["stability"][case.operation.label] += 1


# --- the app's own spec: loaded from the running server -------------------------------------

@pytest.fixture(scope="module")
def own_schema(contract_server):
    return schemathesis.openapi.from_url(contract_server.url + "/openapi.json",
                                         config=schemathesis.Config(seed=SEED))


@pytest.fixture
def _node_id_compat(request):
    """schemathesis 4.32's from_fixture() reads and renames `item._nodeid`, which pytest 9
    no longer has (the id lives in `item._id`). Giving it the attribute is enough: the
    renaming only changes how subtests are labelled."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


own = schemathesis.pytest.from_fixture("own_schema")


@own.parametrize()
@HYPOTHESIS
@pytest.mark.usefixtures("_node_id_compat")
def test_own_openapi(case, contract_server):
    call(case, contract_server)
    GENERATED["own"][case.operation.label] += 1


def test_generated_cases_were_run():
    """Run after the two generated tests (file order): they must have sent real traffic."""
    ran = {name: dict(counts) for name, counts in GENERATED.items() if counts}
    print(f"\ngenerated contract cases: {ran}")
    if not ran:
        pytest.skip("the generated contract tests were not selected")
    for name, counts in ran.items():
        assert counts.get(f"POST {START}", 0) >= MIN_GENERATED, (name, counts)
        assert counts.get(f"GET {RESULT}", 0) >= MIN_GENERATED, (name, counts)
        assert all(n >= 1 for n in counts.values()), (name, counts)
    if "own" in ran:
        assert {"GET /healthz", "GET /readyz"} <= set(ran["own"]), ran["own"]


# --- known states ----------------------------------------------------------------------------

@pytest.fixture(params=["stability", "own"])
def schema(request):
    return stability if request.param == "stability" else request.getfixturevalue("own_schema")


def _validated(server, operation, checks=CHECKS, **case_args):
    case = operation.Case(**case_args)
    return case.call_and_validate(base_url=server.url, checks=checks)


def _start(server, schema, image=None, **fields):
    return _validated(server, schema[START]["POST"], headers=AUTH, media_type="multipart/form-data",
                      body={"image": png_bytes() if image is None else image, **fields})


def _poll(server, schema, job_id, checks=CHECKS, **headers):
    return _validated(server, schema[RESULT]["GET"], checks, path_parameters={"id": job_id},
                      headers={**AUTH, **headers})


def _wait_done(server, schema, job_id, checks=CHECKS):
    deadline = time.time() + 30
    while (done := _poll(server, schema, job_id, checks)).status_code == 202:
        assert time.time() < deadline, "the generation did not finish"
        time.sleep(0.05)
    return done


def _header(response, name: str) -> str | None:
    values = response.headers.get(name.lower())      # schemathesis: lower-case name -> list
    return values[0] if values else None


def test_a_generation_through_every_state(contract_server, schema):
    generator = contract_server.generator
    generator.release.clear()
    generator.hold = True
    try:
        started = _start(contract_server, schema, seed=42, cfg_scale=2.5, motion_bucket_id=200)
        assert started.status_code == 200
        job_id = started.json()["id"]
        running = _poll(contract_server, schema, job_id)
        assert running.status_code == 202 and running.json()["status"] == "in-progress"
    finally:
        generator.hold = False
        generator.release.set()

    done = _wait_done(contract_server, schema, job_id)
    assert done.status_code == 200
    assert _header(done, "content-type") == "video/mp4"
    assert _header(done, "seed") == "42" and _header(done, "finish-reason") == "SUCCESS"

    as_json = _poll(contract_server, schema, job_id, Accept="application/json")
    assert as_json.status_code == 200
    assert _header(as_json, "content-type").startswith("application/json")
    assert as_json.json()["seed"] == 42

    video = _poll(contract_server, schema, job_id, Accept="video/*")
    assert video.status_code == 200 and _header(video, "content-type") == "video/mp4"


def test_errors_clients_see(contract_server, schema):
    unknown = _poll(contract_server, schema, "0" * 64)
    assert unknown.status_code == 404
    assert unknown.json()["name"] == "generation_not_found"

    no_key = _validated(contract_server, schema[START]["POST"], media_type="multipart/form-data",
                        body={"image": png_bytes()})
    assert no_key.status_code == 401
    wrong_key = _validated(contract_server, schema[RESULT]["GET"], path_parameters={"id": "0" * 64},
                           headers={"Authorization": "Bearer not-a-key"})
    assert wrong_key.status_code == 401

    not_an_image = _validated(contract_server, schema[START]["POST"], headers=AUTH,
                              media_type="multipart/form-data", body={"image": b"not an image"})
    assert not_an_image.status_code == 400
    assert not_an_image.json()["errors"][0].startswith("image: ")


def test_rate_limited_start(tmp_path, schema):
    with running_server(tmp_path, rate_limit="1/60s") as server:
        assert _start(server, schema).status_code == 200
        refused = _start(server, schema)
        assert refused.status_code == 429
        assert int(_header(refused, "retry-after")) >= 1


# What Stability's spec does not document (its hosted service answers 413 and 500 too), and
# the readiness probe: the app's own spec documents them, and is checked here.

def test_body_over_the_limit_is_a_documented_413(contract_server, own_schema):
    limit = contract_server.settings.max_body_bytes
    r = _start(contract_server, own_schema, image=b"\x89PNG\r\n\x1a\n" + b"\0" * limit)
    assert r.status_code == 413


def test_failed_generation_is_a_documented_500(contract_server, own_schema):
    job_id = _start(contract_server, own_schema, motion_bucket_id=FAILING_MOTION).json()["id"]
    failed = _wait_done(contract_server, own_schema, job_id, CHECKS_5XX_EXPECTED)
    assert failed.status_code == 500
    assert failed.json()["name"] == "internal_error"


def test_readyz_while_the_model_loads_is_a_documented_503(tmp_path, own_schema):
    loaded = threading.Event()

    def slow_factory():
        loaded.wait(30)
        return FakeGenerator()

    app = create_app(make_settings(tmp_path), generator_factory=slow_factory, model_label="fake")
    with ServerThread(app) as server:
        try:
            r = _validated(server, own_schema["/readyz"]["GET"], CHECKS_5XX_EXPECTED)
            assert r.status_code == 503
        finally:
            loaded.set()
