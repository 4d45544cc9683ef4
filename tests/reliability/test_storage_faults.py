"""Storage faults between the store client and a real S3 server (moto over HTTP), injected by
FaultProxy: 503 SlowDown bursts, connection resets, lost success replies, added latency.

Within the retry budget (bursts of up to 4 consecutive faults) the path seed -> ingest ->
registry publish -> promote ends with the same artifacts, byte for byte, as a fault-free run;
past it the caller gets StoreUnavailable within 60 s and nothing is half-published.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from faultproxy import FAILURES, FaultProxy, Rule
from safetensors.numpy import save as safetensors_bytes

from components._shared.errors import AlreadyExists, StoreNotFound, StoreUnavailable
from components._shared.registry import CHAMPION, Registry
from components._shared.retry import RetryPolicy
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import S3Settings, S3Store, sha256_bytes
from components.ingest.config import IngestConfig
from components.ingest.core import ingest

MODEL = "digits"
BUDGET = RetryPolicy().attempts  # requests per operation before StoreUnavailable
# Fast backoff keeps the suite short; the retry decisions are the production ones.
FAST = RetryPolicy(base_delay=0.01, max_delay=0.1)


@pytest.fixture
def proxy(s3_server):
    proxy = FaultProxy(s3_server.endpoint)
    yield proxy
    proxy.close()


def _store(proxy: FaultProxy, settings: S3Settings, policy: RetryPolicy = FAST) -> S3Store:
    via_proxy = S3Settings(proxy.endpoint, settings.access_key, settings.secret_key, secure=False)
    return S3Store("ctp-test", f"fault-{uuid.uuid4().hex[:10]}", via_proxy, retry_policy=policy)


def _model_files(workdir: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    workdir.mkdir(parents=True, exist_ok=True)
    reference = io.BytesIO()
    np.save(reference, rng.random((40, 64)), allow_pickle=False)
    contents = {
        "model.safetensors": safetensors_bytes({"w": rng.random((16, 16)).astype(np.float32)}),
        "meta.json": json.dumps({"arch": "small_cnn", "image_shape": [8, 8, 1]}).encode(),
        "reference.npy": reference.getvalue(),
    }
    for name, data in contents.items():
        (workdir / name).write_bytes(data)
    return {name: workdir / name for name in contents}


def _run_path(store: S3Store, workdir: Path) -> dict:
    """seed -> ingest -> publish -> promote; returns what must not depend on faults."""
    seed_digits(store, SeedConfig(batches=2))
    result = ingest(store, IngestConfig())
    registry = Registry(store, MODEL)
    card = registry.publish("v1", _model_files(workdir), {"data": {"batches": result.batches}})
    assert registry.promote("v1", registry.alias(CHAMPION), run_id="r1", reason="first model")
    manifest = store.get_json(f"snapshots/{result.fingerprint}/manifest.json")
    blobs = {
        k: sha256_bytes(store.get_bytes(k))
        for k in store.list("")
        if k.startswith(("datasets/", "traffic/")) or k.endswith((".parquet", ".safetensors", ".npy", "meta.json"))
    }
    audit = registry.audit_log()
    return {
        "fingerprint": result.fingerprint,
        "objects": manifest["objects"],
        "files": card["files"],
        "card_files": registry.card("v1")["files"],
        "blobs": blobs,
        "aliases": registry.aliases(),
        "versions": registry.versions(),
        "audit": [(e["alias"], e["version"], e["won"]) for e in audit],
        "keys": len(store.list("")),
    }


@pytest.fixture(scope="module")
def reference_run(s3_server, tmp_path_factory):
    proxy = FaultProxy(s3_server.endpoint)
    try:
        outcome = _run_path(_store(proxy, s3_server), tmp_path_factory.mktemp("reference"))
        requests = len(proxy.log)
    finally:
        proxy.close()
    return outcome, requests


# --- within the budget: the same artifacts --------------------------------------------------------


@pytest.mark.parametrize("burst", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", FAILURES)
def test_bursts_of_transient_faults_change_nothing(proxy, s3_server, reference_run, tmp_path, kind, burst):
    """``burst`` consecutive faults in every ``burst + 4`` requests, all through the run."""
    expected, requests = reference_run
    rule = proxy.add(Rule(kind, times=burst, every=burst + 4))
    assert _run_path(_store(proxy, s3_server), tmp_path) == expected
    print(f"{kind} x{burst}: {rule.fired} faults survived in {len(proxy.log)} requests")
    assert rule.fired >= requests // (burst + 4) * burst // 2  # faults landed all over the run
    assert proxy.faults() == rule.fired


def test_added_latency_changes_nothing(proxy, s3_server, reference_run, tmp_path):
    expected, _ = reference_run
    rule = proxy.add(Rule("latency", times=1, every=3, delay=0.05))
    assert _run_path(_store(proxy, s3_server), tmp_path) == expected
    assert rule.fired > 10


def test_lost_reply_on_create_only_write_is_success(proxy, s3_server):
    """The server stores the object, the reply is lost, the retry gets 412: ours, so success."""
    store = _store(proxy, s3_server)
    rule = proxy.add(Rule("lost_reply", match=lambda r: r.method == "PUT" and r.conditional))
    etag = store.put_bytes("models/m/versions/v/card.json", b"{}", create_only=True)
    assert rule.fired == 1
    statuses = [a for r, a in proxy.log if r.method == "PUT" and r.path.endswith("card.json")]
    assert statuses == ["lost_reply", "forward"]  # the write went out twice; the second got 412
    assert store.get_with_etag("models/m/versions/v/card.json") == (b"{}", etag)
    with pytest.raises(AlreadyExists):  # a different writer is still refused
        store.put_bytes("models/m/versions/v/card.json", b"{}", create_only=True)


def test_lost_reply_on_compare_and_swap_is_a_win(proxy, s3_server, tmp_path):
    """A promote whose If-Match PUT landed but whose reply was lost has won (not 'moved')."""
    store = _store(proxy, s3_server)
    registry = Registry(store, MODEL)
    registry.publish("v1", _model_files(tmp_path), {})
    proxy.add(Rule("lost_reply", match=lambda r: r.method == "PUT" and "aliases/champion" in r.path))
    assert registry.promote("v1", None, run_id="r", reason="first")
    assert registry.aliases() == {CHAMPION: "v1"}
    assert [(e["version"], e["won"]) for e in registry.audit_log()] == [("v1", True)]


def test_multipart_upload_survives_faults_on_every_step(proxy, s3_server, tmp_path):
    """minio-py does not retry the POST that starts a multipart upload (nor, here, anything):
    the store's retry covers it, the parts and the completion."""
    store = _store(proxy, s3_server)
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(6 * 1024 * 1024))
    for step in (
        lambda r: r.method == "POST" and r.query.startswith("uploads"),
        lambda r: r.method == "PUT" and "partNumber=2" in r.query,
        lambda r: r.method == "POST" and "uploadId" in r.query,
    ):
        proxy.add(Rule("slowdown", times=BUDGET - 2, match=step))
    store.put_file("models/m/big.bin", big)
    assert proxy.faults() == 3 * (BUDGET - 2)
    assert sha256_bytes(store.get_bytes("models/m/big.bin")) == sha256_bytes(big.read_bytes())


# --- past the budget: a typed error, nothing half-published ---------------------------------------


@pytest.mark.parametrize("kind", FAILURES)
def test_outage_during_publish_leaves_no_version(proxy, s3_server, tmp_path, kind):
    store = _store(proxy, s3_server, RetryPolicy())  # the production backoff: the 60 s promise
    registry = Registry(store, MODEL)
    registry.publish("v1", _model_files(tmp_path / "v1"), {})
    assert registry.promote("v1", None, run_id="r1", reason="first")
    proxy.add(
        Rule(
            kind,
            times=10_000,
            match=lambda r: (
                r.method == "PUT" and "/v2/" in r.path and ("card.json" in r.path or "reference.npy" in r.path)
            ),
        )
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        registry.publish("v2", _model_files(tmp_path / "v2"), {})
    assert time.monotonic() - started < 60
    assert caught.value.code == "STORE_UNAVAILABLE"
    proxy.clear()
    assert registry.versions() == ["v1"]  # v2 has no card, so it is not a version
    assert not store.exists("models/digits/versions/v2/card.json")
    with pytest.raises(StoreNotFound):  # and no alias can point at it
        registry.promote("v2", registry.alias(CHAMPION), run_id="r2", reason="would be torn")
    assert registry.aliases() == {CHAMPION: "v1"}


def test_outage_during_promote_leaves_champion(proxy, s3_server, tmp_path):
    store = _store(proxy, s3_server, RetryPolicy())
    registry = Registry(store, MODEL)
    for version in ("v1", "v2"):
        registry.publish(version, _model_files(tmp_path / version), {})
    assert registry.promote("v1", None, run_id="r1", reason="first")
    champion = registry.alias(CHAMPION)
    proxy.add(Rule("reset", times=10_000, match=lambda r: "aliases/champion" in r.path and r.method == "PUT"))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        registry.promote("v2", champion, run_id="r2", reason="outage")
    assert time.monotonic() - started < 60
    proxy.clear()
    assert registry.alias(CHAMPION) == champion  # same version, same ETag: not moved


def test_outage_during_ingest_publishes_no_snapshot(proxy, s3_server):
    store = _store(proxy, s3_server, RetryPolicy())
    seed_digits(store, SeedConfig(batches=2))
    proxy.add(Rule("slowdown", times=10_000, match=lambda r: r.method == "PUT" and r.path.endswith("manifest.json")))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        ingest(store, IngestConfig())
    assert time.monotonic() - started < 60
    proxy.clear()
    assert [k for k in store.list("snapshots/") if k.endswith("manifest.json")] == []


def test_outage_while_reading_batches_is_store_unavailable_not_a_corrupt_file(proxy, s3_server):
    store = _store(proxy, s3_server, RetryPolicy())
    seed_digits(store, SeedConfig(batches=2))
    proxy.add(Rule("slowdown", times=10_000, match=lambda r: r.method == "GET" and "/datasets/" in r.path))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        ingest(store, IngestConfig())
    assert time.monotonic() - started < 60
    proxy.clear()
    assert store.list("snapshots/") == []


def test_dead_endpoint_is_store_unavailable_within_a_minute(s3_server):
    """Nothing listening at all (every connection refused): the same typed error, in time."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: connections to it are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = S3Settings(f"127.0.0.1:{port}", s3_server.access_key, s3_server.secret_key, secure=False)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        S3Store("ctp-test", "p", dead)
    assert time.monotonic() - started < 60
