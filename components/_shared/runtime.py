"""What every step does around its core call: open the store, renew the run's lease on its model
(and keep renewing it while the step works), and on a user-facing error record it under
runs/<run-id>/error.json (so `ctp run` can print one line) before failing the task. A failing
step releases the lease, so the next run need not wait for it to expire (a retry of the step
claims it again)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from components._shared import lease
from components._shared.errors import CtpError
from components._shared.registry import utc_now
from components._shared.store import Store, open_store


@contextlib.contextmanager
def step(name: str, store_uri: str, run_id: str, *, model: str = "") -> Iterator[Store]:
    """``model``: renew this run's lease on it (LEASE_LOST when another run took it over)."""
    store = open_store(store_uri)
    heartbeat = None

    def give_up(why: str) -> None:
        if heartbeat is not None:
            heartbeat.stop()  # before the release: a beat after it would claim the lease again
        if model:
            lease.release(store, model, run_id, reason=f"{name} failed: {why}")

    try:
        if model:
            held = lease.renew(store, model, run_id)
            if held is not None:
                heartbeat = lease.Heartbeat(store, model, run_id, held.ttl_seconds).start()
        yield store
    except lease.LeaseLost as err:
        _record(store, name, run_id, err)
        raise
    except CtpError as err:
        _record(store, name, run_id, err)
        give_up(err.code)
        raise
    except Exception as err:
        give_up(type(err).__name__)
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def _record(store: Store, name: str, run_id: str, err: CtpError) -> None:
    store.put_json(
        f"runs/{run_id}/error.json",
        {"step": name, "code": err.code, "message": err.message, "hint": err.hint, "at": utc_now()},
    )
    print(f"ctp: {name}: {err.one_line()}", file=sys.stderr, flush=True)


def recorded_error(store: Store, run_id: str) -> CtpError | None:
    """The error a step of ``run_id`` recorded, rebuilt so the CLI prints the same one line."""
    found = store.get_json_with_etag(f"runs/{run_id}/error.json")
    if found is None:
        return None
    error = found[0]
    return CtpError(f"{error['step']}: {error['message']}", hint=error.get("hint", ""), code=error["code"])
