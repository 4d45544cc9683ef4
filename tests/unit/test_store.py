"""The store contract, on every backend the `store` fixture gives (a local directory, the moto S3
server over real HTTP on 127.0.0.1, and MinIO when MINIO_ENDPOINT is set)."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from components._shared.errors import AlreadyExists, ConfigError, StoreKeyError, StoreNotFound
from components._shared.store import (
    LocalStore,
    S3Settings,
    S3Store,
    Store,
    check_key,
    open_store,
    read_parquet,
)

# --- bytes, ETags, create-only -------------------------------------------------------------------


def test_put_get_round_trip_and_etag(store: Store):
    data = b"\x00\x01binary payload\xff" * 100
    etag = store.put_bytes("a/b/blob.bin", data)
    got, got_etag = store.get_with_etag("a/b/blob.bin")
    assert got == data
    assert etag and got_etag == etag
    assert store.etag("a/b/blob.bin") == etag
    assert store.get_bytes("a/b/blob.bin") == data

    # An overwrite (not create-only) replaces the bytes and changes the ETag.
    etag2 = store.put_bytes("a/b/blob.bin", b"second")
    assert etag2 != etag
    assert store.get_with_etag("a/b/blob.bin") == (b"second", etag2)


def test_empty_object_round_trip(store: Store):
    etag = store.put_bytes("empty.bin", b"")
    assert store.get_with_etag("empty.bin") == (b"", etag)
    assert store.exists("empty.bin")


def test_json_helpers(store: Store):
    obj = {"b": [1, 2, 3], "a": {"nested": "ü"}}
    etag = store.put_json("runs/r1/x.json", obj)
    assert store.get_json("runs/r1/x.json") == obj
    assert store.get_json_with_etag("runs/r1/x.json") == (obj, etag)
    assert store.get_json_with_etag("runs/r1/missing.json") is None


def test_create_only_refuses_existing_key_and_keeps_original(store: Store):
    etag = store.put_bytes("models/m/versions/v1/model.bin", b"original", create_only=True)
    with pytest.raises(AlreadyExists):
        store.put_bytes("models/m/versions/v1/model.bin", b"usurper", create_only=True)
    with pytest.raises(AlreadyExists):
        store.put_json("models/m/versions/v1/model.bin", {"x": 1}, create_only=True)
    assert store.get_with_etag("models/m/versions/v1/model.bin") == (b"original", etag)
    # Identical bytes are still refused: create-only means "only if absent".
    with pytest.raises(AlreadyExists):
        store.put_bytes("models/m/versions/v1/model.bin", b"original", create_only=True)


def test_create_only_on_absent_key_writes(store: Store):
    etag = store.put_bytes("fresh/key.bin", b"new", create_only=True)
    assert store.get_with_etag("fresh/key.bin") == (b"new", etag)


def test_create_only_leaves_no_temporary_objects(store: Store):
    store.put_bytes("d/x.bin", b"1", create_only=True)
    with pytest.raises(AlreadyExists):
        store.put_bytes("d/x.bin", b"2", create_only=True)
    store.put_bytes("d/y.bin", b"3")
    assert store.list("d/") == ["d/x.bin", "d/y.bin"]
    if isinstance(store, LocalStore):
        assert sorted(p.name for p in (store.root / "d").iterdir()) == ["x.bin", "y.bin"]


# --- compare-and-swap ----------------------------------------------------------------------------


def test_cas_with_current_etag_replaces(store: Store):
    etag = store.put_bytes("aliases/champion.json", b'{"version": "v1"}')
    new = store.compare_and_swap("aliases/champion.json", b'{"version": "v2"}', etag)
    assert new is not None and new != etag
    assert store.get_with_etag("aliases/champion.json") == (b'{"version": "v2"}', new)


def test_cas_with_stale_etag_returns_none_and_keeps_bytes(store: Store):
    stale = store.put_bytes("aliases/champion.json", b'{"version": "v1"}')
    current = store.put_bytes("aliases/champion.json", b'{"version": "v2"}')
    assert store.compare_and_swap("aliases/champion.json", b'{"version": "v3"}', stale) is None
    assert store.get_with_etag("aliases/champion.json") == (b'{"version": "v2"}', current)


def test_cas_expected_none_when_key_exists_returns_none(store: Store):
    etag = store.put_bytes("aliases/champion.json", b'{"version": "v1"}')
    assert store.compare_and_swap("aliases/champion.json", b'{"version": "v9"}', None) is None
    assert store.get_with_etag("aliases/champion.json") == (b'{"version": "v1"}', etag)


def test_cas_expected_none_when_absent_creates(store: Store):
    new = store.compare_and_swap("aliases/canary.json", b'{"version": "v1"}', None)
    assert new is not None
    assert store.get_with_etag("aliases/canary.json") == (b'{"version": "v1"}', new)
    # The second creator loses.
    assert store.compare_and_swap("aliases/canary.json", b'{"version": "v2"}', None) is None


def test_cas_with_etag_on_absent_key_returns_none(store: Store):
    etag = store.put_bytes("aliases/gone.json", b"x")
    store.delete("aliases/gone.json")
    assert store.compare_and_swap("aliases/gone.json", b"y", etag) is None
    assert not store.exists("aliases/gone.json")


def test_cas_chain_only_latest_etag_wins(store: Store):
    etags = [store.compare_and_swap("c.json", b"0", None)]
    for i in range(1, 5):
        # Every earlier ETag is stale now.
        for stale in etags[:-1]:
            assert store.compare_and_swap("c.json", b"stale", stale) is None
        etags.append(store.compare_and_swap("c.json", str(i).encode(), etags[-1]))
        assert etags[-1] is not None
    assert store.get_bytes("c.json") == b"4"


# --- list / list_dirs / exists / delete ----------------------------------------------------------


def test_list_list_dirs_exists_delete(store: Store):
    keys = [
        "models/m/versions/v1/card.json",
        "models/m/versions/v1/w.bin",
        "models/m/versions/v2/w.bin",
        "models/m/aliases/champion.json",
        "models/mm/versions/x/card.json",
        "top.json",
    ]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list("models/m/") == sorted(k for k in keys if k.startswith("models/m/"))
    # A prefix names a folder, with or without the trailing slash, on every backend.
    assert store.list("models/m") == store.list("models/m/")
    assert store.list("models/m/versions/v") == []
    assert store.list("") == sorted(keys)
    assert store.list("nothing/here/") == []
    assert store.list_dirs("models") == ["m", "mm"]
    assert store.list_dirs("models/m/versions") == ["v1", "v2"]
    assert store.list_dirs("models/m/versions/") == ["v1", "v2"]
    assert store.list_dirs("models/m/versions/v1") == []  # only files below

    assert store.exists("models/m/versions/v1/card.json")
    assert not store.exists("models/m/versions/v1")  # a folder is not an object
    assert not store.exists("models/m/versions/v3/card.json")

    store.delete("models/m/versions/v1/card.json")
    assert not store.exists("models/m/versions/v1/card.json")
    assert store.list("models/m/versions/v1/") == ["models/m/versions/v1/w.bin"]
    store.delete("models/m/versions/v1/card.json")  # deleting a missing key is not an error
    with pytest.raises(StoreNotFound):
        store.get_bytes("models/m/versions/v1/card.json")


def test_missing_key_raises_store_not_found(store: Store):
    with pytest.raises(StoreNotFound):
        store.get_with_etag("no/such/key.bin")
    with pytest.raises(StoreNotFound):
        store.get_json("no/such/key.json")
    with pytest.raises(StoreNotFound):
        store.etag("no/such/key.bin")
    assert not store.exists("no/such/key.bin")


def test_get_of_a_folder_name_is_not_found(store: Store):
    store.put_bytes("dir/child.bin", b"x")
    with pytest.raises(StoreNotFound):
        store.get_with_etag("dir")


def test_put_file_get_file(store: Store, tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"file contents" * 1000)
    etag = store.put_file("files/src.bin", src)
    assert store.etag("files/src.bin") == etag
    dest = tmp_path / "out" / "deep" / "dest.bin"
    store.get_file("files/src.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(StoreNotFound):
        store.get_file("files/missing.bin", tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()


def test_describe_names_the_store(store: Store):
    assert store.describe() == store.uri
    assert store.describe("a/b.json") == store.uri.rstrip("/") + "/a/b.json"


# --- key safety ----------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "../x",
    "a/../../x",
    "..",
    "/abs",
    "a//b",
    "a/b/",
    "a/./b",
    "./a",
    "a\x00b",
    "a\\b",
    "..\\x",
    "x" * 2000,
    "a/" + "y" * 300,  # one segment longer than a file name may be (255)
    "a\nb",
    "ok\n",  # a trailing newline must not slip past the pattern
    "a b",
    "a/.locks/x",
    ".hidden",
    "ä",
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k[:24]))
def test_check_key_rejects(key):
    with pytest.raises(StoreKeyError) as info:
        check_key(key)
    assert info.value.code == "STORE_KEY_INVALID"


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "datasets/digits/batch=0001/part-0.parquet",
        "models/m/versions/20240101T000000Z-abc123/card.json",
        "a/" + "z" * 255,
        "x.y/a,b:c@d+e=f_g-h",
    ],
)
def test_check_key_accepts(key):
    assert check_key(key) == key


def _every_keyed_operation(store: Store, key: str, tmp_path: Path):
    src = tmp_path / "payload.bin"
    src.write_bytes(b"payload")
    yield lambda: store.put_bytes(key, b"x")
    yield lambda: store.put_bytes(key, b"x", create_only=True)
    yield lambda: store.put_json(key, {"x": 1})
    yield lambda: store.get_with_etag(key)
    yield lambda: store.get_bytes(key)
    yield lambda: store.get_json(key)
    yield lambda: store.get_json_with_etag(key)
    yield lambda: store.compare_and_swap(key, b"x", None)
    yield lambda: store.compare_and_swap(key, b"x", "etag")
    yield lambda: store.exists(key)
    yield lambda: store.etag(key)
    yield lambda: store.delete(key)
    yield lambda: store.put_file(key, src)
    yield lambda: store.get_file(key, tmp_path / "out.bin")
    yield lambda: read_parquet(store, key)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_unsafe_keys_rejected_before_any_local_io(tmp_path: Path):
    root = tmp_path / "store"
    store = LocalStore(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.bin").write_bytes(b"keep me")
    bad = BAD_KEYS + ["../outside/victim.bin", str(outside / "victim.bin"), "a/../../outside/victim.bin"]
    before_root, before_tmp = _tree(root), _tree(tmp_path)
    for key in bad:
        for op in _every_keyed_operation(store, key, tmp_path):
            with pytest.raises(StoreKeyError):
                op()
    assert _tree(root) == before_root == set()  # not even a lock file or a parent directory
    assert _tree(tmp_path) == before_tmp | {"payload.bin"}
    assert (outside / "victim.bin").read_bytes() == b"keep me"


class _CountingListener:
    """A real TCP socket that counts the connections made to it (then hangs them up)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


def test_unsafe_keys_rejected_before_any_s3_request(tmp_path: Path):
    listener = _CountingListener()
    try:
        store = S3Store("ctp-test", "p", S3Settings(f"127.0.0.1:{listener.port}", "k", "s", False), create_bucket=False)
        for key in BAD_KEYS:
            for op in _every_keyed_operation(store, key, tmp_path):
                with pytest.raises(StoreKeyError):
                    op()
        # The listener is live: a plain connection is counted (so zero above means zero).
        with socket.create_connection(("127.0.0.1", listener.port)) as probe:
            assert probe.recv(1) == b""  # the listener accepted, counted, and hung up
        assert listener.connections == 1
    finally:
        listener.close()


def test_list_prefix_is_checked(store: Store):
    for prefix in ["../", "..", "/etc", "a//b/", "a/../.."]:
        with pytest.raises(StoreKeyError):
            store.list(prefix)
        with pytest.raises(StoreKeyError):
            store.list_dirs(prefix)


def test_local_list_cannot_escape_root(tmp_path: Path):
    (tmp_path / "secret.txt").write_text("s")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(StoreKeyError):
        store.list("../")


def test_key_that_is_both_object_and_folder_is_a_typed_error_or_works(store: Store):
    """S3 holds `a` and `a/b` side by side; a directory cannot. Either way: no raw OSError."""
    store.put_bytes("both", b"file")
    try:
        store.put_bytes("both/child", b"child")
    except StoreKeyError:
        assert isinstance(store, LocalStore)
    else:
        assert store.get_bytes("both/child") == b"child"
    for create_only in (False, True):
        folder = f"dir-{create_only}"
        store.put_bytes(f"{folder}/child", b"child")
        try:
            store.put_bytes(folder, b"file", create_only=create_only)
        except StoreKeyError:
            assert isinstance(store, LocalStore)
        else:
            assert store.get_bytes(folder) == b"file"
        assert store.get_bytes(f"{folder}/child") == b"child"
        store.delete(folder)  # deleting a folder name is a no-op, never an OSError
        assert store.get_bytes(f"{folder}/child") == b"child"
    assert store.get_bytes("both") == b"file"


# --- pyarrow -------------------------------------------------------------------------------------


def test_parquet_through_arrow_filesystem(store: Store):
    table = pa.table(
        {
            "id": [f"x-{i}" for i in range(50)],
            "label": pa.array(range(50), pa.int64()),
            "image": pa.array([bytes([i % 256]) * 64 for i in range(50)], pa.binary()),
        }
    )
    fs = store.arrow_filesystem()
    key = "datasets/digits/batch=0001/part-0.parquet"
    with fs.open_output_stream(key) as sink:
        pq.write_table(table, sink)
    assert store.exists(key)
    assert store.list("datasets/digits/") == [key]
    assert read_parquet(store, key).equals(table)
    # The same object read as bytes through the store API is a valid Parquet file.
    assert pq.read_table(pa.BufferReader(store.get_bytes(key))).equals(table)
    with pytest.raises(StoreKeyError):
        read_parquet(store, "../" + key)


def test_arrow_output_is_invisible_until_closed(store: Store):
    fs = store.arrow_filesystem()
    key = "datasets/d/batch=1/part-0.parquet"
    sink = fs.open_output_stream(key)
    sink.write(b"PAR1" + b"\0" * 4096)
    assert not store.exists(key)
    assert store.list("datasets/") == []  # no temporary object shows either
    sink.close()
    assert store.get_bytes(key) == b"PAR1" + b"\0" * 4096
    assert store.list("datasets/") == [key]


def test_arrow_filesystem_checks_paths_and_lists_keys(store: Store):
    store.put_bytes("datasets/d/batch=1/part-0.parquet", b"x")
    store.put_bytes("datasets/d/batch=2/part-0.parquet", b"y")
    fs = store.arrow_filesystem()
    infos = fs.get_file_info(pafs.FileSelector("datasets/d", recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    assert files == ["datasets/d/batch=1/part-0.parquet", "datasets/d/batch=2/part-0.parquet"]
    for path in ["../escape.parquet", "/etc/passwd", "a//b", "a/./b"]:
        with pytest.raises(StoreKeyError):
            fs.open_input_file(path)
        with pytest.raises(StoreKeyError):
            fs.open_output_stream(path)
        with pytest.raises(StoreKeyError):
            fs.get_file_info(pafs.FileSelector(path))


def test_parquet_written_by_put_bytes_reads_through_arrow(store: Store):
    from components._shared.store import parquet_bytes

    table = pa.table({"a": [1, 2, 3]})
    store.put_bytes("t/x.parquet", parquet_bytes(table))
    assert read_parquet(store, "t/x.parquet").equals(table)


# --- open_store ----------------------------------------------------------------------------------


def test_open_store_s3_without_endpoint_is_config_error():
    with pytest.raises(ConfigError) as info:
        open_store("s3://bucket/prefix", env={})
    assert info.value.code == "CONFIG_INVALID"
    assert "MINIO_ENDPOINT" in info.value.one_line()


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "file:///tmp/x", "s3a://b/p"])
def test_open_store_unsupported_scheme_is_config_error(uri):
    with pytest.raises(ConfigError):
        open_store(uri, env={"MINIO_ENDPOINT": "127.0.0.1:9"})


def test_open_store_s3_without_bucket_is_config_error():
    with pytest.raises(ConfigError):
        open_store("s3:///prefix", env={"MINIO_ENDPOINT": "127.0.0.1:9"})


def test_open_store_local_directory(tmp_path: Path):
    store = open_store(str(tmp_path / "s"), env={})
    assert isinstance(store, LocalStore)
    store.put_bytes("k", b"v")
    assert (tmp_path / "s" / "k").read_bytes() == b"v"
    via_env = open_store(env={"CTP_STORE": str(tmp_path / "s")})
    assert via_env.get_bytes("k") == b"v"


def test_open_store_s3_through_env_round_trip(s3_server):
    env = {
        "MINIO_ENDPOINT": f"http://{s3_server.endpoint}",
        "MINIO_ACCESS_KEY": s3_server.access_key,
        "MINIO_SECRET_KEY": s3_server.secret_key,
        "MINIO_SECURE": "false",
    }
    prefix = f"open-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://ctp-open/{prefix}", env=env, create_bucket=True)  # as the admin
    assert isinstance(store, S3Store)
    assert store.uri == f"s3://ctp-open/{prefix}"
    etag = store.put_bytes("k.bin", b"v")
    assert hashlib.md5(b"v").hexdigest() == etag  # a single-part S3 ETag is the MD5 of the bytes
    # Another store on the same bucket with another prefix does not see it.
    other = open_store(f"s3://ctp-open/{prefix}-other", env=env)
    assert other.list("") == []
    assert not other.exists("k.bin")


def _s3_env(server: S3Settings) -> dict:
    return {
        "MINIO_ENDPOINT": f"http://{server.endpoint}",
        "MINIO_ACCESS_KEY": server.access_key,
        "MINIO_SECRET_KEY": server.secret_key,
        "MINIO_SECURE": "false",
    }


def test_open_store_neither_checks_nor_creates_the_bucket_unless_asked(s3_server):
    """A role's scoped key (manifests/object-store/ctp-*-policy.json: s3:ListBucket only with an
    s3:prefix condition, no s3:CreateBucket) cannot do HeadBucket (an unprefixed s3:ListBucket) or
    CreateBucket, so opening a store does neither; only an admin command asks for it."""
    bucket = f"ctp-absent-{uuid.uuid4().hex[:8]}"
    admin = S3Store(f"ctp-admin-{uuid.uuid4().hex[:8]}", "", s3_server)
    opened = open_store(f"s3://{bucket}/p", env=_s3_env(s3_server))
    assert isinstance(opened, S3Store) and not admin.client.bucket_exists(bucket)
    open_store(f"s3://{bucket}/p", env=_s3_env(s3_server), create_bucket=True)
    assert admin.client.bucket_exists(bucket)


def test_ctp_data_seed_creates_the_bucket_as_the_admin_command(s3_server):
    from click.testing import CliRunner

    from pipelines.cli import main

    bucket = f"ctp-seed-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        main, ["data", "seed", "--store", f"s3://{bucket}/p", "--batches", "1"], env=_s3_env(s3_server)
    )
    assert result.exit_code == 0, result.output
    assert open_store(f"s3://{bucket}/p", env=_s3_env(s3_server)).list("datasets/")


def test_only_admin_commands_ask_open_store_for_the_bucket():
    """Pipeline steps, the monitor and submit open the store with the defaults; `ctp data seed` is
    the one caller that may create the bucket; S3Store is constructed only by open_store."""
    import ast

    root = Path(__file__).resolve().parents[2]
    askers, constructors = set(), set()
    for path in [*(root / "components").rglob("*.py"), *(root / "pipelines").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "open_store" and any(k.arg == "create_bucket" for k in node.keywords):
                    askers.add(str(path.relative_to(root)))
                if node.func.id == "S3Store":
                    constructors.add(str(path.relative_to(root)))
    assert askers == {"pipelines/cli/data.py"}
    assert constructors == {"components/_shared/store.py"}


def test_s3_settings_scheme_sets_tls():
    assert S3Settings.from_env({"MINIO_ENDPOINT": "https://minio.example:9000"}).secure is True
    assert S3Settings.from_env({"MINIO_ENDPOINT": "http://minio.example:9000"}).secure is False
    plain = S3Settings.from_env({"MINIO_ENDPOINT": "minio.example:9000/"})
    assert (plain.endpoint, plain.secure) == ("minio.example:9000", False)
    assert S3Settings.from_env({"MINIO_ENDPOINT": "m:9000", "MINIO_SECURE": "true"}).secure is True
    with pytest.raises(ConfigError):
        S3Settings.from_env({"MINIO_ENDPOINT": "https://m:9000", "MINIO_SECURE": "false"})
    with pytest.raises(ConfigError):
        S3Settings.from_env({"MINIO_ENDPOINT": "m:9000", "MINIO_SECURE": "maybe"})


# --- the local store's ETag cache (.etags/): unchanged files are not read again -------------------


def _counting_hashes(monkeypatch, store) -> list[str]:
    read = []
    original = store._content_sha256
    monkeypatch.setattr(store, "_content_sha256", lambda key: read.append(key) or original(key))
    return read


def _age(path: Path, seconds: float = 1.0) -> None:
    """Back-date mtime (ctime cannot be set) so the file is outside the racy window."""
    import os
    import time

    os.utime(path, ns=(time.time_ns() - int(seconds * 1e9),) * 2)


def test_local_etag_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    import time

    import components._shared.store as store_module

    monkeypatch.setattr(store_module, "RACY_NS", 50_000_000)
    store = LocalStore(tmp_path / "store")
    store.put_bytes("d/a.bin", b"x" * 1000)
    time.sleep(0.1)  # ctime leaves the racy window
    read = _counting_hashes(monkeypatch, store)
    first = store.etag("d/a.bin")
    assert store.etag("d/a.bin") == first == hashlib.sha256(b"x" * 1000).hexdigest()
    assert read == ["d/a.bin"]  # the second call came from the cache
    with open(store.root / "d/a.bin", "r+b") as handle:  # rewritten in place, same size
        handle.write(b"y")
    _age(store.root / "d/a.bin")  # even with its mtime set back, ctime moved
    assert store.etag("d/a.bin") == hashlib.sha256(b"y" + b"x" * 999).hexdigest()
    assert read == ["d/a.bin", "d/a.bin"]
    assert store.list("") == ["d/a.bin"] and store.stale_uploads(dt.timedelta(0)) == []


def test_local_etag_of_a_file_changed_just_before_is_not_cached(tmp_path, monkeypatch):
    import components._shared.store as store_module

    monkeypatch.setattr(store_module, "RACY_NS", 60 * 10**9)  # everything is "just changed"
    store = LocalStore(tmp_path / "store")
    store.put_bytes("d/a.bin", b"x" * 10)
    read = _counting_hashes(monkeypatch, store)
    store.etag("d/a.bin"), store.etag("d/a.bin")
    assert read == ["d/a.bin", "d/a.bin"] and not (store.root / ".etags").exists()


def test_local_etag_cache_that_cannot_be_written_is_skipped(tmp_path, monkeypatch):
    import components._shared.store as store_module

    monkeypatch.setattr(store_module, "RACY_NS", 0)
    store = LocalStore(tmp_path / "store")
    store.put_bytes("d/a.bin", b"x" * 10)
    (store.root / ".etags").write_text("a file where the cache folder would be")
    assert store.etag("d/a.bin") == hashlib.sha256(b"x" * 10).hexdigest()


def test_local_streamed_write_is_flushed_to_disk_on_the_way(tmp_path, monkeypatch):
    """A big streamed object is synced in the background every WRITE_BACK_BYTES, so the fsync
    before its rename has only the tail left; the bytes are the ones written."""
    import os

    import components._shared.store as store_module

    monkeypatch.setattr(store_module, "WRITE_BACK_BYTES", 1000)
    synced: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(store_module.os, "fdatasync", lambda fd: synced.append(fd) or real_fdatasync(fd))
    store = LocalStore(tmp_path / "store")
    chunks = [bytes([n]) * 600 for n in range(10)]
    with store.arrow_filesystem().open_output_stream("d/big.bin") as sink:
        for chunk in chunks:
            sink.write(chunk)
    assert synced  # (one write-back in flight at a time: how many ran depends on the disk)
    assert store.get_bytes("d/big.bin") == b"".join(chunks)


def test_local_write_back_failure_fails_the_write_and_publishes_nothing(tmp_path, monkeypatch):
    import components._shared.store as store_module

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "WRITE_BACK_BYTES", 100)
    monkeypatch.setattr(store_module.os, "fdatasync", disk_full)
    store = LocalStore(tmp_path / "store")
    sink = store.arrow_filesystem().open_output_stream("d/big.bin")
    sink.write(b"x" * 500)
    with pytest.raises(OSError, match="No space left"):
        sink.close()
    assert not store.exists("d/big.bin") and store.list("") == []
