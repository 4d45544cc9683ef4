"""KServe target: one InferenceService serves the champion; a new version is rolled out to it
with ``canaryTrafficPercent``, watched for N intervals, then promoted or rolled back.

The InferenceService is built with the kubernetes client's models and sent through
``CustomObjectsApi``; it is the only object the step touches. Its predictor runs as the committed
ServiceAccount ``ctp-kserve`` (manifests/base), which names the S3 Secret the cluster admin
creates once (manifests/README.md): the step never sees or writes credentials, so the runner Role
needs no access to Secrets. Patches are JSON merge patches: ``null`` removes a field.
"""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from components._shared.errors import ConfigError
from components._shared.model.serving import onnx_probabilities
from components._shared.store import Store, read_parquet
from components.deploy_canary.config import DeployConfig, KServeConfig
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


def storage_uri(store_uri: str, model: str, version: str) -> str:
    """The version's folder on MinIO; KServe's ONNX runtime loads the model.onnx inside it."""
    if not store_uri.startswith("s3://"):
        raise ConfigError(
            f"store {store_uri} is not on S3; KServe can only load models from s3://",
            hint="run with --store s3://bucket/prefix, or deploy_target=local",
        )
    return f"{store_uri.rstrip('/')}/models/{model}/versions/{version}/"


def inference_service(config: KServeConfig, uri: str, version: str) -> dict:
    from kubernetes import client

    metadata = client.V1ObjectMeta(
        name=config.name,
        namespace=config.namespace,
        labels={"app.kubernetes.io/part-of": "ctp"},
        annotations={"ctp.dev/version": version},
    )
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": client.ApiClient().sanitize_for_serialization(metadata),
        "spec": {
            "predictor": {
                "serviceAccountName": config.service_account,
                "model": {"modelFormat": {"name": "onnx"}, "storageUri": uri},
            }
        },
    }


def canary_patch(uri: str, version: str, percent: int) -> dict:
    return {
        "metadata": {"annotations": {"ctp.dev/version": version}},
        "spec": {"predictor": {"canaryTrafficPercent": percent, "model": {"storageUri": uri}}},
    }


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
    ):
        self.custom, self.config = custom_api, config
        self.predictions, self.sleep, self.opener = predictions, sleep, opener
        self.created = False

    def _isvc(self, **kwargs):
        return dict(group=GROUP, version=VERSION, namespace=self.config.namespace, plural=PLURAL, **kwargs)

    def current(self) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(**self._isvc(name=self.config.name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def start(self, uri: str, version: str) -> None:
        """Create the InferenceService (first model) or patch it to canary the new version."""
        if self.current() is None:
            self.custom.create_namespaced_custom_object(**self._isvc(body=inference_service(self.config, uri, version)))
            self.created = True
        else:
            self.custom.patch_namespaced_custom_object(
                **self._isvc(name=self.config.name, body=canary_patch(uri, version, self.config.canary_percent))
            )

    def wait_ready(self) -> dict | None:
        """The InferenceService status once Ready=True, or None at the timeout."""
        deadline = time.monotonic() + self.config.ready_timeout_seconds
        while True:
            status = (self.current() or {}).get("status", {})
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])):
                return status
            if time.monotonic() >= deadline:
                return None
            self.sleep(min(5.0, self.config.interval_seconds or 5.0))

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
        self.start(uri, version)
        status = self.wait_ready()
        if status is None:
            return {
                "decision": "rollback",
                "storage_uri": uri,
                "reason": f"InferenceService {self.config.name} "
                f"not Ready within {self.config.ready_timeout_seconds:.0f} s (check the S3 Secret behind "
                f"ServiceAccount {self.config.service_account}: manifests/README.md)",
            }
        if champion_onnx is None:
            return {"decision": "promote", "storage_uri": uri, "reason": "first model: InferenceService Ready"}
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
