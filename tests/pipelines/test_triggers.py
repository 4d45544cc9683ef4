"""ctp upload / submit / schedule: the real kfp.Client against FakeKfpApi over HTTP (no KFP backend
exists here). The assertions are on the requests kfp.Client actually sent."""

import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import S3Store
from components.ingest.config import IngestConfig
from components.ingest.core import data_fingerprint
from pipelines.cli import main
from pipelines.continuous_training import PIPELINE_NAME, compile_pipeline
from tests.pipelines.fake_kfp import FakeKfpApi


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path):
    for name in ("KFP_HOST", "KFP_TOKEN", "CTP_NAMESPACE", "CTP_STORE", "CTP_PIPELINE_NAME", "CTP_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with FakeKfpApi() as fake:
        yield fake


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(str(tmp_path_factory.mktemp("pkg") / "ct.yaml"))


@pytest.fixture
def s3_store(s3_env):
    store = S3Store("ctp-test", f"trig-{uuid.uuid4().hex[:8]}", s3_env)
    seed_digits(store, SeedConfig(batches=2))
    return store


def ctp(*args, env=None):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


def upload(fake, *args):
    result = ctp("upload", "--host", fake.url, "--token", "t0k", *args)
    assert result.exit_code == 0, result.output
    return result


def test_upload_creates_the_pipeline_then_adds_versions(fake_kfp, package):
    upload(fake_kfp)  # no package: compiles the pipeline now
    (first,) = fake_kfp.calls("POST", "/pipelines/upload")
    assert first["query"]["name"] == PIPELINE_NAME and first["authorization"] == "Bearer t0k"
    assert first["spec"]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert "evidence_uri" in first["spec"]["root"]["inputDefinitions"]["parameters"]

    out = upload(fake_kfp, "--version", "abc123", package).output
    (added,) = fake_kfp.calls("POST", "/pipelines/upload_version")
    (pipeline_id,) = fake_kfp.pipelines
    assert added["query"] == {"name": "abc123", "pipelineid": pipeline_id}
    assert added["spec"] == next(yaml.safe_load_all(Path(package).read_text()))
    assert "added:" in out and "abc123" in out

    again = upload(fake_kfp, "--version", "abc123", package).output  # CI re-running the same commit
    assert "exists:" in again
    assert len(fake_kfp.calls("POST", "/pipelines/upload_version")) == 1
    assert [v.display_name for v in fake_kfp.versions[pipeline_id]] == [PIPELINE_NAME, "abc123"]


def test_submit_runs_the_newest_version_with_the_run_parameters(fake_kfp, package, s3_store):
    upload(fake_kfp, package)
    upload(fake_kfp, "--version", "v2", package)
    newest = fake_kfp.versions[next(iter(fake_kfp.pipelines))][-1]
    result = ctp(
        "submit",
        "--trigger",
        "schedule",
        "--param",
        "epochs=3",
        "--evidence-uri",
        "s3://x/report.json",
        env={"KFP_HOST": fake_kfp.url, "CTP_STORE": s3_store.uri, "CTP_NAMESPACE": "team-a"},
    )
    assert result.exit_code == 0, result.output
    (call,) = fake_kfp.calls("POST", "/runs")
    body = call["json"]
    assert body["pipeline_version_reference"] == {
        "pipeline_id": newest.pipeline_id,
        "pipeline_version_id": newest.pipeline_version_id,
    }
    params = body["runtime_config"]["parameters"]
    assert params["data_fingerprint"] == data_fingerprint(s3_store, IngestConfig(test_fraction=0.2))
    assert params["store_uri"] == s3_store.uri and params["trigger"] == "schedule" and params["epochs"] == 3
    assert params["evidence_uri"] == "s3://x/report.json"
    assert body["display_name"] == params["run_id"] and params["run_id"].startswith("run-")
    assert fake_kfp.experiments[body["experiment_id"]].namespace == "team-a"
    assert "pipeline_spec" not in body


def test_submit_a_named_version_or_a_package(fake_kfp, package, s3_store):
    upload(fake_kfp, package)
    upload(fake_kfp, "--version", "v2", package)
    first = fake_kfp.versions[next(iter(fake_kfp.pipelines))][0]
    env = {"KFP_HOST": fake_kfp.url, "CTP_STORE": s3_store.uri}
    assert ctp("submit", "--version", PIPELINE_NAME, env=env).exit_code == 0
    assert ctp("submit", "--package", package, env=env).exit_code == 0
    by_version, by_package = (c["json"] for c in fake_kfp.calls("POST", "/runs"))
    assert by_version["pipeline_version_reference"]["pipeline_version_id"] == first.pipeline_version_id
    assert "pipeline_version_reference" not in by_package
    assert by_package["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == PIPELINE_NAME


@pytest.mark.parametrize(
    "args, code",
    [
        (["--store", "./some-dir"], "CONFIG_INVALID"),  # a cluster run cannot read a laptop directory
        (["--version", "nope"], "KFP_PIPELINE_NOT_FOUND"),
    ],
)
def test_submit_errors_are_one_line(fake_kfp, package, s3_store, args, code):
    upload(fake_kfp, package)
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.url, "--store", s3_store.uri, *args])
    assert result.exit_code == 2
    assert f"ctp: error: {code}:" in result.output and len(result.output.strip().splitlines()) == 1
    assert not fake_kfp.calls("POST", "/runs")


def test_submit_before_upload_says_to_upload(fake_kfp, s3_store):
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.url, "--store", s3_store.uri])
    assert result.exit_code == 2 and "KFP_PIPELINE_NOT_FOUND" in result.output and "ctp upload" in result.output


def schedule(fake, name, cron, *args):
    result = ctp("schedule", name, "--cron", cron, "--host", fake.url, "--store", "s3://ctp/ctp", *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_schedule_is_a_cron_recurring_run_one_at_a_time_without_catchup(fake_kfp, package):
    upload(fake_kfp, package)
    schedule(fake_kfp, "nightly", "0 3 * * *", "--param", "epochs=5")
    (call,) = fake_kfp.calls("POST", "/recurringruns")
    body = call["json"]
    assert body["display_name"] == "nightly"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}  # KFP's cron has seconds first
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    params = body["runtime_config"]["parameters"]
    assert params == {
        "store_uri": "s3://ctp/ctp",
        "dataset": "digits",
        "model_name": "digits",
        "trigger": "schedule",
        "epochs": 5,
    }  # no fingerprint: each run takes the data it finds
    (version,) = fake_kfp.versions[next(iter(fake_kfp.pipelines))]
    assert body["pipeline_version_reference"]["pipeline_version_id"] == version.pipeline_version_id


def test_schedule_again_replaces_it_instead_of_adding_one(fake_kfp, package):
    upload(fake_kfp, package)
    schedule(fake_kfp, "weekly", "0 4 * * 0")
    schedule(fake_kfp, "nightly", "0 3 * * *")
    (old,) = [r for r in fake_kfp.recurring_runs.values() if r.display_name == "nightly"]
    upload(fake_kfp, "--version", "v2", package)
    out = schedule(fake_kfp, "nightly", "30 2 * * *")
    nightly = [r for r in fake_kfp.recurring_runs.values() if r.display_name == "nightly"]
    assert len(nightly) == 1 and nightly[0].recurring_run_id != old.recurring_run_id
    assert nightly[0].trigger.cron_schedule.cron == "0 30 2 * * *"
    assert [c["path"].rsplit("/", 1)[1] for c in fake_kfp.calls("DELETE", "/recurringruns/.+")] == [
        old.recurring_run_id
    ]
    assert sorted(r.display_name for r in fake_kfp.recurring_runs.values()) == ["nightly", "weekly"]
    new_version = fake_kfp.versions[next(iter(fake_kfp.pipelines))][-1]
    assert (
        fake_kfp.calls("POST", "/recurringruns")[-1]["json"]["pipeline_version_reference"]["pipeline_version_id"]
        == new_version.pipeline_version_id
    )  # re-scheduling moves it to the newest version
    assert "replaced 1 older" in out


def test_schedule_rejects_a_cron_that_is_not_five_fields(fake_kfp, package):
    upload(fake_kfp, package)
    result = CliRunner().invoke(
        main, ["schedule", "x", "--cron", "every day", "--host", fake_kfp.url, "--store", "s3://ctp/ctp"]
    )
    assert result.exit_code == 2 and "CRON_INVALID" in result.output
    assert not fake_kfp.recurring_runs


def test_in_cluster_service_account_token_is_sent(fake_kfp, package, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("projected-sa-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    assert ctp("upload", "--host", fake_kfp.url, package).exit_code == 0
    assert {r["authorization"] for r in fake_kfp.requests} == {"Bearer projected-sa-token"}


def test_unreachable_host_is_one_line(fake_kfp, package):
    result = CliRunner().invoke(main, ["upload", "--host", "http://127.0.0.1:9", package])
    assert result.exit_code == 2 and "ctp: error: KFP_UNREACHABLE" in result.output


def test_no_host_is_a_config_error(fake_kfp, package):
    result = CliRunner().invoke(main, ["upload", package])
    assert result.exit_code == 2 and "KFP_HOST" in result.output


def test_the_fake_rejects_what_the_real_api_would(fake_kfp, package, s3_store):
    from tests.pipelines.fake_kfp import check_fields

    with pytest.raises(ValueError, match="not in V2beta1Run"):
        check_fields({"display_name": "x", "parameters": {}}, "V2beta1Run")  # parameters belong in runtime_config
    with pytest.raises(ValueError, match="is not one of"):
        check_fields({"mode": "ON"}, "V2beta1RecurringRun")
    upload(fake_kfp, package)
    result = CliRunner().invoke(
        main, ["submit", "--host", fake_kfp.url, "--store", s3_store.uri, "--param", "not_an_input=1"]
    )
    assert result.exit_code == 2 and "not_an_input" in result.output and not fake_kfp.runs


def test_the_cronjobs_deploy_target_reaches_the_runs_they_start(fake_kfp, package, s3_store):
    """`ctp submit` (ctp-recurring) and `ctp monitor --submit`'s KfpTarget take CTP_DEPLOY_TARGET
    from the ConfigMap and pass it as the run's deploy_target; unset, the pipeline's default holds."""
    from pipelines.kfp_api import KfpSettings, PipelineRef, connect
    from pipelines.monitor import KfpTarget, MonitorConfig

    upload(fake_kfp, package)
    env = {"KFP_HOST": fake_kfp.url, "CTP_STORE": s3_store.uri}
    assert ctp("submit", env={**env, "CTP_DEPLOY_TARGET": "kserve"}).exit_code == 0
    assert ctp("submit", env=env).exit_code == 0
    kfp = connect(KfpSettings(fake_kfp.url, PIPELINE_NAME))
    target = KfpTarget(kfp, PipelineRef(package=package), s3_store, MonitorConfig(), params={"deploy_target": "kserve"})
    target.start("s3://x/report.json", "run-monitor", trigger="drift")
    targets = [c["json"]["runtime_config"]["parameters"].get("deploy_target") for c in fake_kfp.calls("POST", "/runs")]
    assert targets == ["kserve", None, "kserve"]
    assert ctp("submit", env={**env, "CTP_DEPLOY_TARGET": "moon"}).exit_code == 2  # not a target: one-line error
