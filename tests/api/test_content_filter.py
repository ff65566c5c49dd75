"""The optional content filter: a flagged video finishes CONTENT_FILTERED, blacked out."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from app.jobs.content_filter import load_filter
from tests.api.test_start import start
from tests.api.test_webhooks import Receiver
from tests.helpers import KEY_A, decode_frames, running_server, wait_done


def test_flagged_videos_are_content_filtered_black_and_announced(tmp_path):
    receiver = Receiver()
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    try:
        with running_server(tmp_path, content_filter="tests.filters:flag_everything",
                            webhook_allow="127.0.0.1:*") as server, \
                httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
            job_id = start(client, data={"seed": "3", "webhook_url": hook}).json()["id"]
            r = wait_done(client, job_id, headers={"accept": "video/*"})
            assert r.status_code == 200 and r.headers["finish-reason"] == "CONTENT_FILTERED"
            assert decode_frames(r.content).max() <= 20              # blacked out (after H.264)
            body = client.get(f"/v2beta/image-to-video/result/{job_id}",
                              headers={"accept": "application/json"}).json()
            assert body["finish_reason"] == "CONTENT_FILTERED" and body["seed"] == 3
            receiver.wait(1)
    finally:
        receiver.close()
    # The webhook carries what a poll says, as the succeeded event does (docs/extensions.md).
    assert json.loads(receiver.received[0][1]) == {
        "type": "generation.content_filtered", "id": job_id, "status": "content_filtered",
        "finish_reason": "CONTENT_FILTERED", "seed": 3}


def test_unflagged_videos_pass(tmp_path):
    with running_server(tmp_path, content_filter="tests.filters:flag_nothing") as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        r = wait_done(client, start(client).json()["id"])
        assert r.headers["finish-reason"] == "SUCCESS"
        assert np.asarray(decode_frames(r.content)).max() > 50


@pytest.mark.parametrize("spec", ["nocolon", "tests.filters:missing", "no_such_module:f"])
def test_bad_filter_specs_fail_loudly(spec):
    with pytest.raises((ValueError, ImportError)):
        load_filter(spec)
