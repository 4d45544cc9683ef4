"""ctp monitor on seeded data in the S3 server: drift evidence starts exactly one run, the same
evidence never a second, same-distribution traffic none. Runs go to FakeKfpApi (no KFP backend
exists here) or, with --local, through the real pipeline under kfp.local."""

import numpy as np
import pytest
from click.testing import CliRunner

from components._shared.dataset import decode_images, list_batches
from components._shared.model.inputs import pixel_features
from components._shared.registry import CHAMPION, Registry, new_version_id
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import read_parquet
from pipelines.cli import main

SHIFT = dict(append=True, batches=2, shift="rotation", strength=0.5)


def publish_champion(store, tmp_path) -> str:
    """A champion whose reference sample is the labelled data's drift features, as training writes
    it (no training needed to test the monitor)."""
    images = np.concatenate(
        [decode_images(read_parquet(store, key)) for keys in list_batches(store, "digits").values() for key in keys]
    )
    np.save(tmp_path / "reference.npy", pixel_features(images), allow_pickle=False)
    registry, version = Registry(store, "digits"), new_version_id()
    registry.publish(version, {"reference.npy": tmp_path / "reference.npy"}, {"data": {"batches": ["0000", "0001"]}})
    assert registry.promote(version, None, run_id="seed", reason="test champion")
    return version


def monitor(store, fake, *args):
    env = {"CTP_STORE": store.uri, "KFP_HOST": fake.url if fake else "", "CTP_NAMESPACE": "team-a"}
    result = CliRunner().invoke(main, ["monitor", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def submitted_markers(store):
    return store.list("monitor/digits/submitted/")


def test_drifted_traffic_submits_exactly_one_run_per_evidence(store, fake_kfp, tmp_path):
    publish_champion(store, tmp_path)
    seed_digits(store, SeedConfig(**SHIFT))
    line = monitor(store, fake_kfp, "--submit")
    assert line.startswith("monitor: submitted:")
    (call,) = fake_kfp.calls("POST", "/runs")
    params = call["json"]["runtime_config"]["parameters"]
    assert params["trigger"] == "drift" and params["run_id"] in line
    report_key = params["evidence_uri"][len(store.uri) + 1 :]
    report = store.get_json(report_key)
    assert report["drift"]["is_drift"] is True and report["window"]["watermark"] == "0003"
    (marker,) = submitted_markers(store)
    (kfp_run_id,) = fake_kfp.runs
    assert store.get_json(marker)["handle"] == kfp_run_id
    assert store.get_json(marker)["report_uri"] == params["evidence_uri"]

    fake_kfp.set_run_state(kfp_run_id, "SUCCEEDED")
    again = monitor(store, fake_kfp, "--submit", "--cooldown-minutes", "0")  # nothing else holds it back
    assert again.startswith("monitor: duplicate:")
    assert len(fake_kfp.calls("POST", "/runs")) == 1 and len(submitted_markers(store)) == 1
    assert len(store.list("monitor/digits/reports/")) == 2  # every check leaves its report


def test_same_distribution_traffic_submits_nothing(store, fake_kfp, tmp_path):
    publish_champion(store, tmp_path)
    seed_digits(store, SeedConfig(append=True, batches=2, seed=3))  # more data, no shift
    line = monitor(store, fake_kfp, "--submit")
    assert line.startswith("monitor: no_trigger:")
    assert not fake_kfp.calls("POST", "/runs") and not submitted_markers(store)
    (report_key,) = store.list("monitor/digits/reports/")
    assert store.get_json(report_key)["drift"]["decision"] == "no_drift"


def test_cooldown_and_a_running_run_hold_new_evidence_back(store, fake_kfp, tmp_path):
    publish_champion(store, tmp_path)
    seed_digits(store, SeedConfig(**SHIFT))
    assert monitor(store, fake_kfp, "--submit").startswith("monitor: submitted:")
    seed_digits(store, SeedConfig(**{**SHIFT, "batches": 1, "seed": 9}))  # new evidence: a newer window
    assert monitor(store, fake_kfp, "--submit").startswith("monitor: cooldown:")
    assert monitor(store, fake_kfp, "--submit", "--cooldown-minutes", "0").startswith("monitor: run_in_progress:")
    assert len(fake_kfp.calls("POST", "/runs")) == 1
    (kfp_run_id,) = fake_kfp.runs
    fake_kfp.set_run_state(kfp_run_id, "FAILED")
    assert monitor(store, fake_kfp, "--submit", "--cooldown-minutes", "0").startswith("monitor: submitted:")
    assert len(fake_kfp.calls("POST", "/runs")) == 2 and len(submitted_markers(store)) == 2
    assert {r["path"] for r in fake_kfp.calls("GET", "/runs/.+")} == {f"/apis/v2beta1/runs/{kfp_run_id}"}


def test_a_failed_submission_releases_its_claim(store, fake_kfp, tmp_path):
    publish_champion(store, tmp_path)
    seed_digits(store, SeedConfig(**SHIFT))
    original = fake_kfp._create_experiment
    fake_kfp._create_experiment = lambda request: (503, {"error": "unavailable", "code": 14})
    result = CliRunner().invoke(main, ["monitor", "--submit"], env={"CTP_STORE": store.uri, "KFP_HOST": fake_kfp.url})
    assert result.exit_code == 2 and "KFP_API" in result.output and "503" in result.output
    assert not submitted_markers(store) and not fake_kfp.runs
    fake_kfp._create_experiment = original
    assert monitor(store, fake_kfp, "--submit").startswith("monitor: submitted:")


def test_without_a_champion_there_is_nothing_to_compare(store, fake_kfp):
    assert monitor(store, fake_kfp, "--submit").startswith("monitor: no_champion:")
    assert not store.list("monitor/") and not fake_kfp.calls("POST", "/runs")


def test_without_submit_or_local_it_only_reports(store, tmp_path):
    publish_champion(store, tmp_path)
    seed_digits(store, SeedConfig(**SHIFT))
    assert monitor(store, None).startswith("monitor: dry_run:")
    assert len(store.list("monitor/digits/reports/")) == 1 and not submitted_markers(store)


@pytest.mark.slow
def test_local_loop_ends_with_a_new_champion_trained_on_the_evidence(store, tmp_path):
    from pipelines.local_run import LocalRunOptions, run_locally

    run_locally(
        LocalRunOptions(
            store_uri=store.uri, pipeline_root=str(tmp_path / "runs"), params={"epochs": 2, "nproc_per_node": 1}
        )
    )
    registry = Registry(store, "digits")
    first = registry.alias(CHAMPION).version
    seed_digits(store, SeedConfig(**SHIFT))
    result = CliRunner().invoke(
        main,
        ["monitor", "--local", "--epochs", "2", "--nproc-per-node", "1", "--pipeline-root", str(tmp_path / "runs")],
        env={"CTP_STORE": store.uri},
    )
    assert result.exit_code == 0, result.output
    assert "monitor: submitted:" in result.output
    champion = registry.alias(CHAMPION).version
    assert champion != first
    card = registry.card(champion)
    assert card["trigger"] == "drift" and card["parent_version"] == first
    assert store.get_json(card["trigger_evidence"][len(store.uri) + 1 :])["drift"]["is_drift"] is True
    assert "0003" in card["data"]["batches"]
    assert monitor(store, None, "--local").startswith(("monitor: cooldown:", "monitor: no_trigger:"))  # no second run
