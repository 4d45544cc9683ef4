"""The inference-log compaction on KServe's real log format (tests/kserve_log.py names the upstream
files each field comes from) through the S3 server: pairing out of order, duplicates, a truncated
object, a SIGKILL midway, and the canary's and the monitor's readers on the compacted data."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from components._shared.dataset import decode_images, list_batches
from components._shared.model.serving import softmax
from components._shared.sampledata import SeedConfig, load_digits_uint8, seed_digits
from components._shared.store import S3Store, read_parquet
from pipelines import inference_log
from pipelines.cli import main
from pipelines.inference_log import CompactConfig, compact, parse_object, to_event
from tests.kserve_log import log_record, logged_inference, raw_key, v2_request, v2_response

CONFIG = CompactConfig(min_age_seconds=0)


@pytest.fixture
def s3(s3_env):
    return S3Store("ctp-test", f"log-{uuid.uuid4().hex[:8]}", s3_env)


def digits(n: int, seed: int = 0):
    images = load_digits_uint8()[0]
    rng = np.random.default_rng(seed)
    return images[rng.choice(len(images), n, replace=False)], rng.normal(size=(n, 10)).astype(np.float32)


def log_inferences(store, ids, images, logits, **kw) -> dict[str, bytes]:
    objects = {}
    for event_id, image, logit in zip(ids, images, logits, strict=True):
        objects.update(logged_inference(event_id, image, logit, **kw))
    return objects


def rows(store, kind: str, name: str, version: str = "") -> dict:
    """id -> (image, probs or None) over every compacted object of a kind; asserts unique ids."""
    prefix = f"traffic/{name}/" if kind == "traffic" else f"predictions/{name}/version={version}/"
    found = {}
    for key in store.list(prefix):
        table = read_parquet(store, key)
        images = decode_images(table)
        probs = table.column("probs").to_pylist() if "probs" in table.column_names else [None] * len(images)
        for event_id, image, prob in zip(table.column("id").to_pylist(), images, probs, strict=True):
            assert event_id not in found, f"row {event_id} written twice"
            found[event_id] = (image, prob)
    return found


def test_upstream_record_shapes_parse_in_both_tag_styles():
    """kserve v0.17.0 pkg/logger/types.go (camelCase JSON tags) and v0.16.0 (no tags: Go field
    names) write the same LogRequest; marshaller_json.go writes an array when batchSize > 1."""
    image, logit = digits(1)
    record = log_record("abc", "request", v2_request(image), version="v7")
    go_names = {k[0].upper() + k[1:]: v for k, v in record.items()}
    go_names["Id"], go_names["ReqType"] = go_names.pop("Id"), go_names.pop("ReqType")
    for raw in (record, go_names):
        event = to_event(raw)
        assert (event.id, event.kind, event.version, event.endpoint) == ("abc", "request", "v7", "default")
    batched = parse_object(json.dumps([record, log_record("abc", "response", v2_response(logit))]).encode())
    assert [to_event(r).kind for r in batched] == ["request", "response"]
    assert raw_key("abc", "request") == "inference-log/ctp/digits/predictor/abc-request.json"


def test_out_of_order_duplicated_and_truncated_events_give_one_row_each(s3):
    images, logits = digits(6)
    ids = [f"{uuid.uuid4()}" for _ in range(6)]
    objects = log_inferences(s3, ids, images, logits)
    # out of order: every response lands before its request
    for key in sorted(objects, key=lambda k: not k.endswith("-response.json")):
        s3.put_bytes(key, objects[key])
    # duplicated: a batched object (KServe batchSize > 1) repeats the first inference's events
    dup = [json.loads(objects[raw_key(ids[0], kind)]) for kind in ("response", "request")]
    s3.put_bytes(raw_key(ids[0] + "x", "request"), json.dumps(dup).encode())
    # truncated: a seventh inference's request object cut midway; its response survives
    lost = str(uuid.uuid4())
    extra_image, extra_logit = digits(1, seed=9)
    cut = logged_inference(lost, extra_image[0], extra_logit[0])
    s3.put_bytes(raw_key(lost, "request"), cut[raw_key(lost, "request")][:200])
    s3.put_bytes(raw_key(lost, "response"), cut[raw_key(lost, "response")])

    report = compact(s3, CONFIG)

    traffic, predicted = rows(s3, "traffic", "digits"), rows(s3, "predictions", "digits", "v1")
    assert set(traffic) == set(predicted) == set(ids)
    for event_id, image, logit in zip(ids, images, logits, strict=True):
        np.testing.assert_array_equal(traffic[event_id][0], image)
        np.testing.assert_array_equal(predicted[event_id][0], image)
        np.testing.assert_allclose(predicted[event_id][1], softmax(logit[None])[0], rtol=1e-5)
    assert {code: f.count for code, f in report.findings.items()} == {
        "LOG_DUPLICATE": 2,
        "LOG_UNPARSEABLE": 1,
        "LOG_NO_REQUEST": 1,
    }
    assert report.inferences == 6 and report.traffic_rows == 6 and report.prediction_rows == 6
    assert s3.list("inference-log/") == []  # compacted raw objects are gone
    assert s3.list("compaction/digits/rejected/") == [f"compaction/digits/rejected/{raw_key(lost, 'request')}"]
    again = compact(s3, CONFIG)  # a second run finds nothing new and changes nothing
    assert (again.objects, again.traffic_rows) == (0, 0) and len(rows(s3, "traffic", "digits")) == 6


def test_young_objects_wait_for_their_partner(s3):
    images, logits = digits(2)
    for key, data in log_inferences(s3, ["a1", "a2"], images, logits).items():
        s3.put_bytes(key, data)
    report = compact(s3, CompactConfig(min_age_seconds=3600))
    assert (report.deferred, report.objects, s3.list("traffic/")) == (4, 0, [])


@pytest.mark.parametrize("crash_at", ["traffic_written", "predictions_written", "done_written"])
def test_a_crash_at_any_step_then_a_rerun_loses_and_duplicates_nothing(s3, monkeypatch, crash_at):
    images, logits = digits(60)
    ids = [f"id{i:03d}" for i in range(60)]
    for key, data in log_inferences(s3, ids, images, logits).items():
        s3.put_bytes(key, data)
    config = CompactConfig(min_age_seconds=0, chunk_objects=40)  # 20 inferences a chunk: 3 chunks
    calls = {"put": 0, "done": 0}

    class Killed(BaseException):
        pass

    real_put, real_put_json = inference_log._put_table, s3.put_json

    def put_table(store, key, *args, **kw):
        real_put(store, key, *args, **kw)
        calls["put"] += 1
        if (crash_at, calls["put"]) in {("traffic_written", 3), ("predictions_written", 4)}:
            raise Killed  # second chunk: its traffic (3rd put) or its predictions (4th) written, no done marker

    def put_json(key, obj, **kw):
        etag = real_put_json(key, obj, **kw)
        if "/done/" in key:
            calls["done"] += 1
            if crash_at == "done_written" and calls["done"] == 2:
                raise Killed  # done marker written, raw objects not yet deleted
        return etag

    monkeypatch.setattr(inference_log, "_put_table", put_table)
    monkeypatch.setattr(s3, "put_json", put_json)
    with pytest.raises(Killed):
        compact(s3, config)
    monkeypatch.undo()
    assert s3.list("compaction/digits/plans/")  # the interrupted chunk's plan is left
    report = compact(s3, config)
    assert report.resumed == 1
    assert set(rows(s3, "traffic", "digits")) == set(rows(s3, "predictions", "digits", "v1")) == set(ids)
    assert s3.list("inference-log/") == [] and s3.list("compaction/digits/plans/") == []


def test_sigkill_midway_then_rerun_gives_every_inference_exactly_once(s3, tmp_path):
    """A real process killed with SIGKILL while compacting (chunks of 20 objects, killed once a
    few chunks are done), then `ctp log compact` again."""
    n = 400
    images, logits = digits(n)
    ids = [f"k{i:04d}" for i in range(n)]
    for key, data in log_inferences(s3, ids, images, logits).items():
        s3.put_bytes(key, data)
    args = [sys.executable, "-m", "pipelines.cli", "log", "compact", "--store", s3.uri]
    args += ["--min-age-seconds", "0", "--chunk-objects", "20", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while len(s3.list("compaction/digits/done/")) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the compaction finished before it was killed"
    left = len(s3.list("inference-log/"))
    assert 0 < left < 2 * n
    result = CliRunner().invoke(main, ["log", "compact", "--store", s3.uri, "--min-age-seconds", "0"])
    assert result.exit_code == 0, result.output
    traffic, predicted = rows(s3, "traffic", "digits"), rows(s3, "predictions", "digits", "v1")
    assert set(traffic) == set(predicted) == set(ids)
    assert sum(len(keys) for keys in list_batches(s3, "digits", kind="traffic").values()) == len(
        s3.list("compaction/digits/done/")
    )


def test_the_canary_log_and_the_monitor_read_the_compacted_data(s3, tmp_path):
    """deploy_canary.kserve.StorePredictionLog (the canary analysis' reader) and the drift monitor
    (pipelines/monitor.py drift_report) on compacted traffic: same-distribution inputs are not
    drift, rotated ones are."""
    from components.deploy_canary.config import DeployConfig
    from components.deploy_canary.core import compare_predictions
    from components.deploy_canary.kserve import StorePredictionLog
    from pipelines.monitor import MonitorConfig, drift_report
    from tests.pipelines.test_monitor import publish_champion

    seed_digits(s3, SeedConfig(batches=2))
    for key in s3.list("traffic/"):  # only what the compaction writes is traffic here
        s3.delete(key)
    publish_champion(s3, tmp_path)
    images, logits = digits(300, seed=1)
    served = {}
    for i, (image, logit) in enumerate(zip(images, logits, strict=True)):
        canary = i % 3 == 0
        served.update(
            logged_inference(
                f"c{i:04d}", image, logit, version="v2" if canary else "v1", endpoint="canary" if canary else "default"
            )
        )
    for key, data in served.items():
        s3.put_bytes(key, data)
    compact(s3, CONFIG)

    canary_images, canary_probs = StorePredictionLog(s3, "digits").canary_window("v2", 0)
    assert len(canary_images) == len(canary_probs) == 100
    np.testing.assert_allclose(canary_probs, softmax(logits[::3]), rtol=1e-5)
    champion_images, champion_probs = StorePredictionLog(s3, "digits").canary_window("v1", 0)
    assert len(champion_images) == 200
    assert compare_predictions(canary_probs, canary_probs, DeployConfig())["n"] == 100

    report = drift_report(s3, MonitorConfig(window_rows=300))
    assert report["window"]["rows"] == 300 and report["drift"]["is_drift"] is False

    rotated, _ = digits(300, seed=2)
    for key, data in log_inferences(
        s3, [f"r{i:04d}" for i in range(300)], np.rot90(rotated, axes=(1, 2)), logits
    ).items():
        s3.put_bytes(key, data)
    time.sleep(1.1)  # a newer batch id (second resolution) than the first compaction's
    compact(s3, CONFIG)
    report = drift_report(s3, MonitorConfig(window_rows=300))
    assert report["drift"]["is_drift"] is True, report["drift"]
