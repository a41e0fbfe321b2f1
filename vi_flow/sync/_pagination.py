"""``PaginatedResponse``: the blocking face of a list, as the seeds call it.

It holds the first page (``.items``), iterates pages and has ``.all_items()``, moving one
page per portal round trip over the one async :class:`~vi_flow.AsyncPaginator`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from .._pagination import AsyncPaginator
from ..models.common import Page, PaginationParams

if TYPE_CHECKING:
    from .._portal import Portal

__all__ = ["PaginatedResponse"]

T = TypeVar("T")


class PaginatedResponse(Generic[T]):
    """The sync face of a list: the first page's items, iteration over pages, all items.

    Attributes:
        items: The items of the first page.
        next_page: The token of the page after the first.
    """

    def __init__(self, paginator: AsyncPaginator[T], portal: Portal) -> None:
        self._paginator = paginator
        self._portal = portal
        self._first: Page[T] = portal.call(paginator._fetch, paginator._params)
        self.items: list[T] = self._first.items
        self.next_page: str | None = self._first.next_page

    def __iter__(self) -> Iterator[Page[T]]:
        return self._portal.iterate(self._pages_from_first, batch=1)

    def all_items(self) -> Iterator[T]:
        """Yield every item of every page, one portal round trip per page."""
        for page in self:
            yield from page.items

    async def _pages_from_first(self) -> AsyncIterator[Page[T]]:
        yield self._first
        if not self._first.next_page:
            return
        rest = AsyncPaginator(
            self._paginator._fetch,
            PaginationParams(
                page_size=self._paginator._params.page_size, page_token=self._first.next_page
            ),
        )
        async for page in rest:
            yield page

    def __repr__(self) -> str:
        return f"PaginatedResponse(items={len(self.items)}, next_page={self.next_page!r})"
