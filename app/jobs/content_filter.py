"""An optional content filter (SVD_CONTENT_FILTER=package.module:function, off by default).

The function is called by the worker with the generated frames (uint8 array of shape
(frames, height, width, 3)) and the input image (PIL, RGB), after generation and before
encoding. It returns True (or "flag") to flag the video. A flagged generation finishes as the
hosted API's do: 200 with `finish-reason: CONTENT_FILTERED`, and the video it carries is
blacked out, so that nothing flagged is ever served. Plug any classifier in:

    # mycompany/svd_filter.py
    def check(frames, image):
        return my_nsfw_model.score(frames[::5]).max() > 0.8

    SVD_CONTENT_FILTER=mycompany.svd_filter:check svd-server serve
"""
from __future__ import annotations

import importlib
from typing import Callable


def load_filter(spec: str) -> Callable | None:
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"SVD_CONTENT_FILTER={spec!r}: expected package.module:function")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"SVD_CONTENT_FILTER={spec!r}: {attr} is not a function in {module_name}")
    return function


def flagged(result) -> bool:
    return result is True or (isinstance(result, str) and result.lower() == "flag")
