"""The artifact store: one interface, two backends (local directory, MinIO/S3), one key layout.

Keys are relative POSIX paths (``models/digits/versions/v1/card.json``). Both backends give:
create-only writes (model versions are immutable), compare-and-swap on an ETag (aliases),
and a pyarrow filesystem rooted at the store for Parquet I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from stat import S_ISREG
from typing import Any

import pyarrow.fs as pafs

from components._shared import retry
from components._shared.errors import (
    AlreadyExists,
    ConfigError,
    DataValidationError,
    StoreKeyError,
    StoreNotFound,
    StoreUnavailable,
)
from components._shared.retry import RetryPolicy

DEFAULT_STORE = "./.ctp-store"
MAX_KEY_LENGTH = 1024
MAX_SEGMENT_LENGTH = 255  # NAME_MAX of the filesystems a local store lives on
_KEY_PART = re.compile(r"[A-Za-z0-9_=+@,:-][A-Za-z0-9._=+@,:-]*")
_WRITE_ID, _SHA256 = "x-amz-meta-ctp-write-id", "x-amz-meta-ctp-sha256"  # on every S3 PUT of put_bytes
DELETE_BATCH = 1000  # S3's DeleteObjects limit per request
PART_SIZE = 5 * 1024 * 1024  # S3's smallest part; larger files are uploaded in parts
_TMP_PREFIX = ".tmp-"  # a local writer's file before its atomic rename
# A streamed local object is flushed to disk every this many bytes on a background thread, so the
# fsync before its rename waits for the tail only (a 14 MB snapshot's fsync took ~10 ms of ingest).
WRITE_BACK_BYTES = 4 << 20
_ETAG_CACHE = ".etags"  # LocalStore.etag's hashes of unchanged files
RACY_NS = 100_000_000  # a file changed this close to its hashing may change again unseen: not cached


def check_key(key: str) -> str:
    """Reject keys that could escape the store prefix or that S3 and a filesystem disagree on.

    Segments may not start with '.': that excludes '.', '..' and names the local backend keeps
    for itself (``.locks/``, ``.tmp-*``) and hides from ``list``."""
    if not isinstance(key, str) or not key:
        raise StoreKeyError("empty object key", hint="name the object, e.g. datasets/<name>/...")
    if len(key) > MAX_KEY_LENGTH:
        raise StoreKeyError(f"object key longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/") or "\\" in key:
        raise StoreKeyError(f"object key {key[:80]!r} must be a relative path with '/' separators")
    for part in key.split("/"):
        if len(part) > MAX_SEGMENT_LENGTH:
            raise StoreKeyError(f"object key {key[:80]!r} has a segment longer than {MAX_SEGMENT_LENGTH} characters")
        if not _KEY_PART.fullmatch(part):
            raise StoreKeyError(
                f"object key {key[:80]!r} has an unsafe segment {part[:40]!r}",
                hint="use letters, digits and . _ = + @ , : - only; no empty segments or ones starting with '.'",
            )
    return key


def check_prefix(prefix: str) -> str:
    """A folder prefix for ``list``: '' (everything) or a safe key, with or without a trailing '/'.

    Returns it normalised to '' or ``<key>/``."""
    if prefix in ("", "/"):
        return ""
    body = prefix[:-1] if prefix.endswith("/") else prefix
    return check_key(body) + "/"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        endpoint = env.get("MINIO_ENDPOINT", "")
        if not endpoint:
            raise ConfigError(
                "an s3:// store needs MINIO_ENDPOINT",
                hint="set MINIO_ENDPOINT=host:port plus MINIO_ACCESS_KEY and MINIO_SECRET_KEY",
            )
        scheme = re.match(r"^(https?)://", endpoint)
        endpoint = endpoint[scheme.end() :] if scheme else endpoint
        endpoint = endpoint.rstrip("/")
        raw = env.get("MINIO_SECURE", "").strip().lower()
        if raw in ("1", "true", "yes", "on"):
            secure = True
        elif raw in ("0", "false", "no", "off"):
            secure = False
        elif raw:
            raise ConfigError(f"MINIO_SECURE={raw!r} is not a boolean", hint="use true or false")
        else:
            secure = bool(scheme) and scheme.group(1) == "https"
        if scheme and secure != (scheme.group(1) == "https"):
            raise ConfigError(
                f"MINIO_ENDPOINT says {scheme.group(1)}:// but MINIO_SECURE={raw}",
                hint="drop the scheme from MINIO_ENDPOINT or make MINIO_SECURE agree with it",
            )
        return cls(
            endpoint=endpoint,
            access_key=env.get("MINIO_ACCESS_KEY", ""),
            secret_key=env.get("MINIO_SECRET_KEY", ""),
            secure=secure,
            region=env.get("MINIO_REGION", "us-east-1"),
        )


@dataclasses.dataclass(frozen=True)
class PendingUpload:
    """An upload a writer started and never finished: an S3 multipart upload, or a local temp file."""

    key: str  # the object it was meant to become (local: the temp file's path in the store)
    upload_id: str
    initiated: dt.datetime | None


class Store(ABC):
    """What every backend offers. ETags are opaque strings used only for compare-and-swap."""

    uri: str

    # --- bytes -----------------------------------------------------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str:
        """Write an object; returns its ETag. ``create_only`` raises AlreadyExists if taken."""

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Read an object and its ETag; raises StoreNotFound."""

    @abstractmethod
    def compare_and_swap(self, key: str, data: bytes, expected_etag: str | None) -> str | None:
        """Replace ``key`` only if its ETag is ``expected_etag`` (None: only if absent).

        Returns the new ETag, or None when another writer got there first."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under the folder ``prefix`` (recursive), sorted. ``a/b`` and ``a/b/`` both
        mean the folder ``a/b/`` (never ``a/bc``); ``''`` lists the whole store."""

    @abstractmethod
    def list_modified(self, prefix: str) -> dict[str, dt.datetime]:
        """``list`` with each key's last-modified time (UTC)."""

    @abstractmethod
    def stale_uploads(self, older_than: dt.timedelta) -> list[PendingUpload]:
        """Unfinished uploads started more than ``older_than`` ago (left by killed writers)."""

    @abstractmethod
    def abort_upload(self, upload: PendingUpload) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def etag(self, key: str) -> str: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` (missing ones are fine); returns how many were asked for. A loop here;
        S3 sends batches of up to 1,000 keys per request (DeleteObjects)."""
        count = 0
        for key in keys:
            self.delete(key)
            count += 1
        return count

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> str: ...

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def arrow_filesystem(self) -> pafs.FileSystem:
        """A pyarrow filesystem whose paths are store keys."""

    # --- helpers built on the primitives ---------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def put_json(self, key: str, obj: Any, *, create_only: bool = False) -> str:
        return self.put_bytes(key, json_bytes(obj), create_only=create_only)

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_json_with_etag(self, key: str) -> tuple[Any, str] | None:
        try:
            data, etag = self.get_with_etag(key)
        except StoreNotFound:
            return None
        return json.loads(data), etag

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate child 'directory' names under ``prefix``."""
        prefix = check_prefix(prefix)
        names = {k[len(prefix) :].split("/", 1)[0] for k in self.list(prefix) if "/" in k[len(prefix) :]}
        return sorted(names)

    def describe(self, key: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri


def _read_json_quietly(path: Path) -> dict | None:
    """A cache entry, or None when there is none or it cannot be read (a cache never fails a call)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _write_json_quietly(path: Path, entry: dict) -> None:
    """Write a cache entry atomically (temp file + rename); a read-only store just goes without."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".entry-")
        with os.fdopen(fd, "w") as handle:
            json.dump(entry, handle)
        os.replace(tmp, path)
    except OSError:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _mtime(path: Path) -> dt.datetime:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


class LocalStore(Store):
    """A directory. Create-only by hard link (atomic, never a torn file); CAS under flock."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return Path(tmp)

    def _folder_conflict(self, key: str) -> StoreKeyError:
        return StoreKeyError(
            f"{self.describe(key)}: a local store cannot hold an object and a folder of the same name",
            hint="keep object names and folder names distinct",
        )

    def put_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str:
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
        except (FileExistsError, NotADirectoryError):  # a parent "folder" is an object
            raise self._folder_conflict(key) from None
        try:
            if path.is_dir():
                raise self._folder_conflict(key)
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    if path.is_dir():
                        raise self._folder_conflict(key) from None
                    raise AlreadyExists(f"{self.describe(key)} already exists and is immutable") from None
            else:
                try:
                    os.replace(tmp, path)
                except IsADirectoryError:
                    raise self._folder_conflict(key) from None
        finally:
            tmp.unlink(missing_ok=True)
        return sha256_bytes(data)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreNotFound(f"{self.describe(key)} does not exist") from None
        return data, sha256_bytes(data)

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """Exclusive per key across threads and processes: flock locks belong to the open file
        description, and every caller opens the lock file anew."""
        lock_path = self.root / ".locks" / hashlib.sha256(check_key(key).encode()).hexdigest()
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def compare_and_swap(self, key: str, data: bytes, expected_etag: str | None) -> str | None:
        with self._lock(key):
            current = self._content_sha256(key) if self.exists(key) else None  # no cache under the lock
            if current != expected_etag:
                return None
            return self.put_bytes(key, data)

    def list(self, prefix: str) -> list[str]:
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str) -> dict[str, dt.datetime]:
        prefix = check_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return {}
        found = {}
        for path in base.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and not any(p.startswith(".") for p in rel.split("/")):
                found[rel] = _mtime(path)
        return found

    def stale_uploads(self, older_than: dt.timedelta) -> list[PendingUpload]:
        cutoff = dt.datetime.now(dt.UTC) - older_than
        found = []
        for path in self.root.rglob(_TMP_PREFIX + "*"):
            own = {".locks", _ETAG_CACHE} & set(path.relative_to(self.root).parts)
            if path.is_file() and not own and _mtime(path) < cutoff:
                found.append(PendingUpload(path.relative_to(self.root).as_posix(), path.name, _mtime(path)))
        return sorted(found, key=lambda u: u.key)

    def abort_upload(self, upload: PendingUpload) -> None:
        path = (self.root / upload.key).resolve()
        if not (path.parent.is_relative_to(self.root) and path.name.startswith(_TMP_PREFIX)):
            raise StoreKeyError(f"{upload.key!r} is not an unfinished upload of this store")
        path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def etag(self, key: str) -> str:
        """The sha256 of the content (as get_with_etag gives). Every run fingerprints every batch,
        so, as DVC's state database and git's index do, a hash is kept under ``.etags/`` keyed by
        the file's inode, size, mtime and ctime (which no tool can set back), and an unchanged
        file is not read again. A file changed less than RACY_NS before it was hashed is not
        cached: a rewrite within the same clock tick would keep its timestamps."""
        try:
            stat = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):
            raise StoreNotFound(f"{self.describe(key)} does not exist")
        signature = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
        entry = self.root / _ETAG_CACHE / hashlib.sha256(key.encode()).hexdigest()
        cached = _read_json_quietly(entry)
        if cached and cached.get("stat") == signature:
            return cached["sha256"]
        hashed_at = time.time_ns()
        digest = self._content_sha256(key)
        if max(stat.st_mtime_ns, stat.st_ctime_ns) < hashed_at - RACY_NS:
            _write_json_quietly(entry, {"key": key, "stat": signature, "sha256": digest})
        return digest

    def _content_sha256(self, key: str) -> str:
        """Hashed as a stream: bounded memory, and hashlib releases the GIL (objects hash in parallel)."""
        try:
            with self._path(key).open("rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreNotFound(f"{self.describe(key)} does not exist") from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError, PermissionError):
            if self._path(key).is_file():
                raise
            # a folder name or a path through an object: there is no such object, as on S3

    def put_file(self, key: str, path: str | Path) -> str:
        return self.put_bytes(key, Path(path).read_bytes())

    def get_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(self.get_bytes(key))

    def arrow_filesystem(self) -> pafs.FileSystem:
        base = pafs.SubTreeFileSystem(str(self.root), pafs.LocalFileSystem())
        return pafs.PyFileSystem(_StoreFSHandler(base, local_root=self.root))


class S3Store(Store):
    """MinIO or any S3 server through the minio SDK; conditional PUTs give create-only and CAS.

    Every request goes through one retry policy (retry.py). A conditional PUT carries a write id
    in its metadata: when its success reply is lost and the retry gets 412, the object holding our
    write id and checksum proves the first attempt landed, so the write is reported as done."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        settings: S3Settings,
        *,
        create_bucket: bool = True,
        retry_policy: RetryPolicy = RetryPolicy(),
    ):
        import certifi
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        self.retry_policy = retry_policy
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        http = urllib3.PoolManager(  # minio's default, minus its own retries (ours count every request)
            timeout=urllib3.Timeout(connect=retry_policy.connect_timeout, read=retry_policy.read_timeout),
            maxsize=10,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self.client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        if create_bucket and not self._retry("bucket check", lambda: self.client.bucket_exists(bucket)):
            self._retry("bucket create", lambda: self._make_bucket(bucket))

    def _retry(self, what: str, fn):
        return retry.call(self.retry_policy, f"{self.uri}: {what}", fn)

    def _make_bucket(self, bucket: str) -> None:
        from minio.error import S3Error

        try:
            self.client.make_bucket(bucket)
        except S3Error as err:  # a retried create whose first attempt landed, or a concurrent one
            if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _conditional_put(self, key: str, data: bytes, condition: dict[str, str]) -> str | None:
        """PUT with ``condition``; the new ETag, or None when the condition failed for a write
        that is not ours."""
        from minio.error import S3Error

        name = self._name(key)
        write_id = secrets.token_hex(16)
        headers = {**condition, _WRITE_ID: write_id, _SHA256: sha256_bytes(data)}
        try:
            # minio-py's public put_object turns unknown headers into x-amz-meta-*; the conditional
            # headers must reach the server as they are, so this uses the single-part PUT.
            result = self._retry(
                f"put {key}", lambda: self.client._put_object(self.bucket, name, data, headers=headers)
            )
            return result.etag.strip('"')
        except S3Error as err:
            if err.code not in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                raise
        return self._landed(key, write_id, headers[_SHA256])

    def _landed(self, key: str, write_id: str, sha256: str) -> str | None:
        """The object's ETag if it holds this very write (a retry lost the first reply), else None."""
        from minio.error import S3Error

        try:
            stat = self._retry(f"stat {key}", lambda: self.client.stat_object(self.bucket, self._name(key)))
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise
        ours = stat.metadata.get(_WRITE_ID) == write_id and stat.metadata.get(_SHA256) == sha256
        return stat.etag.strip('"') if ours else None

    def put_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str:
        if not create_only:
            return self._conditional_put(key, data, {})
        etag = self._conditional_put(key, data, {"If-None-Match": "*"})
        if etag is None:
            raise AlreadyExists(f"{self.describe(key)} already exists and is immutable")
        return etag

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        from minio.error import S3Error

        name = self._name(key)

        def read() -> tuple[bytes, str]:
            response = self.client.get_object(self.bucket, name)
            try:
                return response.read(), response.headers.get("ETag", "").strip('"')
            finally:
                response.close()
                response.release_conn()

        try:
            return self._retry(f"get {key}", read)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchBucket"):
                raise StoreNotFound(f"{self.describe(key)} does not exist") from None
            raise

    def compare_and_swap(self, key: str, data: bytes, expected_etag: str | None) -> str | None:
        condition = {"If-None-Match": "*"} if expected_etag is None else {"If-Match": f'"{expected_etag}"'}
        return self._conditional_put(key, data, condition)

    def list(self, prefix: str) -> list[str]:
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str) -> dict[str, dt.datetime]:
        prefix = check_prefix(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        name = f"{self.prefix}/{prefix}" if self.prefix else prefix
        objects = self._retry(
            f"list {prefix or '/'}", lambda: list(self.client.list_objects(self.bucket, prefix=name, recursive=True))
        )
        return {obj.object_name[strip:]: obj.last_modified for obj in objects if not obj.is_dir}

    def exists(self, key: str) -> bool:
        try:
            self.etag(key)
        except StoreNotFound:
            return False
        return True

    def etag(self, key: str) -> str:
        from minio.error import S3Error

        try:
            stat = self._retry(f"stat {key}", lambda: self.client.stat_object(self.bucket, self._name(key)))
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise StoreNotFound(f"{self.describe(key)} does not exist") from None
            raise
        return stat.etag.strip('"')

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._retry(f"delete {key}", lambda: self.client.remove_object(self.bucket, name))

    def delete_many(self, keys: Iterable[str]) -> int:
        """DeleteObjects (minio ``remove_objects``) in batches of DELETE_BATCH keys, each batch
        retried on its own (a repeated delete of a gone key is not an error on S3). A key the
        server refuses fails the call with STORE_UNAVAILABLE naming it."""
        from minio.deleteobjects import DeleteObject

        keys = [check_key(k) for k in keys]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [DeleteObject(self._name(k)) for k in keys[start : start + DELETE_BATCH]]
            errors = self._retry(
                f"delete {len(batch)} objects",
                lambda batch=batch: list(self.client.remove_objects(self.bucket, iter(batch))),
            )
            if errors:
                first = errors[0]
                raise StoreUnavailable(
                    f"{self.uri}: delete refused for {len(errors)} object(s), first {first.name}: {first.code}",
                    hint="check the credentials' s3:DeleteObject grant on these keys",
                )
        return len(keys)

    def put_file(self, key: str, path: str | Path) -> str:
        """Files above PART_SIZE go up as a multipart upload, each request retried on its own
        (minio-py retries none of them, and a whole-upload retry would restart from part 1). A
        writer killed mid-way leaves an incomplete upload, never a visible object; the janitor
        (``stale_uploads``/``abort_upload``) removes it."""
        if Path(path).stat().st_size <= PART_SIZE:
            return self.put_bytes(key, Path(path).read_bytes())
        name = self._name(key)
        upload_id = self._retry(
            f"start upload of {key}", lambda: self.client._create_multipart_upload(self.bucket, name, {})
        )
        try:
            parts = self._upload_parts(key, name, upload_id, Path(path))
            return self._complete(key, name, upload_id, parts)
        except BaseException:
            with contextlib.suppress(Exception):
                self.abort_upload(PendingUpload(key, upload_id, None))
            raise

    def _upload_parts(self, key: str, name: str, upload_id: str, path: Path) -> list:
        """Uploads every part; returns their minio ``Part`` records (number, ETag)."""
        from minio.datatypes import Part

        parts = []
        with open(path, "rb") as handle:
            while chunk := handle.read(PART_SIZE):
                number = len(parts) + 1
                etag = self._retry(
                    f"upload part {number} of {key}",
                    lambda chunk=chunk, number=number: self.client._upload_part(
                        self.bucket, name, chunk, None, upload_id, number
                    ),
                )
                parts.append(Part(number, etag.strip('"')))
        return parts

    def _complete(self, key: str, name: str, upload_id: str, parts: list) -> str:
        """Complete the upload. A retry after a lost reply finds the upload gone (NoSuchUpload):
        the object whose multipart ETag matches our parts' proves the first attempt landed."""
        from minio.error import S3Error

        try:
            result = self._retry(
                f"complete upload of {key}",
                lambda: self.client._complete_multipart_upload(self.bucket, name, upload_id, parts),
            )
            return result.etag.strip('"')
        except S3Error as err:
            if err.code != "NoSuchUpload":
                raise
            expected = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in parts)).hexdigest() + f"-{len(parts)}"
            if self.exists(key) and self.etag(key) == expected:
                return expected
            raise

    def get_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(self.get_bytes(key))

    def stale_uploads(self, older_than: dt.timedelta) -> list[PendingUpload]:
        cutoff = dt.datetime.now(dt.UTC) - older_than
        strip = len(self.prefix) + 1 if self.prefix else 0
        found, key_marker, id_marker = [], None, None
        while True:
            page = self._retry(
                "list incomplete uploads",
                lambda keys=key_marker, ids=id_marker: self.client._list_multipart_uploads(
                    self.bucket, prefix=f"{self.prefix}/" if self.prefix else "", key_marker=keys, upload_id_marker=ids
                ),
            )
            found += [
                PendingUpload(u.object_name[strip:], u.upload_id, u.initiated_time)
                for u in page.uploads
                if u.initiated_time is None or u.initiated_time < cutoff
            ]
            if not page.is_truncated:
                return found
            key_marker, id_marker = page.next_key_marker, page.next_upload_id_marker

    def abort_upload(self, upload: PendingUpload) -> None:
        from minio.error import S3Error

        name = self._name(upload.key)
        try:
            self._retry(
                f"abort upload of {upload.key}",
                lambda: self.client._abort_multipart_upload(self.bucket, name, upload.upload_id),
            )
        except S3Error as err:
            if err.code != "NoSuchUpload":  # already completed or aborted
                raise

    def arrow_filesystem(self) -> pafs.FileSystem:
        s, policy = self.settings, self.retry_policy
        fs = pafs.S3FileSystem(
            access_key=s.access_key,
            secret_key=s.secret_key,
            endpoint_override=s.endpoint,
            scheme="https" if s.secure else "http",
            region=s.region,
            connect_timeout=policy.connect_timeout,
            request_timeout=policy.read_timeout,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=policy.attempts),
            allow_delayed_open=True,  # small objects in one PUT: no multipart upload left by a crash
        )
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return pafs.PyFileSystem(_StoreFSHandler(pafs.SubTreeFileSystem(root, fs)))


class _AtomicLocalWriter:
    """A file object for pyarrow that writes a sibling temp file and renames it into place on
    close, so a concurrent reader never sees a half-written Parquet file."""

    def __init__(self, final: Path):
        self._final = final
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreKeyError(f"a parent of {final} is an object; a local store cannot hold both") from None
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=_TMP_PREFIX)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._unsynced = 0
        self._syncer: ThreadPoolExecutor | None = None  # the writer's own: no pool shared across forks
        self._write_back: Future | None = None

    closed = property(lambda self: self._file.closed)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        written = self._file.write(data)
        self._unsynced += written
        if self._unsynced >= WRITE_BACK_BYTES and (self._write_back is None or self._write_back.done()):
            self._file.flush()
            self._syncer = self._syncer or ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctp-write-back")
            self._write_back = self._syncer.submit(os.fdatasync, self._file.fileno())
            self._unsynced = 0
        return written

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.flush()
            if self._write_back is not None:
                self._write_back.result()  # an I/O error surfaces here, before the rename
            os.fsync(self._file.fileno())
            self._file.close()
            if self._final.is_dir():
                raise StoreKeyError(f"{self._final} is a folder; a local store cannot hold both")
            os.replace(self._tmp, self._final)
        finally:
            if self._syncer is not None:
                self._syncer.shutdown(wait=True)  # never close the file under a running fdatasync
            self._file.close()
            self._tmp.unlink(missing_ok=True)


class _StoreFSHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem over the store's keys: every path goes through check_key, and on a
    local store writes create their folders and land atomically (temp file + rename)."""

    def __init__(self, base: pafs.FileSystem, local_root: Path | None = None):
        self.base = base
        self.local_root = local_root

    def __eq__(self, other):
        return isinstance(other, _StoreFSHandler) and self.base.equals(other.base)

    def __ne__(self, other):
        return not self == other

    @staticmethod
    def _key(path: str) -> str:
        return check_key(path)

    @staticmethod
    def _folder(path: str) -> str:
        return check_prefix(path).rstrip("/")

    def get_type_name(self) -> str:
        return f"ctp-store+{self.base.type_name}"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return self.base.get_file_info([self._folder(p) for p in paths])

    def get_file_info_selector(self, selector):
        return self.base.get_file_info(
            pafs.FileSelector(
                self._folder(selector.base_dir), allow_not_found=selector.allow_not_found, recursive=selector.recursive
            )
        )

    def create_dir(self, path, recursive):
        self.base.create_dir(self._folder(path), recursive=recursive)

    def delete_dir(self, path):
        self.base.delete_dir(self._key(path))

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.base.delete_dir_contents(self._key(path), missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise StoreKeyError("refusing to empty the whole store through pyarrow")

    def delete_file(self, path):
        self.base.delete_file(self._key(path))

    def move(self, src, dest):
        self.base.move(self._key(src), self._key(dest))

    def copy_file(self, src, dest):
        self.base.copy_file(self._key(src), self._key(dest))

    def open_input_stream(self, path):
        return self.base.open_input_stream(self._key(path))

    def open_input_file(self, path):
        return self.base.open_input_file(self._key(path))

    def open_output_stream(self, path, metadata):
        key = self._key(path)
        if self.local_root is not None:
            import pyarrow as pa

            return pa.PythonFile(_AtomicLocalWriter(self.local_root / key), mode="w")
        return self.base.open_output_stream(key, metadata=metadata)

    def open_append_stream(self, path, metadata):
        raise StoreKeyError(f"{path!r}: store objects are replaced whole, never appended to")


def open_store(uri: str | None = None, env: Mapping[str, str] | None = None, *, create_bucket: bool = False) -> Store:
    """Open ``uri`` (``s3://bucket/prefix`` or a directory); default ``CTP_STORE`` or ./.ctp-store.

    The S3 bucket is checked and created only with ``create_bucket`` (admin commands: ``ctp data
    seed``): HeadBucket is an unprefixed s3:ListBucket and CreateBucket its own action, which the
    roles' scoped keys (manifests/object-store) do not have. The admin creates the bucket."""
    env = os.environ if env is None else env
    uri = uri or env.get("CTP_STORE") or DEFAULT_STORE
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"store URI {uri!r} has no bucket", hint="use s3://<bucket>/<prefix>")
        return S3Store(bucket, prefix, S3Settings.from_env(env), create_bucket=create_bucket)
    if "://" in uri:
        raise ConfigError(f"unsupported store URI {uri!r}", hint="use a directory or s3://bucket/prefix")
    return LocalStore(uri)


def read_parquet(store: Store, key: str):
    """Read one Parquet object from the store into a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with store.arrow_filesystem().open_input_file(check_key(key)) as handle:
        try:
            return pq.read_table(handle)
        except pa.ArrowInvalid as err:
            raise DataValidationError(
                f"{store.describe(key)} is not a readable Parquet file ({err})",
                code="PARQUET_CORRUPT",
                hint="rewrite or remove the object",
            ) from None


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
