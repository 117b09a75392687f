"""Pagination shared by every list in the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from modelyard.errors import ValidationFailed

__all__ = ["Page", "PageRequest"]

T = TypeVar("T")

MAX_PAGE_SIZE = 500
MAX_PAGE = 1_000_000


@dataclass(frozen=True, slots=True)
class PageRequest:
    page: int = 1
    page_size: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.page <= MAX_PAGE:
            raise ValidationFailed(f"page must be between 1 and {MAX_PAGE}", details={"field": "page"})
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValidationFailed(f"page_size must be between 1 and {MAX_PAGE_SIZE}", details={"field": "page_size"})

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    page_size: int
