"""Each default is written once: every step parameter of the compiled pipeline defaults to its
step config's field, and `ctp submit` follows the defaults of the pipeline it submits."""

import dataclasses
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import S3Store
from components.deploy_canary.config import DeployConfig, KServeConfig
from components.evaluate.config import EvaluateConfig
from components.ingest.config import IngestConfig
from components.ingest.core import data_fingerprint
from components.train.config import TrainConfig
from components.validate_data.config import ValidateConfig
from pipelines.cli import main
from pipelines.continuous_training import compile_pipeline
from pipelines.run_params import read_package, spec_defaults
from tests.pipelines.fake_kfp import FakeKfpApi

STEP_CONFIGS = {
    "ingest": (IngestConfig,),
    "validate-data": (ValidateConfig,),
    "train": (TrainConfig,),
    "evaluate": (EvaluateConfig,),
    "deploy-canary": (DeployConfig, KServeConfig),
}
KSERVE_FIELDS = {"kserve_namespace": "namespace", "canary_intervals": "intervals"}  # component input -> field
RUN_IDENTITY = {"store_uri", "data_fingerprint", "run_id", "trigger", "evidence_uri", "nproc_per_node", "num_nodes"}
CHANNEL = "pipelinechannel--"


def field_default(config: type, name: str):
    fields = {f.name: f for f in dataclasses.fields(config)}
    name = KSERVE_FIELDS.get(name, name) if config is KServeConfig else name
    found = fields.get(name)
    return dataclasses.MISSING if found is None else found.default


def task_bindings(spec: dict) -> list[tuple[str, str, str]]:
    """(task, component input, pipeline parameter) for every step input fed by a pipeline
    parameter, also inside the condition's sub-DAG (where it arrives as pipelinechannel--NAME)."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    parameters = spec["root"]["inputDefinitions"]["parameters"]  # not an upstream output passed in
    found = []
    for dag in dags:
        for task_name, task in dag["tasks"].items():
            for name, value in task.get("inputs", {}).get("parameters", {}).items():
                source = value.get("componentInputParameter", "")
                if task_name in STEP_CONFIGS and source.removeprefix(CHANNEL) in parameters:
                    found.append((task_name, name, source.removeprefix(CHANNEL)))
    return found


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return read_package(compile_pipeline(str(tmp_path_factory.mktemp("c") / "ct.yaml")))


def test_every_step_parameter_defaults_to_its_config_field(spec):
    defaults = spec_defaults(spec)
    checked = set()
    for task, name, parameter in task_bindings(spec):
        for config in STEP_CONFIGS[task]:
            default = field_default(config, name)
            if default is not dataclasses.MISSING:
                assert defaults[parameter] == default, (
                    f"{parameter}: pipeline {defaults[parameter]!r}, {config.__name__}"
                )
                checked.add(parameter)
    assert len(checked) >= 25
    assert set(defaults) - checked == RUN_IDENTITY  # nothing else has a default of its own


def test_the_check_sees_a_drifted_default(spec):
    """The test above can fail: a pipeline default that differs from its config is caught."""
    drifted = yaml.safe_load(yaml.safe_dump(spec))
    drifted["root"]["inputDefinitions"]["parameters"]["epochs"]["defaultValue"] = TrainConfig.epochs + 1
    with pytest.raises(AssertionError, match="epochs"):
        test_every_step_parameter_defaults_to_its_config_field(drifted)


@pytest.mark.parametrize("via", ["uploaded", "package"])
def test_submit_follows_a_changed_pipeline_default(s3_env, tmp_path, via):
    """A pipeline compiled with another test_fraction: the fingerprint is computed with it, so
    ingest finds the data it was promised (no FINGERPRINT_MISMATCH)."""
    s3_store = S3Store("ctp-test", f"defaults-{uuid.uuid4().hex[:8]}", s3_env)
    seed_digits(s3_store, SeedConfig(batches=2))
    docs = list(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "ct.yaml"))).read_text()))
    docs[0]["root"]["inputDefinitions"]["parameters"]["test_fraction"]["defaultValue"] = 0.3
    package = tmp_path / "changed.yaml"
    package.write_text(yaml.safe_dump_all(docs))
    with FakeKfpApi() as api:
        runner = CliRunner()
        if via == "uploaded":
            uploaded = runner.invoke(main, ["upload", "--host", api.url, str(package)])
            assert uploaded.exit_code == 0, uploaded.output
            source = []
        else:
            source = ["--package", str(package)]
        result = runner.invoke(main, ["submit", "--host", api.url, "--store", s3_store.uri, *source])
        assert result.exit_code == 0, result.output
        (run,) = api.calls("POST", "/runs")
    parameters = run["json"]["runtime_config"]["parameters"]
    assert parameters["data_fingerprint"] == data_fingerprint(s3_store, IngestConfig(test_fraction=0.3))
    assert parameters["data_fingerprint"] != data_fingerprint(s3_store, IngestConfig())
    assert "test_fraction" not in parameters  # the pipeline's own default applies
