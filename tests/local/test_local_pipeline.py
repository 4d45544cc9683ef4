"""The whole pipeline under kfp.local's SubprocessRunner, on a tiny configuration."""

import shutil
import subprocess
import sys

import pytest

from components._shared.registry import CHAMPION, Registry
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore
from pipelines.local_run import LocalRunOptions, run_locally
from tests.helpers import digits_table, write_batch

pytestmark = pytest.mark.slow


def tiny(store, tmp_path):
    return LocalRunOptions(
        store_uri=store.uri, pipeline_root=str(tmp_path / "runs"), params={"epochs": 2, "nproc_per_node": 2}
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("local")
    store = LocalStore(tmp_path / "store")
    seed_digits(store, SeedConfig(batches=2))
    summary = run_locally(tiny(store, tmp_path), run_id="run-one")
    return store, tmp_path, summary


def test_first_run_leaves_a_champion_with_its_card(first_run):
    store, _, summary = first_run
    registry = Registry(store, "digits")
    champion = registry.alias(CHAMPION).version
    card = registry.card(champion)
    assert card["parent_version"] is None and card["run_id"] == "run-one"
    assert card["metrics"]["accuracy"] >= 0.8 and card["training"]["world_size"] == 2
    assert card["data"]["fingerprint"] == store.get_json("runs/run-one/evaluation.json")["fingerprint"]
    assert store.get_json("runs/run-one/decision.json")["decision"] == "promote"  # the guarded task really ran
    assert f"digits:{champion}" in summary and "promote" in summary


def test_second_run_warm_starts_from_the_first(first_run, tmp_path):
    store, _, _ = first_run
    store2 = LocalStore(tmp_path / "store")
    shutil.copytree(store.root, store2.root, dirs_exist_ok=True)
    seed_digits(store2, SeedConfig(batches=1, append=True, seed=5))
    first = Registry(store2, "digits").alias(CHAMPION).version
    run_locally(tiny(store2, tmp_path), run_id="run-two")
    decision = store2.get_json("runs/run-two/decision.json")
    card = Registry(store2, "digits").card(decision["version"])
    assert card["parent_version"] == first
    assert card["training"]["init"]["applied"] == "warm"
    assert card["champion_metrics"] is not None and card["paired_test"]["test"] == "paired_bootstrap"


def test_a_run_on_unchanged_data_skips_in_one_line_and_force_trains(first_run, tmp_path):
    """No batch newer than the champion's watermark: the run ends after ingest with a recorded
    `skip: no new data` (a success), trains nothing and frees the lease; force=true retrains."""
    from components._shared import lease

    store, _, _ = first_run
    store2 = LocalStore(tmp_path / "store")
    shutil.copytree(store.root, store2.root, dirs_exist_ok=True)
    before = Registry(store2, "digits").alias(CHAMPION)
    summary = run_locally(tiny(store2, tmp_path), run_id="run-quiet")
    assert "decision  skip: no new data" in summary and "[train]" not in summary
    assert store2.get_json("runs/run-quiet/decision.json")["decision"] == "skip"
    assert not store2.exists("runs/run-quiet/evaluation.json") and not store2.list("checkpoints/run-quiet/")
    assert Registry(store2, "digits").alias(CHAMPION) == before
    assert lease.read(store2, "digits").state == lease.RELEASED
    forced = LocalRunOptions(
        store_uri=store2.uri,
        pipeline_root=str(tmp_path / "runs"),
        params={"epochs": 1, "nproc_per_node": 1, "force": True},
    )
    run_locally(forced, run_id="run-forced")
    assert store2.get_json("runs/run-forced/evaluation.json")["challenger"]["n"] > 0


@pytest.mark.parametrize(
    "bad_table, code",
    [
        (digits_table(30).drop_columns(["label"]), "MISSING_COLUMN"),
        (digits_table(30, shape=(12, 12, 1)), "IMAGE_SHAPE"),
        (digits_table(30).slice(0, 0), "EMPTY_BATCH"),
    ],
)
def test_bad_batch_stops_the_run_before_training(first_run, tmp_path, bad_table, code):
    store, _, _ = first_run
    store2 = LocalStore(tmp_path / "store")
    shutil.copytree(store.root, store2.root, dirs_exist_ok=True)
    before = Registry(store2, "digits").alias(CHAMPION)
    write_batch(store2, bad_table, "0099")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "--store",
            store2.uri,
            "--epochs",
            "1",
            "--pipeline-root",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ctp: error: ") and "batch=0099" in last and code in last
    assert "[train]" not in result.stdout + result.stderr  # stopped before training
    after = Registry(store2, "digits").alias(CHAMPION)
    assert after == before
    assert len(Registry(store2, "digits").versions()) == 1
