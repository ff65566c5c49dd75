"""Replacing a loaded pipeline's UNet weights from a file (`SVD_UNET=PATH`), for few-step
checkpoints such as AnimateLCM-SVD-xt: a full state dict of the base model's UNet.

PATH is a single `.safetensors` state dict, a diffusers `unet/` folder (single-file or
sharded), or a model folder containing `unet/`. Only safetensors are read: never a pickle,
never a download. The file must match the UNet exactly (keys and shapes), or nothing is loaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

# In diffusers' order of preference: full precision first, then the fp16 variant.
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors",
                 "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.safetensors.index.fp16.json")
_EXPECTED = "a .safetensors UNet state dict, or a diffusers unet/ folder"


class UNetFileError(ValueError):
    """The UNet weights file cannot be used; the message says what is wrong and what was
    expected."""


def _load(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file, device="cpu")
    except Exception as exc:  # SafetensorError, OSError: all mean the same to the operator
        raise UNetFileError(
            f"{file}: not a readable safetensors file ({exc}); expected {_EXPECTED}. Pickled "
            "checkpoints (.ckpt, .bin, .pt) are not loaded: convert them to safetensors.") from exc


def _load_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UNetFileError(f"{index}: not a safetensors index (a JSON object with a "
                            f"'weight_map'): {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise UNetFileError(f"{index}: its shard {index.parent / shard} is missing.")
        state.update(_load(index.parent / shard))
    return state


def read_unet_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict at `path`, on the CPU, in the file's dtypes."""
    p = Path(path).expanduser()
    if p.is_file():
        return _load(p)
    if not p.is_dir():
        raise UNetFileError(f"{p}: no such file or folder; expected {_EXPECTED}.")
    folder = p
    if not any((p / name).is_file() for name in _WEIGHT_FILES) and (p / "unet").is_dir():
        folder = p / "unet"  # a whole diffusers model folder
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return _load_sharded(folder / name) if name.endswith(".json") else _load(folder / name)
    raise UNetFileError(f"{folder}: no UNet weights in this folder (expected one of "
                        f"{', '.join(_WEIGHT_FILES)}; .bin pickles are not loaded).")


def _some(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def load_unet_weights(unet: torch.nn.Module, path: str | os.PathLike) -> int:
    """Copy the weights at `path` into `unet` (in its dtype, on its device) and return how many
    tensors were loaded. Refuses (UNetFileError, `unet` unchanged) unless every key and shape
    matches `unet.state_dict()`."""
    state = read_unet_state_dict(path)
    own = unet.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
                   for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        problems = [f"{what} ({len(names)}): {_some(names)}" for what, names in (
            ("keys missing from the file", missing), ("unexpected keys in the file", unexpected),
            ("tensors of the wrong shape", wrong_shape)) if names]
        raise UNetFileError(
            f"{Path(path).expanduser()} does not fit this UNet; nothing was loaded. "
            f"{'; '.join(problems)}. Expected a state dict of this model's UNet "
            f"({type(unet).__name__} with {len(own)} tensors), e.g. AnimateLCM-SVD-xt.safetensors "
            "for SVD-XT.")
    # One tensor at a time, so a GPU model never holds a second full copy.
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
    return len(own)
