"""ctp monitor's label triggers (performance, new_labels) on a real store in the S3 server: each fires
on its condition and not otherwise, through the same claim/cooldown/evidence machinery as drift;
two monitors racing on one store start one run. The champion here is a real ONNX file (a logistic
regression fitted on the seeded batches, exported by hand as Flatten+Gemm with the served model's
input/output names) scored by onnxruntime as the monitor scores any champion; the slow test at the
end uses a champion the real pipeline trained."""

import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from components._shared.dataset import decode_images, list_batches
from components._shared.errors import ConfigError
from components._shared.model.inputs import pixel_features, to_array
from components._shared.registry import CHAMPION, Registry, new_version_id
from components._shared.sampledata import SeedConfig, apply_shift, batch_table, load_digits_uint8, seed_digits
from components._shared.store import parquet_bytes, read_parquet
from pipelines.cli import main
from pipelines.metrics import monitor_metrics
from pipelines.monitor import MonitorConfig, monitor
from tests.pipelines.test_monitor import SHIFT


def _onnx_classifier(images: np.ndarray, labels: np.ndarray, path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression

    x = to_array(images).reshape(len(images), -1)
    fitted = LogisticRegression(max_iter=300).fit(x, labels)
    weights = numpy_helper.from_array(fitted.coef_.T.astype(np.float32), "W")
    bias = numpy_helper.from_array(fitted.intercept_.astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "b"], ["logits"])],
        "digits-lr",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *images.shape[3:], *images.shape[1:3]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def publish_onnx_champion(store, tmp_path, test_accuracy: float = 0.95) -> str:
    """A champion trained on batches 0000-0001 (its watermark), with a reference sample and an ONNX file."""
    tables = [read_parquet(store, key) for keys in list_batches(store, "digits").values() for key in keys]
    images = np.concatenate([decode_images(t) for t in tables])
    labels = np.concatenate([t.column("label").to_numpy() for t in tables])
    np.save(tmp_path / "reference.npy", pixel_features(images), allow_pickle=False)
    _onnx_classifier(images, labels, tmp_path / "model.onnx")
    registry, version = Registry(store, "digits"), new_version_id()
    files = {"reference.npy": tmp_path / "reference.npy", "model.onnx": tmp_path / "model.onnx"}
    card = {"data": {"batches": ["0000", "0001"], "label_kind": "int"}, "metrics": {"accuracy": test_accuracy}}
    registry.publish(version, files, card)
    assert registry.promote(version, None, run_id="seed", reason="test champion")
    return version


def write_labelled(store, batch: str, rows: int, shift: str = "none", strength: float = 0.0, seed: int = 0) -> None:
    """A labelled batch only (no traffic): the drift check sees nothing new."""
    images, labels = load_digits_uint8()
    pick = np.random.default_rng(seed).permutation(len(labels))[:rows]
    images, labels = apply_shift(images[pick], labels[pick], shift, strength, np.random.default_rng(seed))
    ids = [f"digits-{batch}-{i:05d}" for i in range(len(labels))]
    store.put_bytes(f"datasets/digits/batch={batch}/part-0.parquet", parquet_bytes(batch_table(images, labels, ids)))


def run_monitor(store, fake, *args) -> str:
    env = {"CTP_STORE": store.uri, "KFP_HOST": fake.url if fake else "", "CTP_NAMESPACE": "team-a"}
    result = CliRunner().invoke(main, ["monitor", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def last_report(store) -> dict:
    """The newest report by its own microsecond timestamp: report keys made within one second sort
    by their random suffix, not by time."""
    reports = [store.get_json(key) for key in store.list("monitor/digits/reports/")]
    return max(reports, key=lambda report: report["created_at"])


def test_performance_fires_on_degraded_new_labels_and_not_on_clean_ones(store, fake_kfp, tmp_path):
    publish_onnx_champion(store, tmp_path)
    write_labelled(store, "0002", 300)  # clean new labels
    line = run_monitor(store, fake_kfp, "--submit", "--min-accuracy", "0.8", "--label-rows", "400")
    assert line.startswith("monitor: no_trigger:") and "performance: champion accuracy" in line
    report = last_report(store)
    assert report["performance"]["decision"] == "ok" and report["performance"]["accuracy"] > 0.9
    assert report["performance"]["rows"] == 300 and report["labels"]["new_batches"] == ["0002"]
    assert not fake_kfp.calls("POST", "/runs")

    write_labelled(store, "0003", 400, "rotation", 1.0, seed=1)  # newer labels the champion gets wrong
    line = run_monitor(store, fake_kfp, "--submit", "--min-accuracy", "0.8", "--label-rows", "400")
    assert line.startswith("monitor: submitted: performance fired")
    (call,) = fake_kfp.calls("POST", "/runs")
    params = call["json"]["runtime_config"]["parameters"]
    assert params["trigger"] == "performance"
    evidence = store.get_json(params["evidence_uri"][len(store.uri) + 1 :])
    performance = evidence["performance"]
    assert evidence["fired"] == ["performance"] and evidence["drift"]["is_drift"] is False
    assert performance["fired"] and performance["accuracy"] < 0.6  # measured: about 0.37
    assert performance["rows"] == 400 and performance["batches"] == ["0003"]  # bounded: the newest 400 rows
    assert performance["correct"] == round(performance["accuracy"] * 400)
    (marker,) = store.list("monitor/digits/submitted/")
    assert store.get_json(marker)["trigger"] == "performance"

    (kfp_run_id,) = fake_kfp.runs
    fake_kfp.set_run_state(kfp_run_id, "SUCCEEDED")
    again = run_monitor(
        store, fake_kfp, "--submit", "--min-accuracy", "0.8", "--label-rows", "400", "--cooldown-minutes", "0"
    )
    assert again.startswith("monitor: duplicate:") and len(fake_kfp.calls("POST", "/runs")) == 1


def test_max_drop_is_measured_from_the_champions_own_test_accuracy(store, tmp_path):
    publish_onnx_champion(store, tmp_path, test_accuracy=0.95)
    write_labelled(store, "0002", 300, "rotation", 0.5, seed=2)  # measured: accuracy about 0.6-0.7
    assert run_monitor(store, None, "--max-drop", "0.5").startswith("monitor: no_trigger:")
    kept = last_report(store)["performance"]
    assert kept["decision"] == "ok" and 0.45 < kept["accuracy"] < 0.9
    assert kept["drop"] == pytest.approx(0.95 - kept["accuracy"])
    line = run_monitor(store, None, "--max-drop", f"{kept['drop'] - 0.05:.3f}")
    assert line.startswith("monitor: dry_run: performance fired")
    fired = last_report(store)["performance"]
    assert fired["fired"] and "below its test accuracy 0.950" in fired["reason"]


def test_performance_decides_nothing_on_too_few_rows_or_without_new_labels(store, tmp_path):
    publish_onnx_champion(store, tmp_path)
    assert run_monitor(store, None, "--min-accuracy", "0.99").startswith("monitor: no_trigger:")
    assert last_report(store)["performance"]["decision"] == "too_few_rows"  # the watermark's own batches: none new
    write_labelled(store, "0002", 60, "rotation", 1.0)
    assert run_monitor(store, None, "--min-accuracy", "0.99").startswith("monitor: no_trigger:")
    report = last_report(store)["performance"]
    assert report["decision"] == "too_few_rows" and report["rows"] == 60 and "need 100" in report["reason"]
    assert run_monitor(store, None, "--min-accuracy", "0.99", "--min-scored-rows", "50").startswith(
        "monitor: dry_run: performance fired"
    )


def test_new_labels_fire_at_min_new_rows_once_per_evidence(store, fake_kfp, tmp_path):
    publish_onnx_champion(store, tmp_path)
    write_labelled(store, "0002", 300)
    assert run_monitor(store, fake_kfp, "--submit", "--min-new-rows", "301").startswith("monitor: no_trigger:")
    below = last_report(store)["new_labels"]
    assert below["enabled"] and not below["fired"] and below["rows"] == 300
    assert not fake_kfp.calls("POST", "/runs")
    line = run_monitor(store, fake_kfp, "--submit", "--min-new-rows", "300")
    assert line.startswith("monitor: submitted: new_labels fired")
    (call,) = fake_kfp.calls("POST", "/runs")
    params = call["json"]["runtime_config"]["parameters"]
    evidence = store.get_json(params["evidence_uri"][len(store.uri) + 1 :])
    assert params["trigger"] == "new_labels" and evidence["new_labels"]["rows"] == 300
    assert evidence["new_labels"]["batches"] == ["0002"] and evidence["performance"]["enabled"] is False

    (kfp_run_id,) = fake_kfp.runs
    fake_kfp.set_run_state(kfp_run_id, "SUCCEEDED")
    args = ("--submit", "--min-new-rows", "300", "--cooldown-minutes", "0")
    assert run_monitor(store, fake_kfp, *args).startswith("monitor: duplicate:")  # same new batches
    write_labelled(store, "0003", 10, seed=4)
    assert run_monitor(store, fake_kfp, *args).startswith("monitor: submitted: new_labels fired")  # new evidence
    assert len(fake_kfp.calls("POST", "/runs")) == 2 and len(store.list("monitor/digits/submitted/")) == 2


def test_every_fired_trigger_is_recorded_and_the_first_names_the_run(store, tmp_path):
    publish_onnx_champion(store, tmp_path)
    seed_digits(store, SeedConfig(**{**SHIFT, "strength": 1.0}))  # rotated traffic and labels: 0002, 0003
    assert run_monitor(store, None, "--min-accuracy", "0.8", "--min-new-rows", "1").startswith(
        "monitor: dry_run: performance, drift, new_labels fired"
    )
    report = last_report(store)
    assert report["trigger"] == "performance" and report["labels"]["new_batches"] == ["0002", "0003"]
    assert report["dedupe_key"].startswith("0003-")


class FakeTarget:
    """Counts starts; a slow start widens the window in which a second monitor could slip through."""

    name = "fake"

    def __init__(self):
        self.started, self.lock = [], threading.Lock()

    def start(self, evidence_uri: str, run_id: str, trigger: str = "drift") -> str:
        with self.lock:
            self.started.append((trigger, evidence_uri, run_id))
        time.sleep(0.3)
        return f"handle-{run_id}"

    def is_running(self, handle: str) -> bool:
        return False


def test_two_monitors_at_once_start_one_run(store, tmp_path):
    publish_onnx_champion(store, tmp_path)
    config = MonitorConfig(min_new_rows=1, cooldown_minutes=0)
    target = FakeTarget()
    for round_, batch in enumerate(("0002", "0003", "0004")):  # new evidence each round
        write_labelled(store, batch, 50, seed=round_)
        barrier, outcomes = threading.Barrier(2), []

        def check(barrier=barrier, outcomes=outcomes):
            barrier.wait()
            outcomes.append(monitor(store, config, target))

        threads = [threading.Thread(target=check) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        actions = sorted(o.action for o in outcomes)
        assert actions.count("submitted") == 1, actions
        assert set(actions) <= {"submitted", "duplicate"}, actions
        assert len(target.started) == round_ + 1 and target.started[-1][0] == "new_labels"
    assert len(store.list("monitor/digits/submitted/")) == 3


def test_settings_are_checked_once_with_a_code(store):
    with pytest.raises(ConfigError) as err:
        MonitorConfig(min_accuracy=1.5)
    assert err.value.code == "CONFIG_INVALID"
    result = CliRunner().invoke(
        main, ["monitor", "--min-scored-rows", "500", "--label-rows", "100"], env={"CTP_STORE": store.uri}
    )
    assert result.exit_code != 0 and "CONFIG_INVALID" in result.output
    assert len([line for line in result.output.splitlines() if "CONFIG_INVALID" in line]) == 1
    env = {"CTP_STORE": store.uri, "CTP_MIN_NEW_ROWS": "7"}
    result = CliRunner().invoke(main, ["monitor"], env=env)  # no champion yet: the setting is still read
    assert result.exit_code == 0, result.output


def test_metrics_carry_champion_accuracy_and_the_runs_trigger(store, tmp_path):
    from prometheus_client import generate_latest

    publish_onnx_champion(store, tmp_path)
    write_labelled(store, "0002", 200, "rotation", 1.0)
    outcome = monitor(store, MonitorConfig(min_accuracy=0.8, min_new_rows=500, cooldown_minutes=0), FakeTarget())
    assert outcome.action == "submitted" and outcome.trigger == "performance"
    text = generate_latest(monitor_metrics("digits", outcome, now=1.8e9).registry).decode()
    accuracy = outcome.report["performance"]["accuracy"]
    assert f'ctp_monitor_champion_accuracy{{model="digits"}} {accuracy}' in text
    assert 'ctp_monitor_new_label_rows{model="digits"} 200.0' in text
    assert 'ctp_monitor_trigger_fired{model="digits",trigger="performance"} 1.0' in text
    assert 'ctp_monitor_trigger_fired{model="digits",trigger="new_labels"} 0.0' in text
    assert 'ctp_monitor_trigger_fired{model="digits",trigger="drift"} 0.0' in text
    assert 'ctp_monitor_last_run_started_timestamp_seconds{model="digits",trigger="performance"} 1.8e+09' in text


@pytest.mark.slow
def test_a_performance_triggered_local_run_records_trigger_and_evidence_in_the_card(store, tmp_path):
    from pipelines.local_run import LocalRunOptions, run_locally

    run_locally(
        LocalRunOptions(
            store_uri=store.uri, pipeline_root=str(tmp_path / "runs"), params={"epochs": 2, "nproc_per_node": 1}
        )
    )
    registry = Registry(store, "digits")
    first = registry.alias(CHAMPION).version
    write_labelled(store, "0002", 400, "rotation", 1.0, seed=5)  # labels only: no new traffic, no drift
    args = ["monitor", "--local", "--min-accuracy", "0.8", "--epochs", "2", "--nproc-per-node", "1"]
    result = CliRunner().invoke(main, [*args, "--pipeline-root", str(tmp_path / "runs")], env={"CTP_STORE": store.uri})
    assert result.exit_code == 0, result.output
    assert "monitor: submitted: performance fired" in result.output
    (marker,) = store.list("monitor/digits/submitted/")
    claim = store.get_json(marker)
    decision = store.get_json(f"runs/{claim['run_id']}/decision.json")
    version = decision["version"]
    card = registry.card(version)  # promoted or rolled back, the run's version carries its card
    assert card["trigger"] == "performance" and card["trigger_evidence"] == claim["report_uri"]
    assert card["parent_version"] == first and "0002" in card["data"]["batches"]
    evidence = store.get_json(card["trigger_evidence"][len(store.uri) + 1 :])
    assert evidence["performance"]["fired"] is True and evidence["performance"]["version"] == first
