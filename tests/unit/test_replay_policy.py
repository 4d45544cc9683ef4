"""The default replay policy: a warm start replays replay_ratio x the new rows of the history
(one share for every class, a minimum per class, at most all of it), decided by ingest and
recorded in the fingerprint; an explicit replay_fraction still wins."""

import numpy as np
import pytest

from components._shared.dataset import is_test_example
from components._shared.errors import ConfigError, CtpError
from components._shared.snapshot import load_split, read_manifest
from components.ingest import core as ingest_core
from components.ingest.config import REPLAY_AUTO, IngestConfig
from components.ingest.core import (
    MIN_REPLAY_PER_CLASS,
    auto_replay_fraction,
    compute_fingerprint,
    data_fingerprint,
    ingest,
)
from tests.helpers import digits_table, write_batch
from tests.unit.test_data_checks import publish_champion

RARE = 9  # a class with 100 rows among 20,000 old ones


def _history_and_new(store, tmp_path, old_rows: int, new_rows: int) -> None:
    labels = np.array([RARE if i % (old_rows // 100) == 0 else i % 3 for i in range(old_rows)])
    write_batch(store, digits_table(old_rows, prefix="old", shape=(8, 8, 1), labels=labels), "0000")
    publish_champion(store, tmp_path, ingest(store, IngestConfig()).fingerprint)
    new_labels = np.arange(new_rows) % 3
    write_batch(store, digits_table(new_rows, prefix="new", shape=(8, 8, 1), labels=new_labels), "0001")


def _old_train(store, fingerprint: str) -> tuple[list[str], np.ndarray]:
    train = load_split(store, fingerprint, "train")
    old = np.array([i.startswith("old-") for i in train.ids])
    return [i for i, o in zip(train.ids, old) if o], train.labels[old]


def test_auto_fraction_is_ratio_times_new_rows_capped_at_all():
    assert auto_replay_fraction(20_000, 2_000, 1.0) == pytest.approx(0.1)
    assert auto_replay_fraction(20_000, 2_000, 2.5) == pytest.approx(0.25)
    assert auto_replay_fraction(300, 2_000, 1.0) == 1.0  # a tiny history: all of it
    assert auto_replay_fraction(0, 10, 1.0) == 1.0
    assert auto_replay_fraction(20_000, 0, 1.0) == 1.0  # nothing new (a forced retrain): everything


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_default_replay_keeps_ratio_times_the_new_rows_and_a_minimum_of_a_rare_class(local_store, tmp_path, ratio):
    _history_and_new(local_store, tmp_path, 20_000, 2_000)
    config = IngestConfig(replay_ratio=ratio) if ratio != IngestConfig.replay_ratio else IngestConfig()
    result = ingest(local_store, config)
    ids, labels = _old_train(local_store, result.fingerprint)
    new_train = sum(not is_test_example(f"new-{i}", 0.2) for i in range(2_000))
    common = int((labels != RARE).sum())
    assert abs(common - ratio * new_train) < 0.08 * ratio * new_train, (common, new_train)  # ~ratio x 1,600
    rare_train = sum(not is_test_example(f"old-{i}", 0.2) for i in range(0, 20_000, 200))
    assert rare_train * ratio * 0.1 < 20 < int((labels == RARE).sum()) <= rare_train  # the floor, not ~8 or ~16
    window = read_manifest(local_store, result.fingerprint)["window"]
    assert window["replay_fraction"] == pytest.approx(ratio * 0.1) and window["replay_ratio"] == ratio
    assert window["replay_share"][str(RARE)] == pytest.approx(min(1.0, MIN_REPLAY_PER_CLASS / (100 * 0.8)), abs=1e-4)
    assert result.new_batches == ["0001"]


def test_a_tiny_history_is_replayed_whole(local_store, tmp_path):
    _history_and_new(local_store, tmp_path, 300, 400)
    ids, _ = _old_train(local_store, ingest(local_store, IngestConfig()).fingerprint)
    assert sorted(ids) == sorted(f"old-{i}" for i in range(300) if not is_test_example(f"old-{i}", 0.2))


def test_an_explicit_fraction_wins_over_the_ratio(local_store, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_core, "MIN_REPLAY_PER_CLASS", 1)
    _history_and_new(local_store, tmp_path, 4_000, 100)
    explicit = ingest(local_store, IngestConfig(replay_fraction=0.5, replay_ratio=3.0))
    assert explicit.fingerprint == compute_fingerprint(local_store, IngestConfig(replay_fraction=0.5))
    _, labels = _old_train(local_store, explicit.fingerprint)
    assert 0.45 * 3_200 < len(labels) < 0.55 * 3_200  # half the old training rows, not 3 x 80
    assert read_manifest(local_store, explicit.fingerprint)["window"]["replay_ratio"] is None


def test_the_fingerprint_names_the_replay_policy(local_store, tmp_path):
    _history_and_new(local_store, tmp_path, 1_000, 100)
    configs = [
        IngestConfig(),
        IngestConfig(replay_ratio=IngestConfig.replay_ratio / 2),
        IngestConfig(replay_fraction=0.5),
        IngestConfig(replay_fraction=1.0),
    ]
    fingerprints = [compute_fingerprint(local_store, c) for c in configs]
    assert len(set(fingerprints)) == len(configs)
    assert fingerprints[0] == ingest(local_store, IngestConfig()).fingerprint  # the snapshot it publishes


def test_without_a_champion_auto_replay_is_the_full_window(local_store):
    write_batch(local_store, digits_table(200, prefix="a"), "0000")
    auto = compute_fingerprint(local_store, IngestConfig())
    assert auto == compute_fingerprint(local_store, IngestConfig(replay_fraction=1.0))  # nothing consumed: same data
    assert auto != compute_fingerprint(local_store, IngestConfig(replay_fraction=0.5))


@pytest.mark.parametrize("fields", [{"replay_fraction": -0.5}, {"replay_fraction": 1.5}, {"replay_ratio": -1.0}])
def test_bad_replay_settings_are_config_errors(fields):
    with pytest.raises(ConfigError, match="replay_"):
        IngestConfig(**fields)
    assert IngestConfig.replay_fraction == REPLAY_AUTO  # the default is the sized replay


def test_a_run_submitted_before_the_champion_moved_still_finds_its_data(local_store, tmp_path):
    """lease_policy=wait: a run submitted while another trains starts after that one promoted. Its
    window follows the new champion (the watermark moved), but the data it was promised is there,
    so ingest goes on; only a change of the data itself is FINGERPRINT_MISMATCH."""
    write_batch(local_store, digits_table(300, prefix="old", shape=(8, 8, 1)), "0000")
    submitted = data_fingerprint(local_store, IngestConfig())  # no champion yet
    publish_champion(local_store, tmp_path, ingest(local_store, IngestConfig()).fingerprint)
    assert compute_fingerprint(local_store, IngestConfig(force=True)) != submitted  # the window moved
    assert ingest(local_store, IngestConfig(expected_fingerprint=submitted, force=True)).fingerprint
    write_batch(local_store, digits_table(50, prefix="new", shape=(8, 8, 1)), "0001")
    with pytest.raises(CtpError, match="data changed since the run was submitted") as err:
        ingest(local_store, IngestConfig(expected_fingerprint=submitted))
    assert err.value.code == "FINGERPRINT_MISMATCH"
