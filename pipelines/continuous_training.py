"""The one pipeline: ingest -> validate-data -> train -> evaluate -> (gate passes) canary deploy.

Every way of starting a run (ctp run, ctp submit, schedules, the drift monitor, the dashboard)
uses this factory and changes parameters only.
"""

# No `from __future__ import annotations` here: KFP reads the parameter annotations as types.
from kfp import dsl

from components.deploy_canary.component import deploy_canary
from components.evaluate.component import evaluate
from components.ingest.component import ingest
from components.train.component import train
from components.validate_data.component import validate_data
from pipelines.gpu import ClusterSettings, place_on_gpu_pool, use_store_credentials

PIPELINE_NAME = "ctp-continuous-training"
CLUSTER_STORE = "s3://ctp/ctp"


def build_pipeline(settings: ClusterSettings = ClusterSettings()):
    @dsl.pipeline(name=PIPELINE_NAME, description="Continuous training: ingest, validate, train (DDP), "
                  "evaluate against the champion, canary deploy with promote or rollback.")
    def continuous_training(
        store_uri: str = CLUSTER_STORE,
        dataset: str = "digits",
        model_name: str = "digits",
        data_fingerprint: str = "",
        run_id: str = "",
        trigger: str = "manual",
        evidence_uri: str = "",
        test_fraction: float = 0.2,
        replay_fraction: float = 1.0,
        allow_new_classes: bool = False,
        init: str = "auto",
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 0.002,
        seed: int = 0,
        nproc_per_node: int = max(settings.gpus, 1),
        num_nodes: int = 1,
        checkpoint_every: int = 50,
        shrink_perturb: bool = False,
        patience: int = 0,
        distill: float = 0.0,
        min_accuracy: float = 0.8,
        margin: float = 0.01,
        min_agreement: float = 0.7,
        alpha: float = 0.05,
        gate_test: str = "paired_bootstrap",
        max_forgetting: float = 0.02,
        deploy_target: str = "local",
        kserve_namespace: str = "ctp",
        canary_percent: int = 10,
        canary_intervals: int = 3,
        prometheus_url: str = "",
    ):
        ingest_task = ingest(store_uri=store_uri, dataset=dataset, test_fraction=test_fraction,
                             data_fingerprint=data_fingerprint, run_id=run_id, replay_fraction=replay_fraction,
                             model=model_name, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER).set_display_name("ingest")
        the_run = ingest_task.outputs["Output"]
        snapshot = ingest_task.outputs["snapshot"]
        validate_task = validate_data(store_uri=store_uri, model=model_name, allow_new_classes=allow_new_classes,
                                      run_id=the_run, snapshot=snapshot).set_display_name("validate-data")
        train_task = train(store_uri=store_uri, model_name=model_name, init=init, epochs=epochs,
                           batch_size=batch_size, lr=lr, seed=seed, nproc_per_node=nproc_per_node, run_id=the_run,
                           num_nodes=num_nodes, checkpoint_every=checkpoint_every, shrink_perturb=shrink_perturb,
                           patience=patience, distill=distill, cluster=settings.trainjob(),
                           snapshot=snapshot, validation=validate_task.outputs["report"]).set_display_name("train")
        evaluate_task = evaluate(store_uri=store_uri, model_name=model_name, min_accuracy=min_accuracy,
                                 margin=margin, alpha=alpha, gate_test=gate_test, max_forgetting=max_forgetting,
                                 run_id=the_run, snapshot=snapshot,
                                 challenger=train_task.outputs["model"]).set_display_name("evaluate")
        with dsl.If(evaluate_task.outputs["Output"] == "pass", name="gate-passed"):
            deploy_task = deploy_canary(store_uri=store_uri, model_name=model_name, dataset=dataset,
                                        trigger=trigger, evidence_uri=evidence_uri, min_agreement=min_agreement,
                                        run_id=the_run, deploy_target=deploy_target, kserve_namespace=kserve_namespace,
                                        canary_percent=canary_percent, canary_intervals=canary_intervals,
                                        prometheus_url=prometheus_url, snapshot=snapshot,
                                        validation=validate_task.outputs["report"],
                                        challenger=train_task.outputs["model"],
                                        evaluation=evaluate_task.outputs["report"]).set_display_name("canary-deploy")
        tasks = (ingest_task, validate_task, train_task, evaluate_task, deploy_task)
        for task in tasks:
            use_store_credentials(task, settings)
            if task is not train_task:
                task.set_cpu_limit(settings.step_cpu).set_memory_limit(settings.step_memory)
        for task in (train_task, evaluate_task, deploy_task):  # side effects or champion-dependent
            task.set_caching_options(False)
        place_on_gpu_pool(train_task, settings)

    return continuous_training


def compile_pipeline(path: str, settings: ClusterSettings = ClusterSettings()) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(settings), package_path=path)
    return path
