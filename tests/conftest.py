"""Shared fixtures: stores on both backends (a real S3 HTTP server on 127.0.0.1, and real MinIO
when MINIO_ENDPOINT is set), and small seeded datasets."""

from __future__ import annotations

import os
import uuid

import pytest

from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore, S3Settings, S3Store

TEST_ACCESS_KEY, TEST_SECRET_KEY = "ctp-test-access", "ctp-test-secret"


def _serialized(original, lock):
    def serialized(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    return serialized


def _atomic_conditional_writes() -> None:
    """moto checks If-Match / If-None-Match and then writes, with no lock between (a check-then-act
    race that S3 and MinIO do not have): two racing conditional PUTs could both win, and the
    concurrency tests would be testing moto. Serialize its writes, as a real server does."""
    import threading

    from moto.s3.responses import S3Response

    if getattr(S3Response, "_ctp_serialized", False):
        return
    lock = threading.Lock()
    for name in ("_key_response_put", "_key_response_post", "_key_response_delete"):
        setattr(S3Response, name, _serialized(getattr(S3Response, name), lock))
    S3Response._ctp_serialized = True


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over real HTTP on 127.0.0.1 (a real S3 protocol peer, not a mock client),
    with its conditional writes made atomic (_atomic_conditional_writes)."""
    from moto.server import ThreadedMotoServer

    _atomic_conditional_writes()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Settings(endpoint=f"{host}:{port}", access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, secure=False)
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment a step sees when the store is S3 (MINIO_* variables)."""
    monkeypatch.setenv("MINIO_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("MINIO_SECRET_KEY", s3_server.secret_key)
    monkeypatch.setenv("MINIO_SECURE", "false")
    return s3_server


def _real_minio() -> S3Settings | None:
    if not os.environ.get("MINIO_ENDPOINT"):
        return None
    return S3Settings.from_env(os.environ)


STORE_KINDS = ["local", "s3"] + (["minio"] if os.environ.get("MINIO_ENDPOINT") else [])


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    """Every store test runs on a local directory, the S3 server, and MinIO when configured."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    settings = request.getfixturevalue("s3_server") if request.param == "s3" else _real_minio()
    return S3Store("ctp-test", f"t-{uuid.uuid4().hex[:10]}", settings)


@pytest.fixture
def local_store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def seeded_store(local_store):
    seed_digits(local_store, SeedConfig(batches=2))
    return local_store


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory):
    """Models trained once for the whole session on two seeded digits batches: `good` and `good2`
    (3 epochs, different seeds), `weak` (1 epoch at lr 1e-4) and `untrained` (lr 1e-6)."""
    import types

    from components.ingest.config import IngestConfig
    from components.ingest.core import ingest
    from tests.helpers import train_in_process

    root = tmp_path_factory.mktemp("trained")
    store = LocalStore(root / "store")
    seed_digits(store, SeedConfig(batches=2))
    fingerprint = ingest(store, IngestConfig()).fingerprint
    train_in_process(store, fingerprint, root / "good", epochs=3)
    train_in_process(store, fingerprint, root / "good2", epochs=3, seed=3)
    train_in_process(store, fingerprint, root / "weak", epochs=1, lr=1e-4)
    train_in_process(store, fingerprint, root / "untrained", epochs=1, lr=1e-6)
    return types.SimpleNamespace(store=store, fingerprint=fingerprint, root=root)
