"""Crashes: writers SIGKILLed mid-way, then readers and the janitor (`ctp store janitor`).

- an uploader killed during a multipart upload leaves nothing at the final key, and the janitor
  aborts the incomplete upload;
- a publisher killed before each of its writes in turn (blobs, card, champion, previous, audit)
  never leaves a torn champion: the alias always names a version whose card is complete and
  whose blobs match their checksums; the janitor then removes the card-less version dir.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from faultproxy import FaultProxy, Rule

from components._shared.janitor import sweep
from components._shared.registry import CHAMPION, Registry
from components._shared.store import PART_SIZE, LocalStore, S3Settings, S3Store, Store, sha256_bytes
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = "digits"
FILES = {
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "model.onnx": b"onnx" * 256,
    "meta.json": b'{"arch": "small_cnn"}',
    "reference.npy": b"\x93NUMPY" + b"\x00" * 64,
}


def _env(settings: S3Settings | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if settings is not None:
        env.update(
            MINIO_ENDPOINT=settings.endpoint,
            MINIO_ACCESS_KEY=settings.access_key,
            MINIO_SECRET_KEY=settings.secret_key,
            MINIO_SECURE="false",
        )
    return env


def _janitor(uri: str, settings: S3Settings | None, *args: str) -> dict:
    result = CliRunner().invoke(main, ["store", "janitor", "--store", uri, "--json", *args], env=_env(settings))
    assert result.exit_code == 0, result.output
    # stdout only: a FaultProxy thread may still print a broken pipe (the killed uploader) to stderr
    return json.loads(result.stdout)


# --- SIGKILL during a multipart upload ------------------------------------------------------------

_UPLOADER = """
import sys
from components._shared.store import open_store
open_store(sys.argv[1]).put_file(sys.argv[2], sys.argv[3])
"""


@pytest.mark.slow
def test_killed_multipart_upload_leaves_nothing_and_janitor_aborts_it(s3_server, tmp_path):
    proxy = FaultProxy(s3_server.endpoint)  # slows each part so the kill lands mid-upload
    try:
        via_proxy = S3Settings(proxy.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
        uri = f"s3://ctp-test/crash-{uuid.uuid4().hex[:8]}"
        S3Store("ctp-test", "", s3_server)  # the admin's bucket: open_store in the uploader does not create it
        big = tmp_path / "model.onnx"
        big.write_bytes(os.urandom(4 * PART_SIZE + 1))
        proxy.add(Rule("latency", times=10_000, delay=0.5, match=lambda r: "partNumber" in r.query))
        # and hold the completing POST, so a starved test process cannot be overtaken by the upload
        proxy.add(
            Rule("latency", times=10_000, delay=30.0, match=lambda r: r.method == "POST" and "uploadId" in r.query)
        )
        key = "models/digits/versions/v9/model.onnx"
        child = subprocess.Popen(
            [sys.executable, "-c", _UPLOADER, uri, key, str(big)], env=_env(via_proxy), cwd=ROOT, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while sum("partNumber" in r.query for r, _ in proxy.log) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, f"the uploader ended before the kill ({child.returncode}): {child.stderr.read()!r}"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        proxy.close()
    store = S3Store("ctp-test", uri.split("/", 3)[3], s3_server)
    assert not store.exists(key)  # nothing visible at the final key
    assert store.list("") == []
    pending = store.stale_uploads(dt.timedelta(0))
    assert [u.key for u in pending] == [key]
    # (moto reports every upload as initiated in 2010, so the age cut is tested on the local store)
    assert _janitor(uri, s3_server, "--older-than", "0s")["uploads"] == [f"{key} {pending[0].upload_id}"]
    assert store.stale_uploads(dt.timedelta(0)) == []
    assert _janitor(uri, s3_server, "--older-than", "0s")["uploads"] == []


def test_janitor_removes_stale_local_temp_files_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("snapshots/f1/manifest.json", b"{}")
    stale, fresh = store.root / "snapshots/f1/.tmp-dead", store.root / "snapshots/f1/.tmp-alive"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    report = _janitor(str(store.root), None, "--older-than", "1h")
    assert report["uploads"] == ["snapshots/f1/.tmp-dead .tmp-dead"]
    assert not stale.exists() and fresh.exists()
    assert store.list("") == ["snapshots/f1/manifest.json"]


# --- SIGKILL at every write of publish + promote ------------------------------------------------

_PUBLISHER = """
import os, signal, sys
from pathlib import Path
from components._shared.registry import Registry
from components._shared.store import open_store

store, crash_at = open_store(sys.argv[1]), int(sys.argv[2])
writes, depth = 0, 0

def crashing(method):
    def wrapper(*args, **kwargs):
        global writes, depth
        writes += depth == 0  # the local compare_and_swap writes through put_bytes: one write
        if writes == crash_at and depth == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        depth += 1
        try:
            return method(*args, **kwargs)
        finally:
            depth -= 1
    return wrapper

store.put_bytes = crashing(store.put_bytes)
store.compare_and_swap = crashing(store.compare_and_swap)
registry = Registry(store, "digits")
files = {p.name: p for p in Path(sys.argv[3]).iterdir()}
registry.publish("v2", files, {"run_id": "crash"})
assert registry.promote("v2", registry.alias("champion"), run_id="crash", reason="crash test")
print(writes)
"""


def _open(kind: str, tmp_path: Path, s3_server) -> tuple[Store, str, S3Settings | None]:
    if kind == "local":
        store = LocalStore(tmp_path / "store")
        return store, str(store.root), None
    store = S3Store("ctp-test", f"crash-{uuid.uuid4().hex[:8]}", s3_server)
    return store, store.uri, s3_server


def _publish_v1(store: Store, tmp_path: Path) -> Path:
    files = tmp_path / "files"
    files.mkdir(parents=True)
    for name, data in FILES.items():
        (files / name).write_bytes(data)
    registry = Registry(store, MODEL)
    registry.publish("v1", {p.name: p for p in files.iterdir()}, {"run_id": "seed"})
    assert registry.promote("v1", None, run_id="seed", reason="first")
    return files


def _assert_never_torn(registry: Registry) -> None:
    """Every alias names a complete version: card present, every blob there and checksum-valid."""
    for alias, version in registry.aliases().items():
        card = registry.card(version)
        assert set(card["files"]) == set(FILES), alias
        for name, digest in card["files"].items():
            assert sha256_bytes(registry.store.get_bytes(registry.version_prefix(version) + name)) == digest
    for version in registry.versions():
        assert set(registry.card(version)["files"]) == set(FILES)


def _total_writes(kind: str, tmp_path: Path, s3_server) -> int:
    store, uri, settings = _open(kind, tmp_path / "count", s3_server)
    files = _publish_v1(store, tmp_path / "count")
    out = subprocess.run(
        [sys.executable, "-c", _PUBLISHER, uri, "0", str(files)],
        env=_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_publisher_killed_at_every_write_never_tears_the_champion(kind, tmp_path, s3_server):
    total = _total_writes(kind, tmp_path, s3_server)
    assert total == len(FILES) + 1 + 4  # blobs, card; champion + audit, previous + audit
    for crash_at in range(1, total + 1):
        workdir = tmp_path / f"crash-{crash_at}"
        store, uri, settings = _open(kind, workdir, s3_server)
        files = _publish_v1(store, workdir)
        child = subprocess.run(
            [sys.executable, "-c", _PUBLISHER, uri, str(crash_at), str(files)],
            env=_env(settings),
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr
        registry = Registry(store, MODEL)
        _assert_never_torn(registry)
        card_written = crash_at > len(FILES) + 1
        assert registry.alias(CHAMPION).version == ("v2" if crash_at > len(FILES) + 2 else "v1"), crash_at
        assert registry.versions() == (["v1", "v2"] if card_written else ["v1"])
        # The janitor removes the card-less remains of v2 and nothing else.
        before = set(store.list(""))
        report = sweep(store, dt.timedelta(0))
        assert report.versions == ([] if card_written else ([f"models/{MODEL}/versions/v2/"] if crash_at > 1 else []))
        assert before - set(store.list("")) == {k for k in before if "/versions/v2/" in k and not card_written}
        # Nothing is stuck: the next run publishes and promotes (the local lock died with the process).
        registry.publish("v3", {p.name: p for p in files.iterdir()}, {"run_id": "after"})
        assert registry.promote("v3", registry.alias(CHAMPION), run_id="after", reason="after the crash")
        _assert_never_torn(registry)
