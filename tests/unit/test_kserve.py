"""The KServe target against a fake Kubernetes API (no API server or KServe exists here): the
exact objects and patch bodies sent, in order, each validated against the InferenceService
schema (tests/unit/schemas); the registry on the real S3 server; logged predictions really
served by the canary's ONNX file. The step sends nothing but the InferenceService: credentials
live in an admin-created Secret behind the committed ServiceAccount."""

import copy
import json
import uuid
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from components._shared.dataset import ID, images_to_array
from components._shared.errors import ConfigError
from components._shared.model.files import META_FILE, ONNX_FILE
from components._shared.model.serving import onnx_probabilities
from components._shared.registry import CANARY, CHAMPION, PREVIOUS, Registry
from components._shared.sampledata import load_digits_uint8
from components._shared.store import S3Store, parquet_bytes
from components.deploy_canary.config import DeployConfig, KServeConfig
from components.deploy_canary.core import deploy
from components.deploy_canary.kserve import (
    KIND,
    PROMOTE_PATCH,
    ROLLBACK_PATCH,
    KServeRollout,
    StorePredictionLog,
    inference_service,
    storage_uri,
)

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "kserve-inferenceservice-v1beta1.json").read_text())
KSERVE_SA = Path(__file__).parents[2] / "manifests" / "base" / "ctp-kserve-serviceaccount.yaml"


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKubernetesApi:  # no Kubernetes API server or KServe exists here
    """CustomObjectsApi stand-in: stores objects, applies merge patches, validates every stored
    InferenceService against the KServe schema, records every call in order. Any other API
    method (a Secret, a ServiceAccount, ...) is recorded as unexpected and fails the call."""

    def __init__(self, ready: bool = True):
        self.ready, self.revision, self.calls, self.objects = ready, 0, [], {}

    def __getattr__(self, method):
        if method.startswith("_"):
            raise AttributeError(method)

        def unexpected(*args, **kwargs):
            self.calls.append(("unexpected", method, (args, kwargs)))
            raise AssertionError(f"the step called {method}, which it must never need")

        return unexpected

    def _check(self, group, version, plural):
        assert (group, version, plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.calls.append(("get", name, None))
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[name])

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._check(group, version, plural)
        self.calls.append(("create", body["metadata"]["name"], copy.deepcopy(body)))
        self._store(copy.deepcopy(body))

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self._check(group, version, plural)
        self.calls.append(("patch", name, copy.deepcopy(body)))
        self._store(merge_patch(self.objects[name], body))

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.calls.append(("delete", name, None))
        del self.objects[name]

    def _store(self, obj):
        obj.pop("status", None)
        jsonschema.validate(obj, SCHEMA)
        self.revision += 1
        name = obj["metadata"]["name"]
        obj["status"] = {
            "conditions": [{"type": "Ready", "status": "True" if self.ready else "False"}],
            "components": {"predictor": {"latestCreatedRevision": f"{name}-predictor-{self.revision:05d}"}},
        }
        self.objects[name] = obj


class FakePrometheus:  # no Prometheus exists here: answers /api/v1/query like Prometheus does
    def __init__(self, error_rate: float, p99_seconds: float):
        self.values, self.queries = (error_rate, p99_seconds), []

    def __call__(self, url, timeout):
        import io
        import urllib.parse

        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        self.queries.append(query)
        value = self.values[0] if "revision_request_count" in query else self.values[1]
        body = {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, str(value)]}]},
        }
        return io.BytesIO(json.dumps(body).encode())


@pytest.fixture(scope="module")
def models(trained_models):
    return trained_models.root


@pytest.fixture
def s3_store(s3_server):
    return S3Store("ctp-test", f"kserve-{uuid.uuid4().hex[:8]}", s3_server)


CONFIG = KServeConfig(name="digits", namespace="ml", intervals=3, interval_seconds=60)


def card(model_dir, parent, run_id):
    meta = json.loads((model_dir / META_FILE).read_text())
    return {"run_id": run_id, "parent_version": parent, "data": {"classes": meta["classes"]}, "metrics": {}}


class LiveTraffic:
    """What KServe's payload logger records while we wait: each interval, 150 requests the
    canary (the version the InferenceService is annotated with) answered with its ONNX file."""

    def __init__(self, api, store, model_dir):
        self.api, self.store, self.model_dir, self.sleeps = api, store, model_dir, []
        self.images = load_digits_uint8()[0]

    def __call__(self, seconds):
        self.sleeps.append(seconds)
        version = self.api.objects["digits"]["metadata"]["annotations"]["ctp.dev/version"]
        images = self.images[150 * len(self.sleeps) : 150 * (len(self.sleeps) + 1)]
        probs = onnx_probabilities(self.model_dir / ONNX_FILE, images)
        image_array, field = images_to_array(images)
        table = pa.Table.from_arrays(
            [
                pa.array([f"req-{i}" for i in range(len(images))]),
                image_array,
                pa.array(probs.tolist(), pa.list_(pa.float32())),
            ],
            schema=pa.schema([pa.field(ID, pa.string()), field, pa.field("probs", pa.list_(pa.float32()))]),
        )
        self.store.put_bytes(
            f"predictions/digits/version={version}/part-{len(self.sleeps)}.parquet", parquet_bytes(table)
        )


def rollout_for(api, store, model_dir, config=CONFIG, **kwargs):
    traffic = LiveTraffic(api, store, model_dir)
    return KServeRollout(api, config, StorePredictionLog(store, "digits"), sleep=traffic, **kwargs), traffic


def test_objects_match_the_inferenceservice_schema():
    uri = storage_uri("s3://ctp/ctp", "digits", "v1")
    assert uri == "s3://ctp/ctp/models/digits/versions/v1/"
    isvc = inference_service(CONFIG, uri, "v1")
    jsonschema.validate(isvc, SCHEMA)
    assert isvc["spec"] == {
        "predictor": {"serviceAccountName": "ctp-kserve", "model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}}
    }
    with pytest.raises(jsonschema.ValidationError):  # the schema really rejects a misspelt field
        jsonschema.validate(merge_patch(isvc, {"spec": {"predictor": {"canaryTraficPercent": 10}}}), SCHEMA)
    with pytest.raises(ConfigError):
        storage_uri("/tmp/store", "digits", "v1")


def first_deploy(api, s3_store, models):
    rollout, _ = rollout_for(api, s3_store, models / "good")
    return deploy(s3_store, models / "good", card(models / "good", None, "r1"), DeployConfig(), rollout)


def test_predictor_runs_as_the_committed_service_account_and_no_secret_is_sent(s3_store, models):
    api = FakeKubernetesApi()
    first = first_deploy(api, s3_store, models)
    rollout, _ = rollout_for(api, s3_store, models / "good")
    deploy(s3_store, models / "good", card(models / "good", first["version"], "r2"), DeployConfig(), rollout)
    account = yaml.safe_load(KSERVE_SA.read_text())
    assert account["kind"] == "ServiceAccount"
    assert api.objects["digits"]["spec"]["predictor"]["serviceAccountName"] == account["metadata"]["name"]
    assert [verb for verb, _, _ in api.calls] == ["get", "create", "get", "get", "patch", "get", "patch"]
    assert all(body is None or body.get("kind", KIND) == KIND for _, _, body in api.calls)
    assert "Secret" not in json.dumps([body for _, _, body in api.calls])
    with pytest.raises(AssertionError):  # the fake really refuses anything but the InferenceService
        api.create_namespaced_secret("ml", {"kind": "Secret"})
    assert api.calls[-1][:2] == ("unexpected", "create_namespaced_secret")


def test_first_model_creates_the_inferenceservice_and_becomes_champion(s3_store, models):
    api = FakeKubernetesApi()
    record = first_deploy(api, s3_store, models)
    uri = f"{s3_store.uri}/models/digits/versions/{record['version']}/"
    assert [(verb, name) for verb, name, _ in api.calls] == [("get", "digits"), ("create", "digits"), ("get", "digits")]
    assert api.calls[1][2] == inference_service(CONFIG, uri, record["version"])
    assert record["decision"] == "promote" and record["target"] == "kserve"
    assert Registry(s3_store, "digits").alias(CHAMPION).version == record["version"]
    assert s3_store.exists(f"models/digits/versions/{record['version']}/model.onnx")  # what KServe loads


def test_good_canary_is_watched_for_every_interval_then_promoted(s3_store, models):
    api = FakeKubernetesApi()
    first = first_deploy(api, s3_store, models)
    api.calls.clear()
    rollout, traffic = rollout_for(api, s3_store, models / "good")
    second = deploy(s3_store, models / "good", card(models / "good", first["version"], "r2"), DeployConfig(), rollout)
    uri = f"{s3_store.uri}/models/digits/versions/{second['version']}/"
    assert api.calls == [
        ("get", "digits", None),
        (
            "patch",
            "digits",
            {
                "metadata": {"annotations": {"ctp.dev/version": second["version"]}},
                "spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": uri}}},
            },
        ),
        ("get", "digits", None),
        ("patch", "digits", {"spec": {"predictor": {"canaryTrafficPercent": None}}}),
    ]
    assert traffic.sleeps == [60, 60, 60]
    intervals = second["analysis"]["intervals"]
    assert [i["n"] for i in intervals] == [150, 150, 150] and all(i["agreement"] == 1.0 for i in intervals)
    assert second["decision"] == "promote" and second["analysis"]["revision"] == "digits-predictor-00002"
    predictor = api.objects["digits"]["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor and predictor["model"]["storageUri"] == uri
    registry = Registry(s3_store, "digits")
    assert (registry.alias(CHAMPION).version, registry.alias(PREVIOUS).version) == (second["version"], first["version"])


def test_failed_canary_rolls_back_traffic_and_aliases(s3_store, models):
    api = FakeKubernetesApi()
    first = first_deploy(api, s3_store, models)
    registry = Registry(s3_store, "digits")
    aliases_before = registry.aliases()
    api.calls.clear()
    rollout, traffic = rollout_for(api, s3_store, models / "untrained")
    bad = deploy(
        s3_store, models / "untrained", card(models / "untrained", first["version"], "r2"), DeployConfig(), rollout
    )
    assert [(verb, body) for verb, _, body in api.calls][-1] == ("patch", ROLLBACK_PATCH)
    assert [verb for verb, _, _ in api.calls] == ["get", "patch", "get", "patch"]
    assert traffic.sleeps == [60]  # stopped at the first failing interval
    assert bad["decision"] == "rollback" and bad["reason"].startswith("interval 1/3: agreement")
    assert api.objects["digits"]["spec"]["predictor"]["canaryTrafficPercent"] == 0  # all traffic to the champion
    assert registry.alias(CHAMPION).version == first["version"]
    assert registry.alias(CANARY).version is None
    assert {k: v for k, v in registry.aliases().items() if k != CANARY} == {
        k: v for k, v in aliases_before.items() if k != CANARY
    }
    audit = [(e["alias"], e["version"]) for e in registry.audit_log()]
    assert audit[-2:] == [(CANARY, bad["version"]), (CANARY, None)]
    assert s3_store.get_json("runs/r2/decision.json")["analysis"]["intervals"][0]["agreement"] < 0.7


def test_prometheus_error_rate_rolls_back_a_canary_that_agrees(s3_store, models):
    api = FakeKubernetesApi()
    first = first_deploy(api, s3_store, models)
    prometheus = FakePrometheus(error_rate=0.2, p99_seconds=0.05)
    config = KServeConfig(
        name="digits",
        namespace="ml",
        intervals=2,
        interval_seconds=30,
        prometheus_url="http://prometheus.monitoring:9090",
    )
    rollout, _ = rollout_for(api, s3_store, models / "good", config, opener=prometheus)
    record = deploy(s3_store, models / "good", card(models / "good", first["version"], "r2"), DeployConfig(), rollout)
    interval = record["analysis"]["intervals"][0]
    assert interval["agreement"] == 1.0 and interval["error_rate"] == 0.2 and interval["p99_latency_seconds"] == 0.05
    assert record["decision"] == "rollback" and "error_rate 0.2 > 0.01" in record["reason"]
    assert all('revision_name="digits-predictor-00002"' in q for q in prometheus.queries)
    assert api.calls[-1][2] == ROLLBACK_PATCH


def test_inferenceservice_never_ready_rolls_back(s3_store, models):
    api = FakeKubernetesApi(ready=False)
    config = KServeConfig(name="digits", namespace="ml", ready_timeout_seconds=0)
    rollout, _ = rollout_for(api, s3_store, models / "good", config)
    record = deploy(s3_store, models / "good", card(models / "good", None, "r1"), DeployConfig(), rollout)
    assert record["decision"] == "rollback" and "not Ready" in record["reason"]
    assert [verb for verb, _, _ in api.calls] == ["get", "create", "get", "delete"]  # nothing was served before
    assert Registry(s3_store, "digits").alias(CHAMPION) is None
    assert PROMOTE_PATCH not in [body for _, _, body in api.calls]
