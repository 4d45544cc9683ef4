"""Retention (`ctp store gc`) on a scripted history of 20 runs, on the local and S3 stores.

The expectations below are written out by hand from the policy, not computed by the planner."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time

import pytest
from click.testing import CliRunner

from components._shared import lease, retention
from components._shared.registry import CANARY, CHAMPION, PREVIOUS, Registry
from components._shared.retention import RetentionPolicy

MODEL = "digits"
PROMOTED = [1, 4, 7, 10, 13, 16, 18]
REJECTED = [2, 5, 8, 11, 14, 17]  # published, canary rolled back
GATE_FAILED = [3, 9]
FAILED = [6, 15, 19]  # error.json; 19 failed a day ago (inside the retry grace)
SKIPPED = [12]
ACTIVE = 20  # holds the lease, in canary analysis (its version is the canary)
POLICY = RetentionPolicy(
    failed_grace_hours=72,
    lineage_depth=2,
    version_days=30,
    version_keep=2,
    run_days=30,
    run_keep=5,
    report_days=14,
    report_keep=10,
)


def rid(i: int) -> str:
    return f"r{i:02d}"


def ver(i: int) -> str:
    return f"v{i:02d}"


def fp(i: int) -> str:
    return f"fp{i:02d}"


def iso(t: dt.datetime) -> str:
    return t.isoformat()


def build_history(
    store, now: dt.datetime, *, blob: bytes = b"x" * 64, checkpoint_steps: int = 2, sizes: dict | None = None
) -> None:
    """20 runs, one every 3 days (run i ended 61 - 3i days ago), of each kind above. ``sizes``:
    bytes per checkpoint step, snapshot split and version blob (the benchmark's realistic sizes)."""
    sizes = sizes or {}
    ckpt_blob, snap_blob, model_blob = (b"x" * sizes[k] if k in sizes else blob for k in ("ckpt", "snap", "model"))
    champion = None
    for i in range(1, 21):
        at = now - dt.timedelta(days=61 - 3 * i)
        run = f"runs/{rid(i)}/"
        store.put_json(run + "run.json", {"run_id": rid(i), "model": MODEL, "fingerprint": fp(i), "at": iso(at)})
        if i in SKIPPED:
            store.put_json(run + "decision.json", {"decision": "skip", "model": MODEL, "decided_at": iso(at)})
            store.delete(run + "run.json")  # a skipped run never ingests
            continue
        snap = f"snapshots/{fp(i)}/"
        store.put_bytes(snap + "train.parquet", snap_blob)
        store.put_bytes(snap + "test.parquet", snap_blob)
        store.put_json(snap + "manifest.json", {"fingerprint": fp(i)})
        store.put_json(run + "validation.json", {"status": "ok"})
        for step in range(1, checkpoint_steps + 1):
            store.put_bytes(f"checkpoints/{rid(i)}/step-{step}/model.safetensors", ckpt_blob)
            store.put_json(f"checkpoints/{rid(i)}/step-{step}/manifest.json", {"step": step})
        if i in FAILED:
            failed_at = now - dt.timedelta(days=1) if i == 19 else at
            store.put_json(run + "error.json", {"step": "train", "code": "X", "at": iso(failed_at)})
            continue
        if i == ACTIVE:
            lease.try_acquire(store, MODEL, rid(i), 3600)
        gate = "fail" if i in GATE_FAILED else "pass"
        store.put_json(run + "evaluation.json", {"fingerprint": fp(i), "gate": {"decision": gate}})
        if gate == "fail":
            continue
        card = {
            "run_id": rid(i),
            "parent_version": champion,
            "published_at": iso(at),
            "data": {"fingerprint": fp(i)},
            "trigger_evidence": None,
        }
        if i == 13:  # started by the drift monitor: its report is evidence
            card["trigger_evidence"] = store.describe(f"monitor/{MODEL}/reports/{report_name(now, 40)}")
        prefix = f"models/{MODEL}/versions/{ver(i)}/"
        store.put_bytes(prefix + "model.onnx", model_blob)
        store.put_json(prefix + "card.json", card)
        if i == ACTIVE:
            registry = Registry(store, MODEL)
            registry.move_alias(CANARY, ver(i), registry.alias(CANARY), run_id=rid(i))
            continue
        store.put_json(run + "decision.json", {"decision": "promote" if i in PROMOTED else "rollback",
                                               "model": MODEL, "decided_at": iso(at)})  # fmt: skip
        if i in PROMOTED:
            registry = Registry(store, MODEL)
            registry.promote(ver(i), registry.alias(CHAMPION), run_id=rid(i), reason="test")
            champion = ver(i)
    for days in [*range(30), 40]:
        store.put_json(f"monitor/{MODEL}/reports/{report_name(now, days)}", {"days": days})
    store.put_json(f"monitor/{MODEL}/submitted/w1-abc.json", {"claim": True})


def report_name(now: dt.datetime, days: int) -> str:
    return f"{now - dt.timedelta(days=days):%Y%m%dT%H%M%SZ}-0000.json"


def under(keys, *prefixes) -> set[str]:
    return {k for k in keys if k.startswith(prefixes)}


def expected_deletions(before: set[str], now: dt.datetime) -> set[str]:
    """By hand from POLICY: protected versions = champion v18 + 2 parents (v16, v13), previous v16
    (+ v13, v10), canary v20 (+ v18, v16); other versions kept when younger than 30 days (v11,
    v14, v17). Checkpoints go for every run but the active r20 and r19 (failed a day ago).
    Snapshots stay for kept versions and r19/r20. Run records stay for kept versions, the last 30
    days and the newest 5 (r10..r20). Reports older than 14 days go, but the one v13 cites."""
    gone = set()
    for i in (1, 2, 4, 5, 7, 8):
        gone |= under(before, f"models/{MODEL}/versions/{ver(i)}/")
    for i in [*range(1, 12), *range(13, 19)]:
        gone |= under(before, f"checkpoints/{rid(i)}/")
    for i in (*range(1, 10), 15):
        gone |= under(before, f"snapshots/{fp(i)}/")
    for i in range(1, 10):
        gone |= under(before, f"runs/{rid(i)}/")
    for days in range(14, 30):
        gone.add(f"monitor/{MODEL}/reports/{report_name(now, days)}")
    return gone


@pytest.fixture
def history(store):
    now = dt.datetime.now(dt.UTC)
    build_history(store, now)
    return store, now


def test_gc_removes_exactly_what_the_policy_says_and_a_second_gc_is_a_no_op(history):
    store, now = history
    before = set(store.list(""))
    planned = retention.plan(store, POLICY)
    assert set(planned.keys()) == expected_deletions(before, now)
    assert set(store.list("")) == before  # planning deletes nothing
    swept = retention.sweep(store, planned, POLICY)
    after = set(store.list(""))
    assert before - after == expected_deletions(before, now)
    assert swept.objects_deleted == len(before - after) and not swept.skipped
    # what must survive: the lineage, the active run, the retry, audit, aliases, lease, claims
    registry = Registry(store, MODEL)
    assert set(registry.versions()) == {ver(i) for i in (10, 11, 13, 14, 16, 17, 18, 20)}
    assert registry.aliases() == {CHAMPION: ver(18), PREVIOUS: ver(16), CANARY: ver(20)}
    assert len(registry.audit_log()) == len(under(before, f"models/{MODEL}/audit/"))
    assert lease.read(store, MODEL).run_id == rid(ACTIVE)
    for i in (19, 20):
        assert under(after, f"checkpoints/{rid(i)}/") == under(before, f"checkpoints/{rid(i)}/")
        assert store.exists(f"snapshots/{fp(i)}/train.parquet")
    assert f"monitor/{MODEL}/submitted/w1-abc.json" in after
    assert f"monitor/{MODEL}/reports/{report_name(now, 40)}" in after  # v13's evidence
    assert retention.plan(store, POLICY).groups == []  # a second gc has nothing to do


def test_default_policy_keeps_more_than_the_test_policy(history):
    """Defaults (run_keep 50, version_keep 5): the same history loses only checkpoints, old
    versions beyond the newest five and unreferenced snapshots (31 reports < 200)."""
    store, now = history
    planned = retention.plan(store)
    assert not [g for g in planned.groups if g.kind == "run"]
    kinds = {g.kind for g in planned.groups}
    assert kinds == {"checkpoints", "snapshot", "version"}


def test_a_run_starting_during_gc_keeps_its_snapshot_and_completes(history):
    """After the plan, run r21 of another model starts on the data of fp05 (planned for deletion):
    it takes its lease and records its snapshot reference (what ingest does first). The sweep's
    re-check sees it and keeps the snapshot; the run then reads it whole."""
    store, _ = history
    planned = retention.plan(store, POLICY)
    assert "fp05" in {g.name for g in planned.groups if g.kind == "snapshot"}
    assert lease.try_acquire(store, "other", "r21", 3600).won
    retention.reference_snapshot(store, "r21", "other", "fp05")
    swept = retention.sweep(store, planned, POLICY)
    assert swept.skipped == {"snapshot fp05": "an active run started using it"}
    assert store.get_json("snapshots/fp05/manifest.json") == {"fingerprint": "fp05"}
    assert store.get_bytes("snapshots/fp05/train.parquet") == b"x" * 64
    assert not store.exists("snapshots/fp05/" + retention.TOMBSTONE)
    store.put_json("runs/r21/decision.json", {"decision": "promote", "model": "other"})
    assert lease.release(store, "other", "r21", reason="done")
    # a retried run: r19's checkpoints were kept, and it starts again before a gc re-checks
    assert lease.try_acquire(store, MODEL + "2", rid(19), 3600).won
    again = retention.plan(store, POLICY)
    assert rid(19) in again.active_runs
    assert not [g for g in again.groups if g.name in (rid(19), fp(19))]


def test_a_retry_started_after_the_plan_keeps_its_checkpoints(history):
    """r15's checkpoints are planned for deletion (failed 16 days ago); a retry of r15 takes a
    lease before the sweep reaches them: the sweep keeps them."""
    store, _ = history
    planned = retention.plan(store, POLICY)
    assert rid(15) in {g.name for g in planned.groups if g.kind == "checkpoints"}
    assert lease.try_acquire(store, "m15", rid(15), 3600).won
    swept = retention.sweep(store, planned, POLICY)
    assert swept.skipped[f"checkpoints {rid(15)}"] == "the run is active again"
    assert store.exists(f"checkpoints/{rid(15)}/step-2/manifest.json")


def test_a_version_aliased_after_the_plan_is_kept(history):
    store, _ = history
    planned = retention.plan(store, POLICY)
    registry = Registry(store, MODEL)
    registry.move_alias(PREVIOUS, ver(2), registry.alias(PREVIOUS), run_id="operator")
    swept = retention.sweep(store, planned, POLICY)
    why = "now an alias or in an alias's lineage"
    assert swept.skipped == {f"version {MODEL}:{ver(2)}": why, f"version {MODEL}:{ver(1)}": why}  # v01: its parent
    assert {ver(1), ver(2)} <= set(registry.versions())


def test_ingest_waits_out_a_gc_that_marked_its_snapshot(store):
    """The other order: gc marked fp01 before the run referenced it. reference_snapshot returns
    only once the tombstone is gone (gc finished), so ingest then sees the snapshot whole or gone."""
    store.put_json("snapshots/fp01/manifest.json", {})
    store.put_json("snapshots/fp01/" + retention.TOMBSTONE, {"epoch": time.time()})
    timer = threading.Timer(0.6, lambda: store.delete("snapshots/fp01/" + retention.TOMBSTONE))
    timer.start()
    started = time.perf_counter()
    retention.reference_snapshot(store, "r1", MODEL, "fp01")
    assert time.perf_counter() - started >= 0.5
    assert store.get_json("runs/r1/run.json")["fingerprint"] == "fp01"
    store.put_json("snapshots/fp02/" + retention.TOMBSTONE, {"epoch": time.time() - 3600})  # a dead gc's
    started = time.perf_counter()
    retention.reference_snapshot(store, "r2", MODEL, "fp02")
    assert time.perf_counter() - started < 0.5


def test_delete_many_removes_in_batches_and_ignores_missing_keys(store):
    keys = [f"checkpoints/r/step-{i}/x" for i in range(2500)]
    for key in keys[:20]:
        store.put_bytes(key, b"1")
    store.put_bytes("checkpoints/keep/x", b"1")
    assert store.delete_many(keys) == 2500
    assert store.list("checkpoints/") == ["checkpoints/keep/x"]


def test_cli_dry_run_by_default_then_apply_json(history):
    store, now = history
    before = set(store.list(""))
    policy = [f"--{f.name.replace('_', '-')}={getattr(POLICY, f.name)}" for f in dataclasses.fields(POLICY)]
    env = _env(store)
    dry = CliRunner().invoke(_main(), ["store", "gc", "--store", store.uri, *policy], env=env)
    assert dry.exit_code == 0, dry.output
    assert "would remove" in dry.output and set(store.list("")) == before
    applied = CliRunner().invoke(_main(), ["store", "gc", "--store", store.uri, "--apply", "--json", *policy], env=env)
    assert applied.exit_code == 0, applied.output
    out = json.loads(applied.output)
    assert out["dry_run"] is False and out["active_runs"] == [rid(ACTIVE)]
    assert out["result"]["objects_deleted"] == len(expected_deletions(before, now))
    assert before - set(store.list("")) == expected_deletions(before, now)


def test_help_shows_the_policy_defaults():
    result = CliRunner().invoke(_main(), ["store", "gc", "--help"])
    for field in dataclasses.fields(RetentionPolicy):
        assert f"--{field.name.replace('_', '-')}" in result.output
    assert "[default: 72.0]" in result.output


def test_a_negative_setting_is_a_one_line_error():
    result = CliRunner().invoke(_main(), ["store", "gc", "--run-keep", "-1"])
    assert result.exit_code == 2 and "CONFIG_INVALID: retention run_keep=-1" in result.output


def _main():
    from pipelines.cli import main

    return main


def _env(store) -> dict:
    if not store.uri.startswith("s3://"):
        return {}
    s = store.settings
    return {"MINIO_ENDPOINT": s.endpoint, "MINIO_ACCESS_KEY": s.access_key, "MINIO_SECRET_KEY": s.secret_key,
            "MINIO_SECURE": "false"}  # fmt: skip
