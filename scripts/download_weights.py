#!/usr/bin/env python
"""Download the Stable Video Diffusion weights that svd-server loads (fp16 files only).

The SVD-XT repository is gated: accept its licence on
https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt while logged in, create an
access token (https://huggingface.co/settings/tokens), then:

    HF_TOKEN=hf_... python scripts/download_weights.py
        # into the Hugging Face cache (HF_HOME); the server's SVD_MODEL=auto finds it there
    HF_TOKEN=hf_... python scripts/download_weights.py --local-dir /srv/models/svd-xt
        # into a plain directory; start the server with SVD_MODEL=/srv/models/svd-xt
    HF_TOKEN=hf_... python scripts/download_weights.py --preset animatelcm-svd-xt
        # what a preset needs: its base pipeline and, for a few-step preset, its UNet file

With Docker Compose (the cache is the hf-cache volume, HF_HOME=/models):

    HF_TOKEN=hf_... docker compose run --rm svd-server python scripts/download_weights.py

Only what diffusers' StableVideoDiffusionPipeline needs in fp16 is fetched (about 4.5 GB for
SVD-XT): model_index.json, the component configs and the *.fp16.safetensors weights. The
full-precision copies and the original single-file checkpoints are skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Importing the pipeline module pulls in transformers, whose import-time notices are noise here.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from inference.presets import PRESETS, SVD_XT_REPO  # noqa: E402

ALLOW_PATTERNS = [
    "model_index.json",
    "*/config.json",                                  # unet, vae, image_encoder
    "scheduler/scheduler_config.json",
    "feature_extractor/preprocessor_config.json",
    "*/*.fp16.safetensors",                           # weights, fp16 variant only
]


def _hf_home() -> str:
    from huggingface_hub import constants
    return os.environ.get("HF_HOME") or str(Path(constants.HF_HUB_CACHE).parent)


def _licence_help(repo: str, have_token: bool) -> str:
    token_line = ("Your token was refused or has no access: check that it belongs to the account "
                  "that accepted the licence." if have_token else
                  "No Hugging Face token was found.")
    return (f"{token_line}\n"
            f"  1. Log in on Hugging Face and accept the licence at https://huggingface.co/{repo}\n"
            "  2. Create a read token at https://huggingface.co/settings/tokens\n"
            "  3. Run again with HF_TOKEN=hf_... set (or after `hf auth login`, formerly "
            "`huggingface-cli login`).")


def download(repo: str, local_dir: str | None, revision: str | None) -> str:
    from huggingface_hub import snapshot_download
    return snapshot_download(repo_id=repo, revision=revision, local_dir=local_dir,
                             allow_patterns=ALLOW_PATTERNS)


def download_unet(preset, local_dir: str | None) -> str:
    """A few-step preset's single-file UNet (the first of its files)."""
    from huggingface_hub import hf_hub_download
    return hf_hub_download(repo_id=preset.unet_repo, filename=preset.unet_files[0],
                           local_dir=local_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download the fp16 Stable Video Diffusion weights for svd-server. "
                    "The token comes from HF_TOKEN or a previous `hf auth login`.")
    parser.add_argument("--repo", default=SVD_XT_REPO,
                        help="Hugging Face repository (default: %(default)s)")
    parser.add_argument("--local-dir", metavar="DIR",
                        help="download into this plain directory (then set SVD_MODEL=DIR) "
                             "instead of the Hugging Face cache at HF_HOME")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="what this SVD_MODEL preset needs (instead of --repo)")
    args = parser.parse_args(argv)
    preset = PRESETS.get(args.preset) if args.preset else None
    if preset is not None:
        args.repo = preset.repo

    from huggingface_hub import get_token
    from huggingface_hub import utils as errors   # the error classes, in every supported version

    have_token = get_token() is not None
    local_dir = str(Path(args.local_dir).expanduser()) if args.local_dir else None
    target = (str(Path(local_dir).resolve()) if local_dir
              else f"the Hugging Face cache in {_hf_home()}")
    print(f"Downloading {args.repo}{'@' + args.revision if args.revision else ''} (fp16 files) "
          f"into {target}", file=sys.stderr)
    if not have_token:
        print("warning: no Hugging Face token found (HF_TOKEN); gated repositories will refuse "
              "the download.", file=sys.stderr)

    unet = None
    try:
        path = download(args.repo, local_dir, args.revision)
        if preset is not None and preset.unet_repo:
            args.repo = preset.unet_repo                  # for the messages below
            print(f"Downloading {preset.unet_files[0]} from {preset.unet_repo}", file=sys.stderr)
            unet = download_unet(preset, local_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; run again to resume the download.", file=sys.stderr)
        return 130
    except errors.GatedRepoError:
        print(f"error: {args.repo} is gated. {_licence_help(args.repo, have_token)}",
              file=sys.stderr)
        return 1
    except errors.RevisionNotFoundError:
        print(f"error: {args.repo} has no revision {args.revision!r}.", file=sys.stderr)
        return 1
    except errors.RepositoryNotFoundError:
        # Hugging Face answers 401 "not found" for private repos and for refused tokens too.
        print(f"error: {args.repo} was not found, or it is private or gated and may not be read "
              f"with your credentials. If the name is right: "
              f"{_licence_help(args.repo, have_token)}", file=sys.stderr)
        return 1
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            print(f"error: Hugging Face refused the download (HTTP {status}). "
                  f"{_licence_help(args.repo, have_token)}", file=sys.stderr)
        else:
            print(f"error: the download failed: {exc}", file=sys.stderr)
        return 1
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as exc:
        # snapshot_download raises these when it cannot reach the Hub (no network, or
        # HF_HUB_OFFLINE=1) and the files are not already there.
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = ("HF_HUB_OFFLINE is set" if offline
               else "Hugging Face could not be reached (no network, proxy or firewall?)")
        print(f"error: cannot download {args.repo}: {why}, and the files are not already "
              f"downloaded.\n  ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
              file=sys.stderr)
        return 1
    except OSError as exc:              # disk full, permissions on HF_HOME or DIR, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1

    path = str(Path(path).resolve())
    print(f"Done: {path}", file=sys.stderr)
    if preset is not None and not local_dir:
        print(f"Start the server with (and the same HF_HOME, {_hf_home()}):\n"
              f"  SVD_MODEL={preset.name}")
    elif preset is not None:
        unet_line = f" SVD_UNET={Path(unet).resolve()}" if unet else ""
        print(f"Start the server with:\n  SVD_MODEL={path}{unet_line}"
              f"{' SVD_SCHEDULER=' + preset.scheduler if preset.few_step else ''}"
              f" SVD_STEPS={preset.steps}")
    elif local_dir:
        print(f"Start the server with:\n  SVD_MODEL={path}")
    elif args.revision and args.revision != "main":
        print("The server loads the cache's 'main' revision, not this one. To serve a pinned "
              "revision, download it with --local-dir DIR and set SVD_MODEL=DIR.")
    elif args.repo == SVD_XT_REPO:
        print("Nothing to set: the default SVD_MODEL=auto finds these weights in the Hugging Face "
              f"cache on a CUDA machine, as long as the server runs with the same HF_HOME "
              f"({_hf_home()}).")
    else:
        print(f"Start the server with (and the same HF_HOME, {_hf_home()}):\n  SVD_MODEL={args.repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
