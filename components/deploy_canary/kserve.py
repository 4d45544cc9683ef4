"""KServe target: one InferenceService serves the champion; a new version is rolled out to it
with ``canaryTrafficPercent``, watched for N intervals, then promoted or rolled back.

The InferenceService is built with the kubernetes client's models and sent through
``CustomObjectsApi``; it is the only object the step touches. Its predictor runs as the committed
ServiceAccount ``ctp-kserve`` (manifests/base); the S3 keys are in Secrets the cluster admin
creates once (manifests/README.md) and the InferenceService only names them: the step never sees
or writes credentials, so the runner Role needs no access to Secrets. Patches are JSON merge
patches: ``null`` removes a field.

Serving runtime: KServe's stock runtime for ``modelFormat: onnx`` is Triton
(``kserve-tritonserver`` ClusterServingRuntime: supportedModelFormats onnx, protocolVersions
v2/grpc-v2, KServe config/runtimes/kserve-tritonserver.yaml). A predictor without
``protocolVersion`` asks for v1 (ModelSpec.GetProtocol, pkg/apis/serving/v1beta1/
predictor_model.go) and no runtime matches, so the model says ``protocolVersion: v2``. The
storage URI is the version's Triton model repository (components/_shared/model/triton.py).

Readiness (``wait_ready``): KServe copies ``status.observedGeneration`` from the Knative Service
(serverless) or the Deployment (raw) it manages, not from the InferenceService's own
``metadata.generation`` (pkg/apis/serving/v1beta1/inference_service_status.go, PropagateStatus and
PropagateRawStatus), so the two counters cannot be compared. A patch that changes the model
changes the predictor's pod template; it has been reconciled when the child's generation moved
past the one seen before the patch and, in serverless mode, a new revision exists and is the
latest ready one (ComponentStatusSpec latestCreatedRevision == latestReadyRevision).

Inference log: ``spec.predictor.logger`` turns on KServe's payload logger (an agent sidecar in the
predictor pod, KServe >= 0.16 for blob storage) writing every request and response under the
store's ``inference-log/``, which ``ctp log compact`` reads. Two S3 identities, each least
privilege: the storage initializer reads models with the ``storage-config`` Secret entry named
by ``model.storage.key``; the logger writes with the Secret behind ServiceAccount ``ctp-logger``
(``logger.storage.serviceAccountName``). The predictor's own ServiceAccount names no Secret on
purpose: KServe gives the agent the pod ServiceAccount's S3 keys first and the logger's second,
and its env merge keeps the first ``secretKeyRef`` (pkg/webhook/admission/pod/agent_injector.go
InjectAgent, pkg/utils/utils.go MergeEnvs), so a key there would be the one the logger writes with.
"""

from __future__ import annotations

import copy
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from components._shared.cluster import RUN_AS_UID
from components._shared.errors import ConfigError, CtpError
from components._shared.model import triton
from components._shared.model.serving import onnx_probabilities
from components._shared.store import Store, read_parquet
from components.deploy_canary.config import LOG_PREFIX, VERSION_ANNOTATION, DeployConfig, KServeConfig
from components.deploy_canary.core import NO_TRAFFIC, compare_predictions

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
# Knative queue-proxy metrics of the canary revision (serverless mode); override for raw deployments.
ERROR_RATE_QUERY = (
    'sum(rate(revision_request_count{{namespace_name="{namespace}",revision_name="{revision}",'
    'response_code_class!="2xx"}}[{window}s])) / sum(rate(revision_request_count{{'
    'namespace_name="{namespace}",revision_name="{revision}"}}[{window}s]))'
)
P99_LATENCY_QUERY = (
    "histogram_quantile(0.99, sum by (le) (rate(revision_request_latencies_bucket{{"
    'namespace_name="{namespace}",revision_name="{revision}"}}[{window}s]))) / 1000'
)


POD_LABELS = {"app.kubernetes.io/part-of": "ctp", "app.kubernetes.io/component": "predictor"}
READY_POLL_SECONDS = 5.0
# The logger's storage needs path, key and parameters set (v1beta1 validateLogger); the agent reads
# only path and parameters.format. "credentials" is the key KServe fills in when none is given.
LOGGER_STORAGE = {"path": "", "key": "credentials", "parameters": {"format": "json"}}


def _s3_root(store_uri: str) -> str:
    if not store_uri.startswith("s3://"):
        raise ConfigError(
            f"store {store_uri} is not on S3; KServe can only load models from s3://",
            hint="run with --store s3://bucket/prefix, or deploy_target=local",
        )
    return store_uri.rstrip("/")


def storage_uri(store_uri: str, model: str, version: str) -> str:
    """The version's Triton model repository on S3 (``<model>/1/model.onnx`` and
    ``<model>/config.pbtxt`` inside it): KServe downloads it to /mnt/models, Triton's
    ``--model-store``."""
    return f"{_s3_root(store_uri)}/models/{model}/versions/{version}/{triton.REPOSITORY_DIR}/"


def log_url(store_uri: str) -> str:
    """The payload logger's URL: the store's raw inference log, where ``ctp log compact`` reads.
    KServe takes the host as the bucket and the path as the key prefix (pkg/logger/store.go)."""
    return f"{_s3_root(store_uri)}/{LOG_PREFIX.rstrip('/')}"


def payload_logger(config: KServeConfig, url: str) -> dict:
    """``spec.predictor.logger``: every request and response to blob storage at ``url``, each event
    carrying the served version (the annotation is on every predictor pod of that revision)."""
    return {
        "url": url,
        "mode": "all",
        "metadataAnnotations": [VERSION_ANNOTATION],
        "storage": {"serviceAccountName": config.logger_service_account, **copy.deepcopy(LOGGER_STORAGE)},
    }


def wire(predictor: dict, config: KServeConfig, logger_url: str) -> dict:
    """Set the predictor's S3 wiring on ``predictor`` (a spec or a merge patch of one): its
    ServiceAccount, the model's storage-config key and the payload logger. Every canary patch
    carries it too, so an InferenceService created before (without the logger, or with the
    predictor's key on its ServiceAccount) is brought up to date by its next canary."""
    predictor["serviceAccountName"] = config.service_account
    predictor["logger"] = payload_logger(config, logger_url)
    predictor.setdefault("model", {})["storage"] = {"key": config.model_storage_key}  # the storage initializer's key
    return predictor


def inference_service(config: KServeConfig, uri: str, version: str, logger_url: str) -> dict:
    """The InferenceService serving ``uri`` (a Triton model repository, storage_uri), its payload
    logger writing to ``logger_url`` (log_url)."""
    from kubernetes import client

    metadata = client.V1ObjectMeta(
        name=config.name, namespace=config.namespace, labels=dict(POD_LABELS), annotations={VERSION_ANNOTATION: version}
    )
    pod_security = client.V1PodSecurityContext(
        run_as_non_root=True, run_as_user=RUN_AS_UID, seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")
    )
    container_security = client.V1SecurityContext(
        allow_privilege_escalation=False, capabilities=client.V1Capabilities(drop=["ALL"])
    )
    serialize = client.ApiClient().sanitize_for_serialization
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": serialize(metadata),
        "spec": {
            "predictor": wire(
                {
                    "labels": dict(POD_LABELS),  # ComponentExtensionSpec: added to the predictor pods
                    "annotations": {"sidecar.istio.io/inject": "false"},
                    "securityContext": serialize(pod_security),  # PredictorSpec inlines a PodSpec
                    "model": {
                        "modelFormat": {"name": "onnx"},
                        "protocolVersion": "v2",  # the Triton runtime speaks v2 and grpc-v2 only
                        "storageUri": uri,
                        # ModelSpec inlines a Container, merged over the runtime's kserve-container
                        "securityContext": serialize(container_security),
                    },
                },
                config,
                logger_url,
            )
        },
    }


def canary_patch(uri: str, version: str, percent: int | None) -> dict:
    """Serve ``uri``: with ``percent`` of the traffic (a canary), or all of it (None)."""
    return {
        "metadata": {"annotations": {VERSION_ANNOTATION: version}},
        "spec": {"predictor": {"canaryTrafficPercent": percent, "model": {"storageUri": uri}}},
    }


def served(isvc: dict) -> tuple[str | None, str | None, int | None]:
    """(storage URI, ctp version, canaryTrafficPercent) an InferenceService's spec serves."""
    predictor = isvc.get("spec", {}).get("predictor", {})
    version = isvc.get("metadata", {}).get("annotations", {}).get(VERSION_ANNOTATION)
    return predictor.get("model", {}).get("storageUri"), version, predictor.get("canaryTrafficPercent")


def not_ready_reason(isvc: dict | None, before: dict | None, new_revision: bool = True) -> str | None:
    """None when ``isvc`` serves its current spec; else why not. ``before``: the object as read
    just before the create or patch being waited for (None after a create); ``new_revision``:
    the patch changed the model (the pod template), not only the traffic split."""
    if isvc is None:
        return "the InferenceService does not exist"
    status = isvc.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions", [])}
    predictor = (status.get("components") or {}).get("predictor") or {}
    if before is not None:
        seen = before.get("status") or {}
        if int(status.get("observedGeneration") or 0) <= int(seen.get("observedGeneration") or 0):
            return f"not reconciled yet (observedGeneration {status.get('observedGeneration')})"
        old_revision = ((seen.get("components") or {}).get("predictor") or {}).get("latestCreatedRevision")
        if new_revision and old_revision and predictor.get("latestCreatedRevision") == old_revision:
            return f"no new predictor revision yet (latest {old_revision})"
    if predictor.get("latestCreatedRevision") != predictor.get("latestReadyRevision"):
        return (
            f"predictor revision {predictor.get('latestCreatedRevision')} not ready "
            f"(ready: {predictor.get('latestReadyRevision')})"
        )
    ready = conditions.get("Ready", {})
    if ready.get("status") != "True":
        return f"Ready={ready.get('status', 'Unknown')}" + (f": {ready['message']}" if ready.get("message") else "")
    return None


PROMOTE_PATCH = {"spec": {"predictor": {"canaryTrafficPercent": None}}}  # the canary takes all traffic
ROLLBACK_PATCH = {"spec": {"predictor": {"canaryTrafficPercent": 0}}}  # all traffic back to the last good revision


class PredictionLog(Protocol):
    """Requests the canary served and what it answered (KServe's payload logger writes them)."""

    def canary_window(self, version: str, interval: int) -> tuple[np.ndarray, np.ndarray]: ...


class StorePredictionLog:
    """Logged predictions in the store: ``predictions/<model>/version=<v>/*.parquet`` with the
    columns of a traffic batch plus ``probs`` (the served probabilities). Each window returns
    the objects that appeared since the previous one."""

    def __init__(self, store: Store, model: str):
        self.store, self.model, self.seen = store, model, set()

    def canary_window(self, version: str, interval: int) -> tuple[np.ndarray, np.ndarray]:
        from components._shared.dataset import decode_images

        fresh = [
            k
            for k in self.store.list(f"predictions/{self.model}/version={version}/")
            if k.endswith(".parquet") and k not in self.seen
        ]
        self.seen.update(fresh)
        tables = [read_parquet(self.store, k) for k in fresh]
        if not tables:
            return np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0, 1), np.float32)
        return (
            np.concatenate([decode_images(t) for t in tables]),
            np.concatenate([np.asarray(t.column("probs").to_pylist(), np.float32) for t in tables]),
        )


def prometheus_value(url: str, query: str, opener: Callable = urllib.request.urlopen) -> float | None:
    import json

    with opener(f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=10) as reply:
        result = json.loads(reply.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def serving_rollout(config: DeployConfig, store: Store, kserve: KServeConfig):
    """None for the local target (replayed traffic); the KServe rollout for ``kserve``."""
    if config.deploy_target == "local":
        return None
    return rollout_in_cluster(store, config.model_name, kserve)


def rollout_in_cluster(store: Store, model: str, config: KServeConfig) -> KServeRollout:
    """The real API from the pod's service account, logged predictions from the store. Refuses
    a non-S3 store before anything is published."""
    from kubernetes import client
    from kubernetes import config as kube_config

    storage_uri(store.uri, model, "version")
    kube_config.load_incluster_config()
    return KServeRollout(client.CustomObjectsApi(), config, StorePredictionLog(store, model))


class KServeRollout:
    """Drives one InferenceService through canary -> promote | rollback (see core.deploy)."""

    def __init__(
        self,
        custom_api,
        config: KServeConfig,
        predictions: PredictionLog,
        *,
        sleep: Callable[[float], None] = time.sleep,
        opener: Callable = urllib.request.urlopen,
        poll: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``sleep`` waits out a canary interval; ``poll`` and ``clock`` pace and time the
        readiness checks."""
        self.custom, self.config = custom_api, config
        self.predictions, self.sleep, self.opener = predictions, sleep, opener
        self.poll, self.clock = poll, clock
        self.created, self.before = False, None

    def _isvc(self, **kwargs):
        return dict(group=GROUP, version=VERSION, namespace=self.config.namespace, plural=PLURAL, **kwargs)

    def identity(self) -> dict:
        """Where serving is, recorded in the decision (``ctp models promote|rollback`` read it)."""
        return {"namespace": self.config.namespace, "name": self.config.name}

    def current(self) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(**self._isvc(name=self.config.name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def start(self, uri: str, version: str, logger_url: str) -> None:
        """Create the InferenceService (first model) or patch it to canary the new version."""
        self.before = self.current()
        if self.before is None:
            body = inference_service(self.config, uri, version, logger_url)
            self.custom.create_namespaced_custom_object(**self._isvc(body=body))
            self.created = True
        else:
            body = canary_patch(uri, version, self.config.canary_percent)
            wire(body["spec"]["predictor"], self.config, logger_url)
            self.patch(body)

    def patch(self, body: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(**self._isvc(name=self.config.name, body=body))

    def wait_ready(self, before: dict | None = None, new_revision: bool = True) -> dict | None:
        """The InferenceService status once it serves its current spec (not_ready_reason), or
        None at the timeout (``self.last_reason`` says why). ``before``: the object as read
        just before the create or patch (default: the one ``start`` read)."""
        before = self.before if before is None else before
        deadline = self.clock() + self.config.ready_timeout_seconds
        while True:
            isvc = self.current()
            self.last_reason = not_ready_reason(isvc, before, new_revision)
            if self.last_reason is None:
                return isvc["status"]
            if self.clock() >= deadline:
                return None
            self.poll(READY_POLL_SECONDS)

    def switch(self, uri: str, version: str) -> dict:
        """Serve ``uri`` with all the traffic and wait until it does; on any failure after the
        patch, put back what was served (KSERVE_NOT_READY). Returns the object it replaced."""
        before = self.current()
        if before is None:
            raise CtpError(
                f"InferenceService {self.config.namespace}/{self.config.name} does not exist",
                code="KSERVE_NOT_FOUND",
                hint="the first canary deploy with deploy_target=kserve creates it; check --kserve-namespace",
            )
        old_uri, _, percent = served(before)
        if (old_uri, percent) == (uri, None):  # already serving it: nothing to patch, only to check
            self.last_reason = not_ready_reason(before, None)
            if self.last_reason is None:
                return before
            raise CtpError(
                f"InferenceService {self.config.namespace}/{self.config.name} serves {version} but is not "
                f"ready ({self.last_reason})",
                code="KSERVE_NOT_READY",
                hint="nothing was changed; kubectl describe inferenceservice",
            )
        self._try_patch(canary_patch(uri, version, None), "switching to " + version)
        if self.wait_ready(before, new_revision=old_uri != uri) is not None:
            return before
        why = self.last_reason
        restored = self.restore(before, version)
        raise CtpError(
            f"InferenceService {self.config.namespace}/{self.config.name} not serving {version} within "
            f"{self.config.ready_timeout_seconds:.0f} s ({why}); {restored}",
            code="KSERVE_NOT_READY",
            hint="kubectl describe inferenceservice; check the model files and storage-config (manifests/README.md)",
        )

    def restore(self, before: dict, ours: str) -> str:
        """Patch back the storage URI, version and canary share ``before`` had, unless someone
        changed the InferenceService after us (then theirs stays). Says what it did."""
        from kubernetes.client.exceptions import ApiException

        now = self.current() or {}
        if served(now)[1] != ours:
            return f"left as it is: it now serves {served(now)[1]}, not ours"
        uri, version, percent = served(before)
        body = canary_patch(uri, version, percent)
        body["metadata"]["resourceVersion"] = now["metadata"].get("resourceVersion")  # a precondition
        try:
            self.patch(body)
        except ApiException as err:
            return f"restoring {version} failed ({err.status} {err.reason}); check it by hand"
        ready = self.wait_ready(now, new_revision=served(now)[0] != uri) is not None
        return f"restored {version}" + ("" if ready else f" (not Ready yet: {self.last_reason})")

    def _try_patch(self, body: dict, what: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.patch(body)
        except ApiException as err:
            raise CtpError(
                f"patching InferenceService {self.config.namespace}/{self.config.name} ({what}) failed: "
                f"{err.status} {err.reason}",
                code="KSERVE_PATCH_FAILED",
                hint="nothing was changed; check the Role (patch inferenceservices) and the object",
            ) from None

    def serving_checks(self, revision: str) -> dict:
        """Error rate and p99 latency of the canary revision, when Prometheus is configured."""
        if not self.config.prometheus_url:
            return {}
        values = {
            "namespace": self.config.namespace,
            "revision": revision,
            "window": max(int(self.config.interval_seconds), 30),
        }
        return {
            "error_rate": prometheus_value(self.config.prometheus_url, ERROR_RATE_QUERY.format(**values), self.opener),
            "p99_latency_seconds": prometheus_value(
                self.config.prometheus_url, P99_LATENCY_QUERY.format(**values), self.opener
            ),
        }

    def analyse(self, registry, version: str, champion_onnx: Path | None, config: DeployConfig) -> dict:
        """Canary the version, then judge it over N intervals; stops at the first failing one."""
        uri = storage_uri(registry.store.uri, registry.model, version)
        self.start(uri, version, log_url(registry.store.uri))
        status = self.wait_ready()
        if status is None:
            return {
                "decision": "rollback",
                "storage_uri": uri,
                "inference_service": self.identity(),
                "reason": f"InferenceService {self.config.name} "
                f"not Ready within {self.config.ready_timeout_seconds:.0f} s ({self.last_reason}; check entry "
                f"{self.config.model_storage_key} of Secret storage-config: manifests/README.md)",
            }
        if champion_onnx is None:
            return {
                "decision": "promote",
                "storage_uri": uri,
                "inference_service": self.identity(),
                "reason": "first model: InferenceService Ready",
            }
        revision = status.get("components", {}).get("predictor", {}).get("latestCreatedRevision", "")
        intervals = []
        for index in range(self.config.intervals):
            self.sleep(self.config.interval_seconds)
            intervals.append(self._interval(index, version, revision, champion_onnx, config))
            if intervals[-1]["decision"] == "rollback":
                break
        last = intervals[-1]
        reason = (
            NO_TRAFFIC
            if not any(i["n"] for i in intervals)
            else f"interval {len(intervals)}/{self.config.intervals}: {last['reason']}"
        )
        return {
            "decision": last["decision"],
            "reason": reason,
            "storage_uri": uri,
            "inference_service": self.identity(),
            "revision": revision,
            "canary_percent": self.config.canary_percent,
            "intervals": intervals,
        }

    def _interval(self, index: int, version: str, revision: str, champion_onnx: Path, config: DeployConfig) -> dict:
        images, canary = self.predictions.canary_window(version, index)
        evidence = (
            {"n": 0, "decision": "promote", "reason": "no canary traffic in this interval"}
            if not len(images)
            else compare_predictions(canary, onnx_probabilities(champion_onnx, images), config)
        )
        serving = self.serving_checks(revision)
        evidence.update(serving)
        limits = (
            ("error_rate", self.config.max_error_rate),
            ("p99_latency_seconds", self.config.max_p99_latency_seconds),
        )
        for name, limit in limits:
            if serving.get(name) is not None and serving[name] > limit and evidence["decision"] == "promote":
                evidence.update(decision="rollback", reason=f"{name} {serving[name]:.3g} > {limit}")
        return {"interval": index + 1, **evidence}

    def finish(self, decision: str) -> None:
        """Promote: the canary takes all traffic. Roll back: traffic returns to the champion
        (a first model that never became champion is removed)."""
        if decision == "promote":
            if not self.created:
                self.custom.patch_namespaced_custom_object(**self._isvc(name=self.config.name, body=PROMOTE_PATCH))
        elif self.created:
            self.custom.delete_namespaced_custom_object(**self._isvc(name=self.config.name))
        else:
            self.custom.patch_namespaced_custom_object(**self._isvc(name=self.config.name, body=ROLLBACK_PATCH))
