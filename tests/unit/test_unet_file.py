"""SVD_UNET: replacing the tiny random-weight UNet's weights from a file (CPU, float32)."""
from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from safetensors.torch import save_file

from inference.tiny import WEIGHTS_SEED, build_tiny_pipeline, seeded_weights
from inference.unet_file import UNetFileError, load_unet_weights, read_unet_state_dict

OTHER_SEED = WEIGHTS_SEED + 1


@pytest.fixture(scope="module")
def config():
    return build_tiny_pipeline().unet.config


def make_unet(config, seed: int = WEIGHTS_SEED) -> UNetSpatioTemporalConditionModel:
    with seeded_weights(seed=seed):
        return UNetSpatioTemporalConditionModel.from_config(config).eval()


@pytest.fixture
def unet(config):
    """The tiny pipeline's UNet, with its seeded weights."""
    return make_unet(config)


@pytest.fixture
def other(config):
    """The same architecture with different weights: what a checkpoint would bring."""
    return make_unet(config, OTHER_SEED)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_weights(model, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def forward(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    c = model.config
    sample = torch.randn(1, 2, c.in_channels, 8, 8, generator=g)
    hidden = torch.randn(1, 1, c.cross_attention_dim, generator=g)
    with torch.no_grad():
        return model(sample, torch.tensor(0.5), hidden, torch.tensor([[6.0, 127.0, 0.02]])).sample


def test_the_two_models_differ(unet, other):
    assert not torch.equal(forward(unet), forward(other))


def test_single_file_replaces_every_weight(unet, other, tmp_path):
    path = tmp_path / "AnimateLCM-SVD-xt.safetensors"
    save_file(other.state_dict(), path)

    assert load_unet_weights(unet, path) == len(other.state_dict())

    assert_weights(unet, other.state_dict())
    assert torch.equal(forward(unet), forward(other))


@pytest.mark.parametrize("point_at", ["unet", "model"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_diffusers_folder(unet, other, tmp_path, point_at, sharded):
    other.save_pretrained(tmp_path / "model" / "unet", max_shard_size="200KB" if sharded else "10GB")
    index = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    assert index.is_file() == sharded

    load_unet_weights(unet, tmp_path / "model" / ("unet" if point_at == "unet" else ""))

    assert_weights(unet, other.state_dict())
    assert torch.equal(forward(unet), forward(other))


def test_fp16_file_loads_into_fp32_model(unet, other, tmp_path):
    path = tmp_path / "unet.fp16.safetensors"
    save_file({k: v.half() for k, v in other.state_dict().items()}, path)

    load_unet_weights(unet, path)

    assert all(v.dtype == torch.float32 for v in unet.state_dict().values())
    assert_weights(unet, {k: v.half().float() for k, v in other.state_dict().items()})


def test_fp16_variant_folder(unet, other, tmp_path):
    other.save_pretrained(tmp_path / "unet", variant="fp16")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    load_unet_weights(unet, tmp_path / "unet")
    assert_weights(unet, other.state_dict())


def test_renamed_key_is_refused_naming_it(unet, other, tmp_path):
    before = snapshot(unet)
    state = dict(other.state_dict())
    key = "conv_in.weight"
    state["model.diffusion_model.input_blocks.0.0.weight"] = state.pop(key)
    path = tmp_path / "renamed.safetensors"
    save_file(state, path)

    with pytest.raises(UNetFileError) as err:
        load_unet_weights(unet, path)

    message = str(err.value)
    assert str(path) in message
    assert f"keys missing from the file (1): {key}" in message
    assert "unexpected keys in the file (1): model.diffusion_model.input_blocks.0.0.weight" in message
    assert (f"UNetSpatioTemporalConditionModel with {len(before)} tensors" in message
            and "AnimateLCM-SVD-xt.safetensors for SVD-XT" in message)
    assert_weights(unet, before)


def test_many_missing_keys_are_summarised(unet, other, tmp_path):
    before = snapshot(unet)
    state = dict(other.state_dict())
    dropped = list(state)[:5]
    for k in dropped:
        del state[k]
    save_file(state, tmp_path / "partial.safetensors")

    with pytest.raises(UNetFileError) as err:
        load_unet_weights(unet, tmp_path / "partial.safetensors")

    message = str(err.value)
    assert f"keys missing from the file (5): {', '.join(dropped[:3])} and 2 more" in message
    assert dropped[3] not in message and "unexpected" not in message
    assert_weights(unet, before)


def test_wrong_shape_is_refused_with_both_shapes(unet, other, tmp_path):
    before = snapshot(unet)
    state = dict(other.state_dict())
    key = "conv_in.weight"
    model_shape = tuple(state[key].shape)
    state[key] = torch.zeros(model_shape[0], model_shape[1] + 1, *model_shape[2:])
    save_file(state, tmp_path / "wrong.safetensors")

    with pytest.raises(UNetFileError) as err:
        load_unet_weights(unet, tmp_path / "wrong.safetensors")

    wrong = (model_shape[0], model_shape[1] + 1, *model_shape[2:])
    assert f"tensors of the wrong shape (1): {key} (file {wrong}, model {model_shape})" in str(err.value)
    assert "missing" not in str(err.value)
    assert_weights(unet, before)


@pytest.mark.parametrize("content", ["random", "pickle", "empty"])
def test_not_safetensors_is_refused_without_unpickling(unet, other, tmp_path, monkeypatch,
                                                       content):
    before = snapshot(unet)
    path = tmp_path / "unet.safetensors"
    if content == "pickle":
        torch.save(other.state_dict(), path)
    else:
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0)).numpy().tobytes()
                         if content == "random" else b"")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled the file"))

    with pytest.raises(UNetFileError, match="not a readable safetensors file") as err:
        load_unet_weights(unet, path)

    assert str(path) in str(err.value)
    assert_weights(unet, before)


def test_missing_path(unet, tmp_path):
    before = snapshot(unet)
    with pytest.raises(UNetFileError, match="no such file or folder") as err:
        load_unet_weights(unet, tmp_path / "nowhere.safetensors")
    assert str(tmp_path / "nowhere.safetensors") in str(err.value)
    assert_weights(unet, before)


def test_folder_without_weights(unet, other, tmp_path):
    folder = tmp_path / "unet"
    other.save_pretrained(folder, safe_serialization=False)  # config.json and a .bin pickle
    with pytest.raises(UNetFileError, match="no UNet weights in this folder") as err:
        read_unet_state_dict(folder)
    assert str(folder) in str(err.value) and ".bin pickles are not loaded" in str(err.value)


def test_sharded_folder_with_a_missing_shard(other, tmp_path):
    other.save_pretrained(tmp_path / "unet", max_shard_size="200KB")
    shard = sorted((tmp_path / "unet").glob("*-00001-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(UNetFileError, match="is missing") as err:
        read_unet_state_dict(tmp_path / "unet")
    assert shard.name in str(err.value)
