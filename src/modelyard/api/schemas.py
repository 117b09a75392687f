"""Shared response shapes of the management API (feature-specific ones live with their routes)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict

from modelyard.api.errors import ERROR_SCHEMA
from modelyard.core.pages import MAX_PAGE, MAX_PAGE_SIZE, Page

__all__ = ["PageOut", "PageQ", "SizeQ", "StrictBody", "ERRORS", "page_out"]

T = TypeVar("T")

#: the pagination query parameters every list route takes.
PageQ = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page number, from 1")]
SizeQ = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="items per page")]

#: the error responses every management route documents.
ERRORS: dict[int | str, dict[str, Any]] = {code: ERROR_SCHEMA for code in (400, 401, 403, 404, 409, 413, 422, 429)}


class StrictBody(BaseModel):
    """Request bodies refuse unknown fields, so mass assignment (``tenant_id``...) fails loudly."""

    model_config = ConfigDict(extra="forbid")


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    page_size: int


def page_out(page: Page[Any], convert: Any) -> dict[str, Any]:
    return {
        "items": [convert(i) for i in page.items],
        "total": page.total,
        "page": page.page,
        "page_size": page.page_size,
    }
