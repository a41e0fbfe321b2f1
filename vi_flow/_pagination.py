"""Paging through lists: the one async paginator.

``client.flows.list()`` returns an :class:`AsyncPaginator`. Awaiting it gives the first
page; ``async for`` yields pages, fetched lazily; ``.all_items()`` yields every item. A
repeated page token or more than :data:`MAX_PAGES` pages raises
:class:`~vi_flow.PaginationError` instead of spinning. The blocking face the seeds call
``PaginatedResponse`` lives in :mod:`vi_flow.sync._pagination`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Generic, Literal, TypeVar

from ._errors import PaginationError
from .models.common import Page, PaginationParams

__all__ = ["MAX_PAGES", "AsyncPaginator", "FetchPage", "Order", "check_order"]

T = TypeVar("T")
MAX_PAGES = 100_000

FetchPage = Callable[[PaginationParams], Awaitable[Page[T]]]
Order = Literal["newest", "oldest"]
"""The order of a list: ``"newest"`` first (every list's default) or ``"oldest"`` first."""


def check_order(order: str) -> Order:
    """``order`` as sent to the server (any case).

    Raises:
        ValueError: Not ``"newest"`` or ``"oldest"``, before any request.
    """
    value = order.strip().lower() if isinstance(order, str) else None
    if value == "newest":
        return "newest"
    if value == "oldest":
        return "oldest"
    raise ValueError(f"order must be 'newest' or 'oldest', got {order!r}")


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
