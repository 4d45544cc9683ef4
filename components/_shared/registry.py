"""The model registry, kept in the store.

``models/<model>/versions/<version>/`` holds immutable blobs and ``card.json`` (written last,
create-only). ``models/<model>/aliases/<alias>.json`` points at a version and moves only by
compare-and-swap; every attempted move is appended to ``models/<model>/audit/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import secrets
import struct
from pathlib import Path

from components._shared.errors import IntegrityError, StoreKeyError, StoreNotFound, UnsafeArtifactError
from components._shared.store import Store, check_key, json_bytes, sha256_bytes

CHAMPION, CANARY, PREVIOUS = "champion", "canary", "previous"
# None of them can carry code; .pbtxt is Triton's model configuration (protobuf text format).
ARTIFACT_SUFFIXES = (".safetensors", ".onnx", ".json", ".npy", ".pbtxt")
_CODE_CARRIERS = {b"\x80": "a pickle", b"PK\x03\x04": "a zip (torch.save) archive"}  # by leading bytes


def _refuse(name: str, why: str) -> UnsafeArtifactError:
    return UnsafeArtifactError(
        f"{name}: {why}; refused without loading it",
        hint="weights travel as safetensors and arrays as plain .npy, never as pickles",
    )


def screen_artifact(name: str, data: bytes) -> None:
    """Cheap check before publishing: a known suffix, and not a pickle or torch zip in disguise."""
    if not name.endswith(ARTIFACT_SUFFIXES):
        raise _refuse(name, f"only {', '.join(ARTIFACT_SUFFIXES)} files are model artifacts")
    for magic, what in _CODE_CARRIERS.items():
        if data.startswith(magic):
            raise _refuse(name, f"the file is {what}")
    if name.endswith(".pbtxt"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = "\0"
        if "\0" in text:
            raise _refuse(name, "the file is not protobuf text (not UTF-8 text)")


def check_artifact(name: str, data: bytes) -> None:
    """Before anything loads ``data``: it must parse as what its suffix says, by reading headers
    only (nothing is unpickled or executed)."""
    screen_artifact(name, data)
    if name.endswith(".safetensors"):
        size = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else -1
        try:
            header = json.loads(data[8 : 8 + size]) if 0 < size <= len(data) - 8 else None
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise _refuse(name, "the file is not safetensors (no valid header)")
    elif name.endswith(".npy"):
        import numpy as np

        stream = io.BytesIO(data)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        try:
            _, _, dtype = readers[np.lib.format.read_magic(stream)](stream)
        except (ValueError, KeyError):
            raise _refuse(name, "the file is not a .npy array (version 1 or 2)") from None
        if dtype.hasobject:
            raise _refuse(name, "the array holds Python objects (pickles)")
    elif name.endswith(".json"):
        try:
            json.loads(data)
        except ValueError:
            raise _refuse(name, "the file is not JSON") from None


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _name(value: str, what: str) -> str:
    """A model, version or alias name: exactly one safe key segment."""
    if not isinstance(value, str) or "/" in value:
        raise StoreKeyError(f"{what} name {str(value)[:80]!r} must be one path segment")
    try:
        return check_key(value)
    except StoreKeyError as err:
        raise StoreKeyError(f"{what} name {value[:80]!r} is unsafe: {err.message}", hint=err.hint) from None


def _file_name(value: str) -> str:
    """A file of a version: one or more safe segments (``triton/<model>/1/model.onnx``)."""
    if not isinstance(value, str) or not value or value.startswith("/") or value.endswith("/"):
        raise StoreKeyError(f"file name {str(value)[:80]!r} must be a relative path")
    for segment in value.split("/"):
        _name(segment, "file")
    return value


def new_version_id() -> str:
    """Sortable by creation time, unique across concurrent runs: 48 random bits (24 collided
    about once in ten times among 2,000 ids made in one second)."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"


@dataclasses.dataclass(frozen=True)
class AliasRef:
    version: str | None
    etag: str


class Registry:
    def __init__(self, store: Store, model: str):
        self.store = store
        self.model = _name(model, "model")
        self.root = f"models/{model}/"

    # --- versions --------------------------------------------------------------------------
    def version_prefix(self, version: str) -> str:
        return f"{self.root}versions/{_name(version, 'version')}/"

    def publish(self, version: str, files: dict[str, Path], card: dict) -> dict:
        """Blobs first (create-only), then the card: a reader never sees half a version.

        File names may be relative paths (the Triton model repository under ``triton/``); the
        card lists every file with its sha256."""
        prefix = self.version_prefix(version)
        for name in files:
            _file_name(name)
        digests = {}
        for name, path in sorted(files.items()):
            data = Path(path).read_bytes()
            screen_artifact(name, data)
            self.store.put_bytes(prefix + name, data, create_only=True)
            digests[name] = sha256_bytes(data)
        card = {**card, "model": self.model, "version": version, "files": digests, "published_at": utc_now()}
        self.store.put_json(prefix + "card.json", card, create_only=True)
        return card

    def card(self, version: str) -> dict:
        return self.store.get_json(self.version_prefix(version) + "card.json")

    def versions(self) -> list[str]:
        """Published versions (those with a card), oldest first."""
        return [
            v
            for v in self.store.list_dirs(f"{self.root}versions")
            if self.store.exists(self.version_prefix(v) + "card.json")
        ]

    def read_verified(self, version: str, name: str) -> bytes:
        """One blob of a version, verified against the card's sha256 and checked to be the safe
        format its name says (UnsafeArtifactError otherwise)."""
        data = self.store.get_bytes(self.version_prefix(version) + _file_name(name))
        expected = self.card(version)["files"].get(name)
        if expected != sha256_bytes(data):
            raise IntegrityError(f"{self.model}:{version}/{name} does not match its card checksum")
        check_artifact(f"{self.model}:{version}/{name}", data)
        return data

    def fetch(self, version: str, name: str, dest: Path) -> Path:
        """Download a verified blob (see read_verified) to ``dest``."""
        data = self.read_verified(version, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return dest

    # --- aliases ---------------------------------------------------------------------------
    def _alias_key(self, alias: str) -> str:
        return f"{self.root}aliases/{_name(alias, 'alias')}.json"

    def alias(self, alias: str) -> AliasRef | None:
        found = self.store.get_json_with_etag(self._alias_key(alias))
        return None if found is None else AliasRef(found[0].get("version"), found[1])

    def aliases(self) -> dict[str, str | None]:
        names = [k.rsplit("/", 1)[1][:-5] for k in self.store.list(f"{self.root}aliases/")]
        return {n: ref.version for n in names if (ref := self.alias(n)) is not None}

    def move_alias(
        self, alias: str, version: str | None, expected: AliasRef | None, *, run_id: str = "", reason: str = ""
    ) -> bool:
        """Point ``alias`` at ``version`` if it is still ``expected``; audit the attempt.

        ``version`` must be published (have a card) or None (clear the alias)."""
        return self._move(alias, version, expected, run_id=run_id, reason=reason) is not None

    def _move(
        self, alias: str, version: str | None, expected: AliasRef | None, *, run_id: str, reason: str
    ) -> str | None:
        """move_alias, returning the alias's new ETag (None: lost). The alias body records the
        version it displaced (``from``), atomically with the move itself."""
        key = self._alias_key(alias)
        if version is not None and not self.store.exists(self.version_prefix(version) + "card.json"):
            raise StoreNotFound(
                f"{self.model}:{version} is not a published version (no card)",
                hint="publish it first; an alias never points at half a version",
            )
        displaced = expected.version if expected else None
        body = {
            "alias": alias,
            "version": version,
            "from": displaced,
            "run_id": run_id,
            "reason": reason,
            "updated_at": utc_now(),
        }
        new_etag = self.store.compare_and_swap(key, json_bytes(body), expected.etag if expected else None)
        self._audit({**body, "won": new_etag is not None})
        return new_etag

    def _settle_previous(self, champion_etag: str, displaced: str | None, *, run_id: str, reason: str) -> None:
        """After a champion move that produced ``champion_etag``: previous <- ``displaced``.

        Only while that move is still the champion: a later mover sets previous itself, and a
        run that stalled after winning must not overwrite it with an older version. Previous is
        read before champion is checked, so a later mover's write makes this CAS lose."""
        while True:
            previous = self.alias(PREVIOUS)
            champion = self.alias(CHAMPION)
            if champion is None or champion.etag != champion_etag:
                return
            if self._move(PREVIOUS, displaced, previous, run_id=run_id, reason=reason) is not None:
                return

    def promote(self, version: str, expected_champion: AliasRef | None, *, run_id: str, reason: str) -> bool:
        """champion <- version (the contended move), then previous <- the old champion."""
        etag = self._move(CHAMPION, version, expected_champion, run_id=run_id, reason=reason)
        if etag is None:
            return False
        if expected_champion and expected_champion.version:
            self._settle_previous(etag, expected_champion.version, run_id=run_id, reason=f"displaced by {version}")
        return True

    def rollback_plan(self) -> tuple[AliasRef | None, str]:
        """(the champion as read, the version a rollback restores). The target comes from the
        champion alias itself (its ``from``), read together with the ETag the move is conditioned
        on, so a rollback never restores a stale ``previous``."""
        found = self.store.get_json_with_etag(self._alias_key(CHAMPION))
        champion = None if found is None else AliasRef(found[0].get("version"), found[1])
        if found is not None and "from" in found[0]:
            target = found[0]["from"]
        else:  # no champion, or an alias written before moves recorded what they displaced
            previous = self.alias(PREVIOUS)
            target = previous.version if previous else None
        if not target:
            raise StoreNotFound(f"model {self.model} has no previous version to roll back to")
        return champion, target

    def rollback(self, *, run_id: str, reason: str, plan: tuple[AliasRef | None, str] | None = None) -> str:
        """champion <- the version the champion displaced (``plan``: a rollback_plan read
        earlier, e.g. before serving was moved to its target). Returns the restored version."""
        champion, target = plan or self.rollback_plan()
        etag = self._move(CHAMPION, target, champion, run_id=run_id, reason=reason)
        if etag is None:
            raise StoreNotFound("champion moved during rollback; retry")
        current = champion.version if champion else None
        if current:
            self._settle_previous(etag, current, run_id=run_id, reason=f"rolled back from {current}")
        return target

    # --- audit -----------------------------------------------------------------------------
    def _audit(self, entry: dict) -> None:
        key = f"{self.root}audit/{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}.json"
        self.store.put_json(key, entry, create_only=True)

    def audit_log(self) -> list[dict]:
        return [self.store.get_json(k) for k in self.store.list(f"{self.root}audit/")]
