"""What every step does around its core call: open the store, and on a user-facing error record
it under runs/<run-id>/error.json (so `ctp run` can print one line) before failing the task."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from components._shared.errors import CtpError
from components._shared.registry import utc_now
from components._shared.store import Store, open_store


@contextlib.contextmanager
def step(name: str, store_uri: str, run_id: str) -> Iterator[Store]:
    store = open_store(store_uri)
    try:
        yield store
    except CtpError as err:
        store.put_json(
            f"runs/{run_id}/error.json",
            {"step": name, "code": err.code, "message": err.message, "hint": err.hint, "at": utc_now()},
        )
        print(f"ctp: {name}: {err.one_line()}", file=sys.stderr, flush=True)
        raise


def recorded_error(store: Store, run_id: str) -> CtpError | None:
    """The error a step of ``run_id`` recorded, rebuilt so the CLI prints the same one line."""
    found = store.get_json_with_etag(f"runs/{run_id}/error.json")
    if found is None:
        return None
    error = found[0]
    return CtpError(f"{error['step']}: {error['message']}", hint=error.get("hint", ""), code=error["code"])
