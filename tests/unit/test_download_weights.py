"""scripts/download_weights.py --preset: what a preset needs is what it fetches (the network
itself is replaced here: nothing can be downloaded in the tests)."""
from __future__ import annotations

import importlib.util

from tests.helpers import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("download_weights",
                                                  ROOT / "scripts" / "download_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_few_step_preset_fetches_its_base_and_its_unet(monkeypatch, capsys, tmp_path):
    script = load_script()
    fetched = []
    monkeypatch.setattr(script, "download", lambda repo, local_dir, revision: (
        fetched.append(repo), str(tmp_path))[1])
    monkeypatch.setattr(script, "download_unet", lambda preset, local_dir: (
        fetched.append(f"{preset.unet_repo}/{preset.unet_files[0]}"), str(tmp_path / "u"))[1])
    assert script.main(["--preset", "animatelcm-svd-xt"]) == 0
    assert fetched == ["stabilityai/stable-video-diffusion-img2vid-xt",
                       "wangfuyun/AnimateLCM-SVD-xt/AnimateLCM-SVD-xt-1.1.safetensors"]
    assert "SVD_MODEL=animatelcm-svd-xt" in capsys.readouterr().out

    fetched.clear()
    assert script.main(["--preset", "svd", "--local-dir", str(tmp_path / "svd")]) == 0
    assert fetched == ["stabilityai/stable-video-diffusion-img2vid"]     # no UNet file
    assert f"SVD_MODEL={tmp_path}" in capsys.readouterr().out
