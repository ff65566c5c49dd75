"""Response shapes, for the OpenAPI document (the routes build the bodies themselves)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from app.jobs.params import MAX_SEED


class AsyncGenerationResponse(BaseModel):
    id: str = Field(pattern=r"^[0-9a-f]{64}$",
                    description="The generation id: 64 lowercase hex characters.")
    # Absent from a start's 200, never null: neither null nor a null default in the schema.
    status: Literal["in-progress"] | SkipJsonSchema[None] = Field(
        None, description="Present on 202: the generation is queued or running.",
        json_schema_extra=lambda schema: schema.pop("default", None))


class VideoGenerationResponse(BaseModel):
    video: str = Field(description="The MP4, base64-encoded.",
                       json_schema_extra={"contentEncoding": "base64",
                                          "contentMediaType": "video/mp4"})
    finish_reason: Literal["SUCCESS", "CONTENT_FILTERED"]
    seed: int = Field(ge=0, le=MAX_SEED, description="The seed used for the generation.")


class ErrorResponse(BaseModel):
    id: str = Field(pattern=r"^[0-9a-f]{32}$",
                    description="A unique identifier for this error instance (32 hex).")
    name: str = Field(description="The error type, e.g. bad_request, generation_not_found.")
    errors: list[str] = Field(min_length=1,
                              description="What is wrong, one entry per problem ('field: …').")
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
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "default": 0,
                     "description": "0 picks a random seed, reported back with the result."},
            "cfg_scale": {"type": "number", "minimum": 0, "maximum": 10, "default": 1.8,
                          "description": "Guidance of the last frame (the first frame gets 1.0)."},
            "motion_bucket_id": {"type": "integer", "minimum": 1, "maximum": 255, "default": 127,
                                 "description": "More motion with higher values."},
        },
    }}},
}


ERROR_DESCRIPTIONS = {
    400: "The request is invalid: a field, the image or the body.",
    401: "The API key is missing or invalid.",
    404: "No generation with that id for this API key, or it has expired.",
    413: "The request body is larger than the limit (SVD_MAX_BODY_MB, 10 MiB by default).",
    429: "Too many requests: the key's rate limit, or the queue is full. See Retry-After.",
    500: "The server, or the generation, failed.",
    503: "The server is not taking new generations now (shutting down). See Retry-After.",
}

# Refusals that tell the client when to come back.
RETRY_AFTER = {"retry-after": {"description": "Seconds to wait before trying again.",
                               "required": True, "schema": {"type": "integer", "minimum": 1}}}


def error_responses(*codes: int) -> dict:
    """Documented error responses: the error body, and Retry-After where the server sends it."""
    responses = {}
    for code in codes:
        response = {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS.get(code, f"Error ({code})")}
        if code in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[code] = response
    return responses
