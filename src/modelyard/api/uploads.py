"""Streaming an upload body into the artifact store's staging area, within a size limit."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from modelyard.core.platform import Platform
from modelyard.errors import PayloadTooLarge, ValidationFailed
from modelyard.store.artifacts import StagedFile

__all__ = ["stage_upload", "upload_doc"]


def upload_doc(description: str) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route whose body is a file's raw bytes."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    }


async def stage_upload(request: Request, platform: Platform, *, limit: int, what: str) -> StagedFile:
    """Stage the body (hashing as it streams); 413 past ``limit`` without reading further, 422
    when empty. The caller registers or discards the staged file."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} of {declared} bytes is over the limit of {limit} bytes")
    staged = await platform.artifacts.stage_async(request.stream(), max_bytes=limit)
    if staged.size == 0:
        staged.discard()
        raise ValidationFailed(f"the upload is empty; send the {what}'s bytes as the request body")
    return staged
