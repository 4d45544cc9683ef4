"""Metrics the CronJobs push: a real HTTP server stands in for the Pushgateway and records each push
(prometheus_client's pushadd_to_gateway: POST /metrics/job/<job>/model/<model>, text exposition
format); the Grafana dashboard queries only metrics the code defines."""

import http.server
import json
import re
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from components._shared.store import LocalStore, S3Store
from pipelines.cli import main
from pipelines.metrics import METRICS
from tests.kserve_log import logged_inference
from tests.unit.test_inference_log import digits

DASHBOARD = Path(__file__).parents[2] / "manifests" / "monitoring" / "ctp-dashboard.json"


class Pushgateway:
    def __init__(self, status: int = 200):
        self.pushes: list[tuple[str, str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                outer.pushes.append((self.command, self.path, body))
                self.send_response(status)
                self.end_headers()

            do_PUT = do_POST  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    gw = Pushgateway()
    yield gw
    gw.close()


def samples(body: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line[:1] != "#"}


def test_compaction_pushes_rows_and_findings(tmp_path, gateway):
    store = LocalStore(tmp_path / "store")
    images, logits = digits(3)
    for i in range(3):
        for key, data in logged_inference(f"m{i}", images[i], logits[i]).items():
            store.put_bytes(key, data)
    store.put_bytes("inference-log/ctp/digits/predictor/bad-request.json", b'{"id": "bad", "by')
    args = ["log", "compact", "--store", store.uri, "--min-age-seconds", "0", "--pushgateway", gateway.url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ((method, path, body),) = gateway.pushes
    assert (method, path) == ("POST", "/metrics/job/ctp-log-compact/model/digits")
    got = samples(body)
    assert got['ctp_compaction_rows{kind="traffic",model="digits"}'] == 3
    assert got['ctp_compaction_rows{kind="predictions",model="digits"}'] == 3
    assert got['ctp_compaction_objects{model="digits"}'] == 7
    assert got['ctp_compaction_findings{code="LOG_UNPARSEABLE",model="digits"}'] == 1
    assert got['ctp_compaction_findings{code="LOG_DUPLICATE",model="digits"}'] == 0  # zeros are pushed too
    assert got['ctp_job_last_success_timestamp_seconds{model="digits"}'] > 1.7e9
    assert "# TYPE ctp_compaction_rows_per_second gauge" in body


def test_a_failed_compaction_pushes_its_error_code(tmp_path, gateway, monkeypatch):
    from components._shared.errors import StoreUnavailable
    from pipelines import inference_log

    def unavailable(*args, **kwargs):
        raise StoreUnavailable("list inference-log/: connection refused")

    monkeypatch.setattr(inference_log, "compact", unavailable)
    monkeypatch.setenv("CTP_PUSHGATEWAY", gateway.url)
    result = CliRunner().invoke(main, ["log", "compact", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and "STORE_UNAVAILABLE" in result.output
    ((_, _, body),) = gateway.pushes
    assert 'ctp_job_last_failure_timestamp_seconds{code="STORE_UNAVAILABLE",model="digits"}' in body
    assert "ctp_job_last_success_timestamp_seconds" not in body  # POST keeps the last success as it was


def test_monitor_pushes_check_time_drift_and_smallest_p(s3_env, tmp_path, gateway, monkeypatch):
    from components._shared.sampledata import SeedConfig, seed_digits
    from tests.pipelines.test_monitor import publish_champion

    store = S3Store("ctp-test", f"met-{uuid.uuid4().hex[:8]}", s3_env)
    seed_digits(store, SeedConfig(batches=2))
    publish_champion(store, tmp_path)
    monkeypatch.setenv("CTP_PUSHGATEWAY", gateway.url)
    result = CliRunner().invoke(main, ["monitor", "--store", store.uri])
    assert result.exit_code == 0, result.output
    report = store.get_json(store.list("monitor/digits/reports/")[-1])
    ((_, path, body),) = gateway.pushes
    assert path == "/metrics/job/ctp-monitor/model/digits"
    got = samples(body)
    decision = report["drift"]["decision"]
    assert got[f'ctp_monitor_drift{{decision="{decision}",model="digits"}}'] == float(report["drift"]["is_drift"])
    assert got['ctp_monitor_min_p_value{model="digits"}'] == pytest.approx(report["drift"]["features"]["min_p_val"])
    assert got['ctp_monitor_last_check_timestamp_seconds{model="digits"}'] > 1.7e9
    assert got['ctp_monitor_window_rows{model="digits"}'] == report["window"]["rows"]


@pytest.mark.parametrize("status", [500, None])
def test_a_failed_push_warns_and_the_job_succeeds(tmp_path, status):
    gw = Pushgateway(status or 200)
    url = gw.url
    if status is None:
        gw.close()  # nothing listens there any more
    try:
        args = ["log", "compact", "--store", str(tmp_path / "s"), "--pushgateway", url]
        result = CliRunner().invoke(main, args)
    finally:
        if status:
            gw.close()
    assert result.exit_code == 0, result.output
    assert "ctp: warning: METRICS_PUSH_FAILED" in result.output
    assert any(line.startswith("log compact: 0 objects") for line in result.output.splitlines())


def test_the_dashboard_queries_only_metrics_the_code_defines():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries.append(dashboard["templating"]["list"][1]["query"]["query"])
    used = {name for q in queries for name in re.findall(r"\b(ctp_[a-z_]+)\b", q)}
    assert used and used <= set(METRICS), used - set(METRICS)
    for name in used:  # labels the queries name are labels the metric has
        for q in queries:
            for labels in re.findall(rf"{name}\{{([^}}]*)\}}", q):
                for label in re.findall(r"(\w+)\s*=", labels):
                    assert label in METRICS[name][1], (name, label)
    assert {p["datasource"]["type"] for p in dashboard["panels"]} == {"prometheus"}
