"""The model registry on every store backend: immutable versions, card-last publish, verified
fetch, compare-and-swap aliases, promote/rollback and the audit log."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from components._shared.errors import AlreadyExists, IntegrityError, StoreKeyError, StoreNotFound
from components._shared.registry import CANARY, CHAMPION, PREVIOUS, AliasRef, Registry, new_version_id
from components._shared.store import Store


def _files(tmp_path: Path, tag: str) -> dict[str, Path]:
    out = tmp_path / f"files-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    files = {"model.safetensors": out / "model.safetensors", "model.onnx": out / "model.onnx"}
    files["model.safetensors"].write_bytes(
        safetensors_bytes({"w": np.frombuffer(f"weights of {tag}".encode() * 64, np.uint8)})
    )
    files["model.onnx"].write_bytes(f"onnx graph of {tag}".encode() * 32)
    return files


@pytest.fixture
def registry(store: Store) -> Registry:
    return Registry(store, "digits")


def _publish(registry: Registry, tmp_path: Path, version: str, **card) -> dict:
    return registry.publish(version, _files(tmp_path, version), {"metrics": {"accuracy": 0.9}, **card})


# --- publish -------------------------------------------------------------------------------------


def test_publish_writes_blobs_and_card_with_sha256(registry: Registry, store: Store, tmp_path: Path):
    files = _files(tmp_path, "v1")
    card = registry.publish("v1", files, {"metrics": {"accuracy": 0.93}, "run_id": "r1"})
    prefix = "models/digits/versions/v1/"
    assert store.list(prefix) == [prefix + "card.json", prefix + "model.onnx", prefix + "model.safetensors"]
    expected = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    assert card["files"] == expected
    stored = registry.card("v1")
    assert stored == card
    assert stored["model"] == "digits" and stored["version"] == "v1"
    assert stored["metrics"] == {"accuracy": 0.93} and stored["run_id"] == "r1"
    assert stored["published_at"]
    for name, path in files.items():
        assert store.get_bytes(prefix + name) == path.read_bytes()
    assert registry.versions() == ["v1"]


def test_publish_is_card_last(registry: Registry, store: Store, tmp_path: Path):
    """A publish that dies after its first blob leaves blobs but no card: not a version."""
    files = _files(tmp_path, "v1")
    files["zz-missing.bin"] = tmp_path / "does-not-exist.bin"  # sorted last: fails after the others
    with pytest.raises(FileNotFoundError):
        registry.publish("v1", files, {"metrics": {}})
    prefix = "models/digits/versions/v1/"
    assert store.list(prefix) == [prefix + "model.onnx", prefix + "model.safetensors"]
    assert not store.exists(prefix + "card.json")
    assert registry.versions() == []
    with pytest.raises(StoreNotFound):
        registry.card("v1")


def test_publish_same_version_twice_is_refused_and_first_card_intact(registry: Registry, store: Store, tmp_path: Path):
    first = _publish(registry, tmp_path, "v1", run_id="first")
    card_key = "models/digits/versions/v1/card.json"
    card_bytes, card_etag = store.get_with_etag(card_key)
    blobs = {k: store.get_bytes(k) for k in store.list("models/digits/versions/v1/")}

    # Different bytes: refused at the first blob.
    other = _files(tmp_path / "other", "v1-other")
    with pytest.raises(AlreadyExists):
        registry.publish("v1", other, {"run_id": "second"})
    # Identical blobs: refused at the card.
    with pytest.raises(AlreadyExists):
        registry.publish("v1", _files(tmp_path, "v1"), {"run_id": "second"})

    assert store.get_with_etag(card_key) == (card_bytes, card_etag)
    assert registry.card("v1") == first and registry.card("v1")["run_id"] == "first"
    assert {k: store.get_bytes(k) for k in store.list("models/digits/versions/v1/")} == blobs
    assert registry.versions() == ["v1"]


def test_versions_ignores_crashed_publish(registry: Registry, store: Store, tmp_path: Path):
    _publish(registry, tmp_path, "v1")
    store.put_bytes("models/digits/versions/v2-crashed/model.safetensors", b"half a publish")
    _publish(registry, tmp_path, "v3")
    assert registry.versions() == ["v1", "v3"]
    # A card of another model, or a stray file directly under versions/, is not a version either.
    Registry(store, "other").publish("v9", _files(tmp_path, "v9"), {})
    store.put_bytes("models/digits/versions/README", b"not a version")
    assert registry.versions() == ["v1", "v3"]


def test_versions_empty_registry(registry: Registry):
    assert registry.versions() == []
    assert registry.aliases() == {}
    assert registry.alias(CHAMPION) is None
    assert registry.audit_log() == []


def test_unsafe_names_are_refused(store: Store, tmp_path: Path):
    registry = Registry(store, "digits")
    for version in ["../v1", "a/b", "", ".hidden", "v1/"]:
        with pytest.raises(StoreKeyError):
            registry.publish(version, _files(tmp_path, "x"), {})
        with pytest.raises(StoreKeyError):
            registry.card(version)
    for alias in ["../champion", "a/b", ""]:
        with pytest.raises(StoreKeyError):
            registry.move_alias(alias, "v1", None)
        with pytest.raises(StoreKeyError):
            registry.alias(alias)
    for model in ["../digits", "a/b", ""]:
        with pytest.raises(StoreKeyError):
            Registry(store, model)
    with pytest.raises(StoreKeyError):
        registry.publish("v1", {"../evil.bin": tmp_path / "x"}, {})
    assert store.list("") == []


# --- fetch ---------------------------------------------------------------------------------------


def test_fetch_verifies_sha256(registry: Registry, store: Store, tmp_path: Path):
    files = _files(tmp_path, "v1")
    _publish(registry, tmp_path, "v1")
    dest = tmp_path / "fetched" / "model.onnx"
    assert registry.fetch("v1", "model.onnx", dest) == dest
    assert dest.read_bytes() == files["model.onnx"].read_bytes()

    store.put_bytes("models/digits/versions/v1/model.onnx", b"tampered")
    tampered_dest = tmp_path / "fetched-2" / "model.onnx"
    with pytest.raises(IntegrityError) as info:
        registry.fetch("v1", "model.onnx", tampered_dest)
    assert info.value.code == "INTEGRITY_MISMATCH"
    assert not tampered_dest.exists()
    # The untouched blob still verifies.
    registry.fetch("v1", "model.safetensors", tmp_path / "fetched-3" / "w")


def test_fetch_unknown_name_or_version(registry: Registry, tmp_path: Path):
    _publish(registry, tmp_path, "v1")
    with pytest.raises(StoreNotFound):
        registry.fetch("v1", "nope.bin", tmp_path / "x")
    with pytest.raises(StoreNotFound):
        registry.fetch("v404", "model.onnx", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_fetch_refuses_blob_without_card(registry: Registry, store: Store, tmp_path: Path):
    store.put_bytes("models/digits/versions/v2/model.onnx", b"orphan")
    with pytest.raises(StoreNotFound):
        registry.fetch("v2", "model.onnx", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- aliases -------------------------------------------------------------------------------------


def test_move_alias_compare_and_swap(registry: Registry, tmp_path: Path):
    _publish(registry, tmp_path, "v1")
    _publish(registry, tmp_path, "v2")
    assert registry.move_alias(CANARY, "v1", None, run_id="r1", reason="first") is True
    ref1 = registry.alias(CANARY)
    assert ref1 is not None and ref1.version == "v1" and ref1.etag

    # Expecting "absent" when it exists loses.
    assert registry.move_alias(CANARY, "v2", None, run_id="r2") is False
    assert registry.alias(CANARY) == ref1

    assert registry.move_alias(CANARY, "v2", ref1, run_id="r3") is True
    ref2 = registry.alias(CANARY)
    assert ref2.version == "v2" and ref2.etag != ref1.etag

    # The stale ref loses and changes nothing.
    assert registry.move_alias(CANARY, "v1", ref1, run_id="r4") is False
    assert registry.alias(CANARY) == ref2
    # A forged ETag loses.
    assert registry.move_alias(CANARY, "v1", AliasRef("v2", "0" * 32), run_id="r5") is False
    assert registry.alias(CANARY) == ref2

    # Clearing an alias (version None) is a move too.
    assert registry.move_alias(CANARY, None, ref2, run_id="r6") is True
    assert registry.alias(CANARY).version is None
    assert registry.aliases() == {CANARY: None}


def test_move_alias_refuses_unpublished_version(registry: Registry, store: Store, tmp_path: Path):
    """An alias may only point at a published version (one with a card)."""
    store.put_bytes("models/digits/versions/v-crashed/model.onnx", b"half")
    with pytest.raises(StoreNotFound):
        registry.move_alias(CHAMPION, "v-crashed", None)
    with pytest.raises(StoreNotFound):
        registry.promote("never-published", None, run_id="r", reason="x")
    assert registry.alias(CHAMPION) is None


def test_promote_sets_champion_and_previous(registry: Registry, tmp_path: Path):
    for v in ("v1", "v2", "v3"):
        _publish(registry, tmp_path, v)
    assert registry.promote("v1", None, run_id="r1", reason="first model") is True
    assert registry.aliases() == {CHAMPION: "v1"}  # nothing displaced, no previous

    assert registry.promote("v2", registry.alias(CHAMPION), run_id="r2", reason="better") is True
    assert registry.aliases() == {CHAMPION: "v2", PREVIOUS: "v1"}

    stale = AliasRef("v1", "0" * 32)
    assert registry.promote("v3", stale, run_id="r3", reason="stale view") is False
    assert registry.aliases() == {CHAMPION: "v2", PREVIOUS: "v1"}

    assert registry.promote("v3", registry.alias(CHAMPION), run_id="r4", reason="better again") is True
    assert registry.aliases() == {CHAMPION: "v3", PREVIOUS: "v2"}


def test_rollback_restores_previous(registry: Registry, tmp_path: Path):
    for v in ("v1", "v2"):
        _publish(registry, tmp_path, v)
    with pytest.raises(StoreNotFound):
        registry.rollback(run_id="r0", reason="nothing to roll back to")
    registry.promote("v1", None, run_id="r1", reason="first")
    with pytest.raises(StoreNotFound):
        registry.rollback(run_id="r1b", reason="still nothing")
    registry.promote("v2", registry.alias(CHAMPION), run_id="r2", reason="second")

    assert registry.rollback(run_id="r3", reason="canary failed") == "v1"
    assert registry.aliases() == {CHAMPION: "v1", PREVIOUS: "v2"}
    assert registry.versions() == ["v1", "v2"]  # rollback never deletes a version
    # Rolling back again swaps back.
    assert registry.rollback(run_id="r4", reason="undo") == "v2"
    assert registry.aliases() == {CHAMPION: "v2", PREVIOUS: "v1"}


def test_rollback_follows_champion_not_a_stale_previous(registry: Registry, store: Store, tmp_path: Path):
    """The champion alias records what it displaced; rollback restores that even when the
    `previous` alias lags behind (its writer stalled or died between the two writes)."""
    for v in ("v1", "v2", "v3"):
        _publish(registry, tmp_path, v)
    registry.promote("v1", None, run_id="r1", reason="first")
    registry.promote("v2", registry.alias(CHAMPION), run_id="r2", reason="second")
    # v3 wins champion, but its run dies before it moves `previous` (still v1).
    assert registry.move_alias(CHAMPION, "v3", registry.alias(CHAMPION), run_id="r3") is True
    assert registry.aliases() == {CHAMPION: "v3", PREVIOUS: "v1"}
    assert registry.rollback(run_id="r4", reason="v3 is bad") == "v2"
    assert registry.aliases() == {CHAMPION: "v2", PREVIOUS: "v3"}


def test_rollback_of_aliases_written_without_from(registry: Registry, store: Store, tmp_path: Path):
    """Aliases written before moves recorded `from`: rollback falls back to the previous alias."""
    for v in ("v1", "v2"):
        _publish(registry, tmp_path, v)
    store.put_json("models/digits/aliases/champion.json", {"alias": CHAMPION, "version": "v2"})
    store.put_json("models/digits/aliases/previous.json", {"alias": PREVIOUS, "version": "v1"})
    assert registry.rollback(run_id="r", reason="legacy") == "v1"
    assert registry.aliases() == {CHAMPION: "v1", PREVIOUS: "v2"}


# --- audit ---------------------------------------------------------------------------------------


def test_audit_log_records_every_attempt(registry: Registry, tmp_path: Path):
    for v in ("v1", "v2", "v3"):
        _publish(registry, tmp_path, v)
    registry.promote("v1", None, run_id="r1", reason="first")
    ref = registry.alias(CHAMPION)
    assert registry.promote("v2", ref, run_id="r2", reason="wins") is True
    assert registry.promote("v3", ref, run_id="r3", reason="loses") is False
    registry.rollback(run_id="r4", reason="roll back")

    log = registry.audit_log()
    champion_moves = [(e["run_id"], e["from"], e["version"], e["won"]) for e in log if e["alias"] == CHAMPION]
    assert champion_moves == [
        ("r1", None, "v1", True),
        ("r2", "v1", "v2", True),
        ("r3", "v1", "v3", False),
        ("r4", "v2", "v1", True),
    ]
    previous_moves = [(e["run_id"], e["version"], e["won"]) for e in log if e["alias"] == PREVIOUS]
    assert previous_moves == [("r2", "v1", True), ("r4", "v2", True)]
    for entry in log:
        assert set(entry) >= {"alias", "version", "from", "run_id", "reason", "updated_at", "won"}
    lost = [e for e in log if not e["won"]]
    assert len(lost) == 1 and lost[0]["reason"] == "loses"


def test_audit_log_records_lost_alias_moves(registry: Registry, tmp_path: Path):
    _publish(registry, tmp_path, "v1")
    assert registry.move_alias(CANARY, "v1", None, run_id="a") is True
    assert registry.move_alias(CANARY, "v1", None, run_id="b") is False
    assert [(e["run_id"], e["won"]) for e in registry.audit_log()] == [("a", True), ("b", False)]


def test_new_version_ids_are_unique_and_safe():
    from components._shared.store import check_key

    ids = {new_version_id() for _ in range(2000)}
    assert len(ids) == 2000
    for v in list(ids)[:50]:
        assert check_key(v) == v and "/" not in v


def test_nested_file_names_publish_and_verify_and_stay_immutable(registry: Registry, store: Store, tmp_path: Path):
    """A version may hold a folder tree (Triton's `triton/<model>/1/model.onnx` and
    `triton/<model>/config.pbtxt`): every file is create-only, listed in the card with its
    sha256 and read back verified; unsafe paths and a binary .pbtxt are refused."""
    from components._shared.errors import UnsafeArtifactError

    files = _files(tmp_path, "v1")
    config = tmp_path / "config.pbtxt"
    config.write_text('name: "digits"\nplatform: "onnxruntime_onnx"\n')
    nested = {**files, "triton/digits/1/model.onnx": files["model.onnx"], "triton/digits/config.pbtxt": config}
    card = registry.publish("v1", nested, {"metrics": {}})
    assert set(card["files"]) == set(nested)
    assert card["files"]["triton/digits/config.pbtxt"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert registry.read_verified("v1", "triton/digits/config.pbtxt") == config.read_bytes()
    store.put_bytes("models/digits/versions/v1/triton/digits/config.pbtxt", b"changed")  # behind the registry's back
    with pytest.raises(IntegrityError):
        registry.read_verified("v1", "triton/digits/config.pbtxt")
    with pytest.raises(AlreadyExists):
        registry.publish("v1", nested, {"metrics": {}})
    for bad in ("triton/../card.json", "/triton/x.onnx", "triton//x.onnx", "triton/x.onnx/"):
        with pytest.raises(StoreKeyError):
            registry.publish("v2", {bad: files["model.onnx"]}, {"metrics": {}})
    binary = tmp_path / "bad.pbtxt"
    binary.write_bytes(b"name: \x00\x01")
    with pytest.raises(UnsafeArtifactError):
        registry.publish("v3", {"triton/digits/config.pbtxt": binary}, {"metrics": {}})
    assert registry.versions() == ["v1"]
