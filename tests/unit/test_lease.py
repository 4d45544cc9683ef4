"""One active run per model: the lease in the store, on the local and S3 stores."""

from __future__ import annotations

import threading
import time

import pytest

from components._shared import lease
from components._shared.errors import CtpError
from components._shared.runtime import step
from components.ingest.config import IngestConfig
from components.ingest.core import begin_run

MODEL = "digits"


def test_two_concurrent_takers_exactly_one_wins(store):
    for round_ in range(5):
        model = f"m{round_}"
        barrier = threading.Barrier(8)
        claims = {}

        def take(i, model=model, barrier=barrier, claims=claims):
            barrier.wait()
            claims[i] = lease.try_acquire(store, model, f"run-{i}", 60)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, c in claims.items() if c.won]
        assert len(winners) == 1
        assert {c.holder for c in claims.values()} == {f"run-{winners[0]}"}
        assert lease.read(store, model).run_id == f"run-{winners[0]}"


def test_a_killed_runs_lease_expires_and_the_next_run_takes_it_over(store):
    assert lease.try_acquire(store, MODEL, "killed", 1.0).won  # then never renewed (SIGKILL)
    assert not lease.try_acquire(store, MODEL, "next", 60).won
    time.sleep(1.2)
    assert lease.try_acquire(store, MODEL, "next", 60).won
    body = lease.read(store, MODEL).body
    assert body["run_id"] == "next" and body["taken_over_from"] == "killed"
    with pytest.raises(lease.LeaseLost, match="run next holds the lease, not run killed"):
        lease.renew(store, MODEL, "killed")  # the stalled run learns at its next step
    assert not lease.release(store, MODEL, "killed", reason="late")  # and cannot release it
    assert lease.read(store, MODEL).run_id == "next"


def test_renew_release_and_a_retried_step_reclaims(store):
    assert lease.renew(store, MODEL, "r1") is None  # no lease: a step run on its own
    assert lease.try_acquire(store, MODEL, "r1", 60).won
    first = lease.read(store, MODEL).expires_epoch
    time.sleep(0.05)
    assert lease.renew(store, MODEL, "r1").expires_epoch > first
    assert lease.release(store, MODEL, "r1", reason="train failed")
    assert lease.renew(store, MODEL, "r1", reclaim=False) is None  # the heartbeat never reclaims
    assert lease.renew(store, MODEL, "r1").run_id == "r1"  # a KFP retry of the failed step does
    assert lease.release(store, MODEL, "r1", reason="done")
    assert lease.renew(store, MODEL, "r2") is None
    assert lease.try_acquire(store, MODEL, "r2", 60).won  # a released lease is free at once


def test_begin_run_skips_with_a_recorded_decision_or_waits(store):
    assert begin_run(store, IngestConfig(), "first") == {}
    skip = begin_run(store, IngestConfig(), "second")
    assert skip["decision"] == "skip" and skip["reason"] == "another run is active (run first)"
    assert store.get_json("runs/second/decision.json") == skip
    threading.Timer(0.5, lambda: lease.release(store, MODEL, "first", reason="done")).start()
    waited = begin_run(store, IngestConfig(lease_policy="wait", lease_wait_seconds=30), "third", poll_seconds=0.1)
    assert waited == {} and lease.read(store, MODEL).run_id == "third"
    bounded = begin_run(store, IngestConfig(lease_policy="wait", lease_wait_seconds=1), "fourth", poll_seconds=0.2)
    assert bounded["reason"].startswith("another run is active (run third) (waited ")
    # it waits the whole lease_wait_seconds, then gives up (the last sleep is cut to the bound; the rest is
    # slack for a loaded machine); one that ignored the bound would wait out "third"'s 30-minute lease
    assert 1.0 <= bounded["waited_seconds"] < 3


def test_bad_lease_settings_are_config_errors():
    with pytest.raises(CtpError, match="lease_policy 'queue' is not one of skip, wait"):
        IngestConfig(lease_policy="queue")
    with pytest.raises(CtpError, match="lease_ttl_seconds 0"):
        IngestConfig(lease_ttl_seconds=0)


def test_step_renews_while_it_works_and_releases_when_it_fails(store, monkeypatch):
    if store.uri.startswith("s3://"):
        for name, value in (
            ("MINIO_ENDPOINT", store.settings.endpoint),
            ("MINIO_ACCESS_KEY", store.settings.access_key),
            ("MINIO_SECRET_KEY", store.settings.secret_key),
            ("MINIO_SECURE", "false"),
        ):
            monkeypatch.setenv(name, value)
    assert lease.try_acquire(store, MODEL, "r1", 2.0).won
    with step("train", store.uri, "r1", model=MODEL):
        time.sleep(3.0)  # longer than the TTL: the heartbeat (every 0.5 s) keeps it
        assert lease.read(store, MODEL).active()
        assert not lease.try_acquire(store, MODEL, "r2", 60).won
    with pytest.raises(CtpError), step("evaluate", store.uri, "r1", model=MODEL):
        raise CtpError("boom", code="EVAL_BROKEN")
    assert lease.read(store, MODEL).body["reason"] == "evaluate failed: EVAL_BROKEN"
    assert lease.try_acquire(store, MODEL, "r2", 60).won
    with pytest.raises(lease.LeaseLost), step("deploy-canary", store.uri, "r1", model=MODEL):
        pass  # r1 retried while r2 runs: refused, recorded
    assert store.get_json("runs/r1/error.json")["code"] == "LEASE_LOST"
    assert lease.read(store, MODEL).run_id == "r2"


def test_only_the_lease_holder_moves_the_canary(store):
    """deploy's guard (lease.hold) runs before the canary alias moves: a run whose lease was taken
    over stops there, and the alias and registry keep the holder's state."""
    from components._shared.registry import CANARY, Registry

    assert lease.try_acquire(store, MODEL, "holder", 60).won
    with pytest.raises(lease.LeaseLost, match="run holder holds the lease, not run intruder"):
        lease.hold(store, MODEL, "intruder")
    lease.hold(store, MODEL, "holder")
    assert Registry(store, MODEL).alias(CANARY) is None
