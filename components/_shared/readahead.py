"""Overlap reading with processing: the next item is produced on a worker thread while the
caller works on the current one. pyarrow releases the GIL while it decodes Parquet, so on two
cores a read-check-write loop costs about max(read, process) instead of their sum."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """Yield ``items`` in order, one item ahead. At most two items are alive at once (bounded
    memory), and an exception raised while producing an item reaches the caller at that item."""
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, iterator, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, iterator, _END)
            yield item
