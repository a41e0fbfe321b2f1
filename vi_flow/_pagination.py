"""Paging through lists: one async paginator, and the sync face the seeds call ``PaginatedResponse``.

``client.flows.list()`` returns an :class:`AsyncPaginator`. Awaiting it gives the first
page; ``async for`` yields pages, fetched lazily; ``.all_items()`` yields every item. The
sync :class:`PaginatedResponse` holds the first page (``.items``), iterates pages and has
``.all_items()``, moving one page per portal round trip. A repeated page token or more than
:data:`MAX_PAGES` pages raises :class:`~vi_flow.PaginationError` instead of spinning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import PaginationError
from .models.common import Page, PaginationParams

if TYPE_CHECKING:
    from ._portal import Portal

__all__ = ["MAX_PAGES", "AsyncPaginator", "PaginatedResponse"]

T = TypeVar("T")
MAX_PAGES = 100_000

FetchPage = Callable[[PaginationParams], Awaitable[Page[T]]]


class AsyncPaginator(Generic[T]):
    """A lazily fetched list.

    Example:
        ```python
        first = await client.flows.list()            # Page: .items, .next_page
        async for page in client.flows.list(): ...   # every page
        async for flow in client.flows.list().all_items(): ...
        ```
    """

    def __init__(self, fetch: FetchPage[T], params: PaginationParams) -> None:
        self._fetch = fetch
        self._params = params

    def __await__(self) -> Generator[Any, None, Page[T]]:
        return self._fetch(self._params).__await__()

    async def __aiter__(self) -> AsyncIterator[Page[T]]:
        seen: set[str] = set()
        params = self._params
        for _ in range(MAX_PAGES):
            page = await self._fetch(params)
            yield page
            token = page.next_page
            if not token:
                return
            if token in seen:
                raise PaginationError(f"the server repeated page token {token!r}; stopping")
            seen.add(token)
            params = PaginationParams(page_size=params.page_size, page_token=token)
        raise PaginationError(f"more than {MAX_PAGES} pages; stopping")

    async def all_items(self) -> AsyncIterator[T]:
        """Yield every item of every page."""
        async for page in self:
            for item in page.items:
                yield item


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
