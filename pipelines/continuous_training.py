"""The one pipeline: ingest -> validate-data -> train -> evaluate -> (gate passes) canary deploy.

Every way of starting a run (ctp run, ctp submit, schedules, the drift monitor, the dashboard)
uses this factory and changes parameters only. Every step parameter's default is its step
config's (components/<step>/config.py; a dataclass field's default is a class attribute), so
it is written once.
"""

# No `from __future__ import annotations` here: KFP reads the parameter annotations as types.
from kfp import dsl

from components._shared.cluster import ClusterSettings
from components.deploy_canary.component import deploy_canary
from components.deploy_canary.config import DeployConfig, KServeConfig
from components.evaluate.component import evaluate
from components.evaluate.config import EvaluateConfig
from components.ingest.component import ingest
from components.ingest.config import SKIPPED, IngestConfig
from components.train.component import train
from components.train.config import TrainConfig
from components.validate_data.component import validate_data
from components.validate_data.config import ValidateConfig
from pipelines.cluster import place_on_gpu_pool, restrict_pod_security, use_store_credentials
from pipelines.run_params import DEFAULT_TRIGGER

PIPELINE_NAME = "ctp-continuous-training"
CLUSTER_STORE = "s3://ctp/ctp"


def build_pipeline(settings: ClusterSettings = ClusterSettings()):
    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Continuous training: ingest, validate, train (DDP), "
        "evaluate against the champion, canary deploy with promote or rollback.",
    )
    def continuous_training(
        store_uri: str = CLUSTER_STORE,
        dataset: str = IngestConfig.dataset,
        model_name: str = IngestConfig.model_name,
        data_fingerprint: str = "",  # computed by `ctp run/submit`; "" = whatever data is there
        run_id: str = "",  # "" = the KFP run's own id
        trigger: str = DEFAULT_TRIGGER,
        evidence_uri: str = "",
        test_fraction: float = IngestConfig.test_fraction,
        replay_fraction: float = IngestConfig.replay_fraction,  # -1 (REPLAY_AUTO): sized by replay_ratio
        replay_ratio: float = IngestConfig.replay_ratio,
        allow_new_classes: bool = ValidateConfig.allow_new_classes,
        init: str = TrainConfig.init,
        epochs: int = TrainConfig.epochs,
        batch_size: int = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        seed: int = TrainConfig.seed,
        nproc_per_node: int = max(settings.gpus, 1),  # one worker per GPU of the training pod
        num_nodes: int = settings.nodes,  # > 1: a TrainJob (compile with --nodes)
        checkpoint_every: int = TrainConfig.checkpoint_every,
        shrink_perturb: bool = TrainConfig.shrink_perturb,
        patience: int = TrainConfig.patience,
        distill: float = TrainConfig.distill,
        flip: bool = TrainConfig.flip,
        crop_pad: int = TrainConfig.crop_pad,
        min_accuracy: float = EvaluateConfig.min_accuracy,
        margin: float = EvaluateConfig.margin,
        alpha: float = EvaluateConfig.alpha,
        gate_test: str = EvaluateConfig.gate_test,
        max_forgetting: float = EvaluateConfig.max_forgetting,
        min_agreement: float = DeployConfig.min_agreement,
        deploy_target: str = DeployConfig.deploy_target,
        kserve_namespace: str = KServeConfig.namespace,
        canary_percent: int = KServeConfig.canary_percent,
        canary_intervals: int = KServeConfig.intervals,
        prometheus_url: str = KServeConfig.prometheus_url,
        lease_policy: str = IngestConfig.lease_policy,
        lease_ttl_seconds: int = IngestConfig.lease_ttl_seconds,
        lease_wait_seconds: int = IngestConfig.lease_wait_seconds,
        force: bool = IngestConfig.force,
    ):
        ingest_task = ingest(
            store_uri=store_uri,
            dataset=dataset,
            model_name=model_name,
            test_fraction=test_fraction,
            replay_fraction=replay_fraction,
            replay_ratio=replay_ratio,
            data_fingerprint=data_fingerprint,
            lease_policy=lease_policy,
            lease_ttl_seconds=lease_ttl_seconds,
            lease_wait_seconds=lease_wait_seconds,
            force=force,
            run_id=run_id,
            job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).set_display_name("ingest")
        the_run = ingest_task.outputs["Output"]
        snapshot = ingest_task.outputs["snapshot"]
        # Another run of the model holds the lease: ingest recorded the skip and nothing else runs.
        with dsl.If(the_run != SKIPPED, name="lease-held"):
            validate_task = validate_data(
                store_uri=store_uri,
                model_name=model_name,
                allow_new_classes=allow_new_classes,
                run_id=the_run,
                snapshot=snapshot,
            ).set_display_name("validate-data")
            train_task = train(
                store_uri=store_uri,
                model_name=model_name,
                init=init,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                nproc_per_node=nproc_per_node,
                run_id=the_run,
                num_nodes=num_nodes,
                checkpoint_every=checkpoint_every,
                shrink_perturb=shrink_perturb,
                patience=patience,
                distill=distill,
                flip=flip,
                crop_pad=crop_pad,
                cluster=settings.to_dict(),
                snapshot=snapshot,
                validation=validate_task.outputs["report"],
            ).set_display_name("train")
            evaluate_task = evaluate(
                store_uri=store_uri,
                model_name=model_name,
                min_accuracy=min_accuracy,
                margin=margin,
                alpha=alpha,
                gate_test=gate_test,
                max_forgetting=max_forgetting,
                run_id=the_run,
                snapshot=snapshot,
                challenger=train_task.outputs["model"],
            ).set_display_name("evaluate")
            with dsl.If(evaluate_task.outputs["Output"] == "pass", name="gate-passed"):
                deploy_task = deploy_canary(
                    store_uri=store_uri,
                    model_name=model_name,
                    dataset=dataset,
                    trigger=trigger,
                    evidence_uri=evidence_uri,
                    min_agreement=min_agreement,
                    run_id=the_run,
                    deploy_target=deploy_target,
                    kserve_namespace=kserve_namespace,
                    canary_percent=canary_percent,
                    canary_intervals=canary_intervals,
                    prometheus_url=prometheus_url,
                    snapshot=snapshot,
                    validation=validate_task.outputs["report"],
                    challenger=train_task.outputs["model"],
                    evaluation=evaluate_task.outputs["report"],
                ).set_display_name("canary-deploy")
        tasks = (ingest_task, validate_task, train_task, evaluate_task, deploy_task)
        for task in tasks:
            # Components fix their base_image at decoration; each task's container spec is its own
            # copy, so the compile-time image is set here (the train step's TrainJob gets the same
            # trainer image through `cluster`).
            task.container_spec.image = settings.trainer_image if task is train_task else settings.base_image
            restrict_pod_security(task)  # its pod label lets the NetworkPolicies give the pod egress
            use_store_credentials(task, settings)
            if task is not train_task:
                task.set_cpu_limit(settings.step_cpu).set_memory_limit(settings.step_memory)
        # No step may be served from KFP's cache: each records under runs/<run-id>/ (a per-run input,
        # so the cache could never hit anyway), ingest takes the model's lease, and train, evaluate and
        # deploy depend on the champion of the moment. An unchanged window reuses its snapshot instead
        # (ingest finds snapshots/<fingerprint>/ already published).
        for task in tasks:
            task.set_caching_options(False)
        place_on_gpu_pool(train_task, settings)

    return continuous_training


def compile_pipeline(path: str, settings: ClusterSettings = ClusterSettings()) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(settings), package_path=path)
    return path
