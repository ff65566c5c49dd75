#!/usr/bin/env python
"""End-to-end check with Stability AI's own Python sample for image-to-video.

The two requests below are the ones from Stability's API reference (start a generation,
then poll its result), with only the base URL changed: a client written for
https://api.stability.ai works against svd-server as it is.

    python scripts/smoke_client.py photo.png -o video.mp4
    python scripts/smoke_client.py photo.png --base-url http://gpu-box:8000 --api-key sk-...

The image must have one of the server's SVD_ALLOWED_SIZES (Stability's: 1024x576, 576x1024,
768x768). The key comes from --api-key, else SVD_API_KEY, else the file DATA_DIR/api_key that
the server writes when SVD_API_KEYS is unset (DATA_DIR: SVD_DATA_DIR, default ./data).
Exit status 0 when the video was saved, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import requests

# Per request (connect, read); the whole run is bounded by --timeout.
REQUEST_TIMEOUT = (10, 120)


def default_api_key() -> str | None:
    if os.environ.get("SVD_API_KEY"):
        return os.environ["SVD_API_KEY"].strip()
    key_file = Path(os.environ.get("SVD_DATA_DIR") or "data") / "api_key"
    try:
        return key_file.read_text().strip() or None
    except OSError:
        return None


def start_generation(base: str, key: str, image_path: str) -> str:
    with open(image_path, "rb") as image:
        response = requests.post(
            f"{base}/v2beta/image-to-video",
            headers={
                "authorization": f"Bearer {key}"
            },
            files={
                "image": image
            },
            data={
                "seed": 0,
                "cfg_scale": 1.8,
                "motion_bucket_id": 127
            },
            timeout=REQUEST_TIMEOUT,
        )

    if response.status_code != 200:
        raise Exception(str(response.json()))
    generation_id = response.json().get('id')
    print("Generation ID:", generation_id)
    return generation_id


def fetch_result(base: str, key: str, generation_id: str, output: str,
                 interval: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        response = requests.request(
            "GET",
            f"{base}/v2beta/image-to-video/result/{generation_id}",
            headers={
                'accept': "video/*",  # Use 'application/json' to receive base64 encoded JSON
                'authorization': f"Bearer {key}"
            },
            timeout=REQUEST_TIMEOUT,
        )

        if response.status_code == 202:
            if time.monotonic() + interval > deadline:
                raise TimeoutError(f"no result after {timeout:g} seconds")
            print(f"Generation in-progress, try again in {interval:g} seconds.")
            time.sleep(interval)
        elif response.status_code == 200:
            print("Generation complete!")
            with open(output, 'wb') as file:
                file.write(response.content)
            print(f"Saved {output} ({len(response.content)} bytes), "
                  f"seed {response.headers.get('seed')}, "
                  f"finish-reason {response.headers.get('finish-reason')}")
            return
        else:
            raise Exception(str(response.json()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate one video with Stability's sample client code against svd-server.")
    parser.add_argument("image", help="input image (PNG or JPEG at an allowed size)")
    parser.add_argument("-o", "--output", default="video.mp4",
                        help="where to write the MP4 (default: %(default)s)")
    parser.add_argument("--base-url", default=os.environ.get("SVD_BASE_URL") or "http://127.0.0.1:8000",
                        help="server URL (default: SVD_BASE_URL or %(default)s)")
    parser.add_argument("--api-key", default=None,
                        help="API key (default: SVD_API_KEY, else DATA_DIR/api_key)")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between polls (default: %(default)g)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="give up after this many seconds (default: %(default)g)")
    args = parser.parse_args(argv)

    key = args.api_key or default_api_key()
    if not key:
        print("error: no API key: pass --api-key, set SVD_API_KEY, or run where data/api_key is "
              "(or set SVD_DATA_DIR)", file=sys.stderr)
        return 1
    base = args.base_url.rstrip("/")
    try:
        generation_id = start_generation(base, key, args.image)
        fetch_result(base, key, generation_id, args.output, args.interval, args.timeout)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:           # the sample raises Exception(str(response.json()))
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
