"""Response shapes, for the OpenAPI document (the routes build the bodies themselves)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class AsyncGenerationResponse(BaseModel):
    id: str = Field(description="The generation id: 64 lowercase hex characters.")
    status: Literal["in-progress"] | None = Field(
        None, description="Present on 202: the generation is queued or running.")


class VideoGenerationResponse(BaseModel):
    video: str = Field(description="The MP4, base64-encoded.")
    finish_reason: Literal["SUCCESS", "CONTENT_FILTERED"]
    seed: int = Field(description="The seed used for the generation.")


class ErrorResponse(BaseModel):
    id: str = Field(description="A unique identifier for this error instance (32 hex).")
    name: str = Field(description="The error type, e.g. bad_request, generation_not_found.")
    errors: list[str] = Field(description="What is wrong, one entry per problem ('field: …').")
    message: str = Field(description="One human-readable sentence.")


IMAGE_TO_VIDEO_FORM = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary",
                      "description": "PNG or JPEG. Supported sizes: 1024x576, 576x1024, 768x768 "
                                     "(the server's SVD_ALLOWED_SIZES)."},
            "seed": {"type": "integer", "minimum": 0, "maximum": 4294967294, "default": 0,
                     "description": "0 picks a random seed, reported back with the result."},
            "cfg_scale": {"type": "number", "minimum": 0, "maximum": 10, "default": 1.8,
                          "description": "Guidance of the last frame (the first frame gets 1.0)."},
            "motion_bucket_id": {"type": "integer", "minimum": 1, "maximum": 255, "default": 127,
                                 "description": "More motion with higher values."},
        },
    }}},
}


def error_responses(*codes: int) -> dict:
    return {code: {"model": ErrorResponse, "description": f"Error ({code})"} for code in codes}
