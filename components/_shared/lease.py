"""One active run per model: a lease object in the store, ``models/<model>/lease.json``.

- **Claim**: compare-and-swap against "absent" (create-only), or against the ETag of a lease that
  was released or has expired (a killed run's lease is taken over, never deleted by a third party).
- **Renew**: the holder moves ``expires_at`` forward by the lease's own ``ttl_seconds`` (CAS on its
  ETag). Every step renews on entry and from a heartbeat thread while it works (runtime.step).
- **Release**: the holder CASes the lease to ``state: released`` (never an unconditional delete, so
  a release cannot remove a lease another run took over after this one expired).

A run whose lease was taken over gets LEASE_LOST at its next renewal; the canary alias is only
moved after ``hold`` confirmed the lease (components/deploy_canary/core.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import threading
import time
from collections.abc import Callable

from components._shared.errors import CtpError, StoreKeyError
from components._shared.store import Store, check_key, json_bytes

HELD, RELEASED = "held", "released"
POLICIES = ("skip", "wait")
GUARD_TTL_SECONDS = 600  # a lease deploy claims itself (a step run outside a leased run)
_CAS_ATTEMPTS = 20


class LeaseLost(CtpError):
    """Another run holds this model's lease: this run's expired and was taken over."""

    code = "LEASE_LOST"


def lease_key(model: str) -> str:
    if "/" in model:
        raise StoreKeyError(f"model name {model[:80]!r} must be one path segment")
    return check_key(f"models/{model}/lease.json")


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


@dataclasses.dataclass(frozen=True)
class Lease:
    model: str
    run_id: str | None  # the holder (None once released)
    state: str
    expires_epoch: float
    ttl_seconds: float
    etag: str
    body: dict

    def active(self, now: float | None = None) -> bool:
        return self.state == HELD and self.expires_epoch > (time.time() if now is None else now)


@dataclasses.dataclass(frozen=True)
class Claim:
    won: bool
    holder: str | None  # who holds the lease now (this run when won)
    waited_seconds: float = 0.0


def read(store: Store, model: str) -> Lease | None:
    found = store.get_json_with_etag(lease_key(model))
    if found is None:
        return None
    body, etag = found
    return Lease(
        model=model,
        run_id=body.get("run_id"),
        state=body.get("state", HELD),
        expires_epoch=float(body.get("expires_epoch", 0.0)),
        ttl_seconds=float(body.get("ttl_seconds", GUARD_TTL_SECONDS)),
        etag=etag,
        body=body,
    )


def _held_body(model: str, run_id: str, ttl: float, now: float, since: Lease | None) -> dict:
    ours = since is not None and since.state == HELD and since.run_id == run_id
    body = {
        "model": model,
        "run_id": run_id,
        "state": HELD,
        "ttl_seconds": ttl,
        "acquired_at": since.body.get("acquired_at") if ours else _iso(now),
        "renewed_at": _iso(now),
        "expires_at": _iso(now + ttl),
        "expires_epoch": now + ttl,
    }
    if since is not None and not ours and since.run_id:
        body["taken_over_from"] = since.run_id  # an expired holder (a killed run)
    return body


def try_acquire(store: Store, model: str, run_id: str, ttl: float, *, now: float | None = None) -> Claim:
    """Take the lease if it is free, released, expired, or already ours (a retried step)."""
    for _ in range(_CAS_ATTEMPTS):
        at = time.time() if now is None else now
        current = read(store, model)
        if current is not None and current.active(at) and current.run_id != run_id:
            return Claim(False, current.run_id)
        body = _held_body(model, run_id, ttl, at, current)
        if store.compare_and_swap(lease_key(model), json_bytes(body), current.etag if current else None):
            return Claim(True, run_id)
    raise LeaseLost(f"model {model}: the lease kept changing under run {run_id}", hint="retry the run")


def acquire(
    store: Store,
    model: str,
    run_id: str,
    ttl: float,
    *,
    policy: str = "skip",
    wait_seconds: float = 0.0,
    poll_seconds: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Claim:
    """A run's claim at its start. ``skip``: one attempt. ``wait``: poll until the lease is free,
    for at most ``wait_seconds``; the Claim says who still holds it when that bound passes."""
    started = clock()
    while True:
        claim = try_acquire(store, model, run_id, ttl)
        waited = clock() - started
        if claim.won or policy == "skip" or waited >= wait_seconds:
            return dataclasses.replace(claim, waited_seconds=round(waited, 3))
        sleep(max(0.0, min(poll_seconds, wait_seconds - waited)))


def renew(store: Store, model: str, run_id: str, *, now: float | None = None, reclaim: bool = True) -> Lease | None:
    """Extend this run's lease. None when the run holds none (no lease, another run's expired or
    released one: e.g. a step run on its own). With ``reclaim`` (a step's start), a lease this run
    released (a failed step) is claimed again for its retry. LEASE_LOST when another run holds it."""
    for _ in range(_CAS_ATTEMPTS):
        at = time.time() if now is None else now
        current = read(store, model)
        if current is None:
            return None
        ours = current.run_id == run_id and current.state == HELD
        retried = reclaim and current.state == RELEASED and current.body.get("released_by") == run_id
        if not (ours or retried):
            if current.active(at):
                raise LeaseLost(
                    f"model {model}: run {current.run_id} holds the lease, not run {run_id}",
                    hint="this run's lease expired and was taken over; the other run continues",
                )
            return None
        body = _held_body(model, run_id, current.ttl_seconds, at, current)
        if store.compare_and_swap(lease_key(model), json_bytes(body), current.etag):
            return read(store, model)
    raise LeaseLost(f"model {model}: the lease kept changing under run {run_id}", hint="retry the run")


def hold(store: Store, model: str, run_id: str) -> None:
    """Before moving the canary alias: this run holds the lease (renewed now), claiming it when
    nobody does. LEASE_LOST when another run holds it."""
    if renew(store, model, run_id) is not None:
        return
    claim = try_acquire(store, model, run_id, GUARD_TTL_SECONDS)
    if not claim.won:
        raise LeaseLost(
            f"model {model}: run {claim.holder} holds the lease; run {run_id} may not move the canary",
            hint="one run per model at a time; re-run when it has finished",
        )


def release(store: Store, model: str, run_id: str, *, reason: str) -> bool:
    """Give the lease up if this run holds it; False when it does not (nothing changes)."""
    for _ in range(_CAS_ATTEMPTS):
        current = read(store, model)
        if current is None or current.state != HELD or current.run_id != run_id:
            return False
        body = {
            "model": model,
            "run_id": None,
            "state": RELEASED,
            "released_by": run_id,
            "released_at": _iso(time.time()),
            "reason": reason,
            "expires_epoch": 0.0,
            "ttl_seconds": current.ttl_seconds,
        }
        if store.compare_and_swap(lease_key(model), json_bytes(body), current.etag):
            return True
    return False


class Heartbeat:
    """Renews the lease every quarter of its TTL while a step works (training can take hours).
    A lost lease is remembered (``lost``) and printed; the next renewal point fails the run."""

    def __init__(self, store: Store, model: str, run_id: str, ttl_seconds: float):
        self.store, self.model, self.run_id = store, model, run_id
        self.interval = max(0.5, ttl_seconds / 4)
        self.lost: CtpError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctp-lease-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                renew(self.store, self.model, self.run_id, reclaim=False)  # a release in the step is final
            except LeaseLost as err:
                self.lost = err
                print(f"ctp: lease: {err.one_line()}", file=sys.stderr, flush=True)
                return
            except CtpError as err:  # the store is briefly unavailable: the next beat tries again
                print(f"ctp: lease renewal failed: {err.one_line()}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
