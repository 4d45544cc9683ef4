"""The thin KFP wrappers called as plain functions with real KFP artifact objects (no mocks)."""

import json
from pathlib import Path

import pytest
from kfp import dsl

from components._shared import lease
from components._shared.registry import CHAMPION, Registry
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore
from components.deploy_canary.component import deploy_canary
from components.evaluate.component import evaluate
from components.ingest.component import ingest
from components.train.component import train
from components.validate_data.component import validate_data
from tests.helpers import ingest_inputs


def artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


@pytest.mark.slow
def test_the_five_wrappers_chain_on_real_artifacts(tmp_path):
    store = LocalStore(tmp_path / "store")
    seed_digits(store, SeedConfig(batches=2))
    uri = store.uri
    snapshot = artifact(dsl.Dataset, tmp_path, "snapshot")
    run_id = ingest.python_func(
        **ingest_inputs(uri, run_id="", job_id="job-1"),
        snapshot=snapshot,
    )
    assert run_id == "job-1" and len(snapshot.metadata["fingerprint"]) == 32
    assert lease.read(store, "digits").run_id == "job-1"  # ingest took the model's lease
    assert json.loads(Path(snapshot.path).read_text())["rows"]["train"] == snapshot.metadata["train"]

    report = artifact(dsl.Artifact, tmp_path, "validation")
    markdown, plot = artifact(dsl.Markdown, tmp_path, "validation-md"), artifact(dsl.Artifact, tmp_path, "drift-png")
    validate_data.python_func(
        store_uri=uri,
        model_name="digits",
        allow_new_classes=False,
        run_id=run_id,
        snapshot=snapshot,
        report=report,
        report_markdown=markdown,
        drift_plot=plot,
    )
    assert report.metadata["status"] == "pass" and store.exists(f"runs/{run_id}/validation.json")
    assert Path(markdown.path).read_text().startswith("# Data validation: PASS")
    assert Path(plot.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and store.exists(f"runs/{run_id}/drift.png")

    model = artifact(dsl.Model, tmp_path, "model")
    train.python_func(
        store_uri=uri,
        model_name="digits",
        init="auto",
        epochs=2,
        batch_size=64,
        lr=0.002,
        num_nodes=1,
        checkpoint_every=0,
        shrink_perturb=False,
        patience=0,
        distill=0.0,
        flip=False,
        crop_pad=0,
        cluster={},
        seed=0,
        nproc_per_node=1,
        run_id=run_id,
        snapshot=snapshot,
        validation=report,
        model=model,
    )
    assert model.metadata["init"] == "scratch" and model.metadata["parent_version"] == ""

    metrics, confusion = artifact(dsl.Metrics, tmp_path, "metrics"), artifact(dsl.ClassificationMetrics, tmp_path, "cm")
    evaluation = artifact(dsl.Artifact, tmp_path, "evaluation")
    gate = evaluate.python_func(
        store_uri=uri,
        model_name="digits",
        min_accuracy=0.5,
        margin=0.01,
        alpha=0.05,
        gate_test="paired_bootstrap",
        max_forgetting=0.02,
        run_id=run_id,
        snapshot=snapshot,
        challenger=model,
        metrics=metrics,
        confusion=confusion,
        report=evaluation,
        summary=artifact(dsl.Markdown, tmp_path, "summary"),
    )
    assert gate == "pass" and 0.5 <= metrics.metadata["challenger_accuracy"] <= 1.0
    assert (tmp_path / "summary").read_text().startswith("# Evaluation: gate PASS")
    assert len(confusion.metadata["confusionMatrix"]["rows"]) == 10

    decision = artifact(dsl.Artifact, tmp_path, "decision")
    outcome = deploy_canary.python_func(
        store_uri=uri,
        model_name="digits",
        dataset="digits",
        trigger="manual",
        evidence_uri="",
        min_agreement=0.7,
        deploy_target="local",
        kserve_namespace="ctp",
        canary_percent=10,
        canary_intervals=3,
        prometheus_url="",
        run_id=run_id,
        snapshot=snapshot,
        validation=report,
        challenger=model,
        evaluation=evaluation,
        decision=decision,
    )
    assert outcome == "promote"
    assert Registry(store, "digits").alias(CHAMPION).version == decision.metadata["version"]
    assert lease.read(store, "digits").state == lease.RELEASED  # deploy released it at the end


def test_a_failing_step_records_its_one_line_error(tmp_path):
    from components._shared.errors import DataValidationError
    from components._shared.runtime import recorded_error

    store = LocalStore(tmp_path / "store")
    with pytest.raises(DataValidationError):
        ingest.python_func(
            **ingest_inputs(store.uri, run_id="r9", job_id=""),
            snapshot=artifact(dsl.Dataset, tmp_path, "snapshot"),
        )
    line = recorded_error(store, "r9").one_line()
    assert line.startswith("NO_DATA: ingest: no batches under") and "ctp data seed" in line
