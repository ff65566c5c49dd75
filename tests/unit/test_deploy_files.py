"""The shipped Docker Compose file publishes nothing beyond the machine by default."""
from __future__ import annotations

import re

from tests.helpers import ROOT


def test_compose_publishes_ports_on_localhost_unless_told_otherwise():
    text = (ROOT / "docker-compose.yml").read_text()
    published = re.findall(r'^\s*-\s*"([^"]+:8000)"\s*$', text, re.MULTILINE)
    assert published, "no published port found"
    for port in published:
        assert port.startswith("${SVD_PUBLISH_ADDR:-127.0.0.1}:"), port
