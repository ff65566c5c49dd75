"""Settings from the environment; API keys."""
from __future__ import annotations

import os
import stat

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.keys import KeyRing, key_from_header, key_hash, load_or_create_key


def test_defaults(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SVD_"):
            monkeypatch.delenv(k)
    s = Settings()
    assert (s.host, s.port, s.workers, s.model, s.output_fps) == ("127.0.0.1", 8000, 1, "auto", 7)
    assert s.allowed_sizes == ((1024, 576), (576, 1024), (768, 768))
    assert s.api_keys == () and s.num_frames is None and s.steps is None
    assert s.result_ttl_hours == 24 and s.max_body_bytes == 10 * 1024 * 1024
    assert s.resolved_database_url.startswith("sqlite:///") and s.resolved_database_url.endswith("svd.db")


def test_environment_names(monkeypatch):
    env = {"SVD_HOST": "0.0.0.0", "SVD_PORT": "9000", "SVD_API_KEYS": "a, b ,",
           "SVD_DATA_DIR": "/tmp/x", "SVD_DATABASE_URL": "postgresql://h/db", "SVD_WORKERS": "0",
           "SVD_MODEL": "tiny", "SVD_ALLOWED_SIZES": "64x64, 128x96", "SVD_NUM_FRAMES": "9",
           "SVD_STEPS": "3", "SVD_OUTPUT_FPS": "12", "SVD_RESULT_TTL_HOURS": "2",
           "SVD_JOB_TIMEOUT_S": "60"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.api_keys == ("a", "b") and s.allowed_sizes == ((64, 64), (128, 96))
    assert (s.port, s.workers, s.num_frames, s.steps, s.output_fps) == (9000, 0, 9, 3, 12)
    assert s.resolved_database_url == "postgresql://h/db" and s.job_timeout_s == 60


@pytest.mark.parametrize("keys", ["caf\u00e9-key", "good,\u043a\u043b\u044e\u0447", "tab\there"])
def test_keys_that_could_never_authenticate_are_refused_at_start(keys):
    """Headers arrive as latin-1, keys are hashed as UTF-8: a non-ASCII key never matches."""
    with pytest.raises(ValidationError, match="printable ASCII"):
        Settings(api_keys=keys)


def test_a_refused_key_is_not_echoed(capsys):
    from app.config import load_settings
    assert load_settings(api_keys="fine-key,s\u00e9cret-key") is None
    err = capsys.readouterr().err
    assert "SVD_API_KEYS" in err and "key number 2" in err
    assert "cret-key" not in err and "fine-key" not in err


@pytest.mark.parametrize("sizes", ["", "64", "64x", "63x64", "0x64", "axb"])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(ValidationError):
        Settings(allowed_sizes=sizes)


def test_generated_key_file_is_private_and_reused(tmp_path):
    key = load_or_create_key(tmp_path)
    path = tmp_path / "api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) > 30 and load_or_create_key(tmp_path) == key


def test_keyring_matches_hashes_only():
    ring = KeyRing(["k1", "k2"])
    assert ring.owner_of("k2") == key_hash("k2")
    assert ring.owner_of("k3") is None and ring.owner_of("") is None and ring.owner_of(None) is None
    assert "k1" not in repr(ring.__dict__)


@pytest.mark.parametrize("header,key", [("Bearer abc", "abc"), ("bearer abc", "abc"),
                                        ("abc", "abc"), ("  Bearer   abc ", "abc"),
                                        ("Bearer", None), ("", None), (None, None)])
def test_bearer_or_bare_key(header, key):
    assert key_from_header(header) == key
