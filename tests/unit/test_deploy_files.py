"""The shipped Docker Compose file: it publishes nothing beyond the machine by default, and its
scale profile can turn webhooks on without editing it."""
from __future__ import annotations

import re

import yaml

from tests.helpers import ROOT


def test_compose_publishes_ports_on_localhost_unless_told_otherwise():
    text = (ROOT / "docker-compose.yml").read_text()
    published = re.findall(r'^\s*-\s*"([^"]+:8000)"\s*$', text, re.MULTILINE)
    assert published, "no published port found"
    for port in published:
        assert port.startswith("${SVD_PUBLISH_ADDR:-127.0.0.1}:"), port


def test_the_scale_profile_shares_webhook_settings_and_gives_the_worker_its_data():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        # One secret for the whole cluster, from the host's environment, and the allow-list.
        assert env["SVD_WEBHOOK_SECRET"] == "${SVD_WEBHOOK_SECRET:-}", name
        assert env["SVD_WEBHOOK_ALLOW"] == "${SVD_WEBHOOK_ALLOW:-}", name
    assert any(v.endswith(":/data") for v in services["worker"]["volumes"])
    assert services["worker"]["environment"]["SVD_HOST"] == "0.0.0.0"   # metrics scraped from outside
