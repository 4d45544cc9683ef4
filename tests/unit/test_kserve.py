"""The KServe target against a fake Kubernetes API (no API server or KServe exists here): the
exact objects and patch bodies sent, in order, each validated against the InferenceService
schema (tests/unit/schemas); the registry on the real S3 server; logged predictions really
served by the canary's ONNX file. The step sends nothing but the InferenceService: credentials
live in an admin-created Secret behind the committed ServiceAccount."""

import copy
import json
import posixpath
import urllib.parse
import uuid
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from components._shared.cluster import RUN_AS_UID
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
    canary_patch,
    inference_service,
    log_url,
    not_ready_reason,
    payload_logger,
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
    """CustomObjectsApi stand-in that behaves as the API server and KServe's serverless
    controller do for what ctp reads; records every call in order and validates every stored
    InferenceService against the KServe schema. Any other API method (a Secret, a
    ServiceAccount, ...) is recorded as unexpected and fails the call.

    API server (a CRD with the status subresource): ``metadata.generation`` is 1 on create and
    moves on every change of ``spec`` (not of metadata); ``resourceVersion`` moves on every
    write; a merge patch carrying a stale ``metadata.resourceVersion`` is refused with 409.

    KServe controller (kserve/kserve v0.15.2): it reconciles ``lag`` GETs after a write; until
    then the status is the old one, a stale Ready=True right after a patch. Reconciling derives
    the predictor's Knative Service (the predictor minus canaryTrafficPercent is its pod
    template, with minReplicas defaulted to 1 as pkg/controller/v1alpha1/utils/utils.go does;
    canaryTrafficPercent is its traffic). The Knative Service's generation moves when that
    derived spec changes, a changed template creates a new revision, and KServe copies the
    Knative Service's observedGeneration into the InferenceService status
    (pkg/apis/serving/v1beta1/inference_service_status.go PropagateStatus). A revision whose model
    does not load (``ready`` False, or its storage URI in ``broken``) never becomes
    latestReadyRevision, and Ready is False while it is the latest created one."""

    def __init__(self, ready: bool = True, lag: int = 0):
        self.ready, self.lag, self.calls, self.objects = ready, lag, [], {}
        self.broken, self.children, self.pending, self.resource_version = set(), {}, {}, 0
        self.patch_error = None  # an ApiException the next patch raises

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
        if self.pending.get(name, 0) > 0:
            self.pending[name] -= 1
        elif name in self.pending:
            del self.pending[name]
            self.reconcile(name)
        return copy.deepcopy(self.objects[name])

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._check(group, version, plural)
        self.calls.append(("create", body["metadata"]["name"], copy.deepcopy(body)))
        obj = copy.deepcopy(body)
        obj["metadata"]["generation"] = 1
        self._store(obj)
        return copy.deepcopy(obj)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self._check(group, version, plural)
        self.calls.append(("patch", name, copy.deepcopy(body)))
        if self.patch_error is not None:
            error, self.patch_error = self.patch_error, None
            raise error
        old = self.objects[name]
        body = copy.deepcopy(body)
        precondition = body.get("metadata", {}).pop("resourceVersion", None)
        if precondition is not None and precondition != old["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        obj = merge_patch(old, body)
        obj["status"] = old.get("status")  # the status subresource: a patch of the object cannot change it
        if obj["spec"] != old["spec"]:
            obj["metadata"]["generation"] = old["metadata"]["generation"] + 1
        self._store(obj)
        return copy.deepcopy(obj)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.calls.append(("delete", name, None))
        del self.objects[name]
        self.children.pop(name, None)
        self.pending.pop(name, None)

    def _store(self, obj):
        status = obj.pop("status", None)
        jsonschema.validate(obj, SCHEMA)
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        if status is not None:
            obj["status"] = status
        name = obj["metadata"]["name"]
        self.objects[name] = obj
        self.pending[name] = self.lag

    def reconcile(self, name, template_change: dict | None = None):
        """KServe's controller, once: derive the Knative Service, move its generation and
        revisions, copy its status. ``template_change``: fields KServe itself adds to the pod
        template (a changed inferenceservice-config, e.g. after a KServe upgrade)."""
        predictor = self.objects[name]["spec"]["predictor"]
        child = self.children.setdefault(name, {"generation": 0, "spec": None, "revisions": [], "ready": None})
        template = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
        template = {"minReplicas": 1, **template, **(template_change or child.get("extra") or {})}
        child["extra"] = template_change or child.get("extra")
        spec = {"template": template, "traffic": predictor.get("canaryTrafficPercent")}
        if spec != child["spec"]:
            child["generation"] += 1
            if child["spec"] is None or template != child["spec"]["template"]:
                revision = f"{name}-predictor-{len(child['revisions']) + 1:05d}"
                child["revisions"].append(revision)
                if self.ready and predictor["model"]["storageUri"] not in self.broken:
                    child["ready"] = revision
            child["spec"] = spec
        latest = child["revisions"][-1]
        predictor_status = {"latestCreatedRevision": latest}
        if child["ready"]:
            predictor_status["latestReadyRevision"] = child["ready"]
        ready = "True" if child["ready"] == latest else "False"
        self.objects[name]["status"] = {
            "observedGeneration": child["generation"],
            "conditions": [{"type": "PredictorReady", "status": ready}, {"type": "Ready", "status": ready}],
            "components": {"predictor": predictor_status},
        }


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
LOG_URL = log_url("s3://ctp/ctp")


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


class FakeClock:
    """time.monotonic and the readiness poll's sleep: polling advances the clock, nothing waits."""

    def __init__(self):
        self.now, self.polls = 0.0, []

    def __call__(self):
        return self.now

    def poll(self, seconds):
        self.polls.append(seconds)
        self.now += seconds


def rollout_for(api, store, model_dir, config=CONFIG, **kwargs):
    traffic, clock = LiveTraffic(api, store, model_dir), FakeClock()
    kwargs = {"poll": clock.poll, "clock": clock, **kwargs}
    return KServeRollout(api, config, StorePredictionLog(store, "digits"), sleep=traffic, **kwargs), traffic


def test_objects_match_the_inferenceservice_schema():
    """The InferenceService validates against KServe's v1beta1 CRD schema (the fields ctp sends,
    copied from kserve/kserve v0.16.0 config/crd/full/serving.kserve.io_inferenceservices.yaml:
    tests/unit/schemas). PredictorSpec inlines a PodSpec (securityContext) and
    ComponentExtensionSpec (labels, annotations: "added to the component pod", and logger:
    pkg/apis/serving/v1beta1/component.go); ModelSpec inlines PredictorExtensionSpec, which
    inlines a corev1.Container (securityContext) and carries protocolVersion and storage
    (pkg/apis/serving/v1beta1/predictor.go). The storage URI is the version's Triton model
    repository."""
    uri = storage_uri("s3://ctp/ctp", "digits", "v1")
    assert uri == "s3://ctp/ctp/models/digits/versions/v1/triton/"
    isvc = inference_service(CONFIG, uri, "v1", LOG_URL)
    jsonschema.validate(isvc, SCHEMA)
    labels = {"app.kubernetes.io/part-of": "ctp", "app.kubernetes.io/component": "predictor"}
    assert isvc["metadata"]["labels"] == labels
    assert isvc["spec"] == {
        "predictor": {
            "serviceAccountName": "ctp-kserve",
            "labels": labels,
            "annotations": {"sidecar.istio.io/inject": "false"},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "logger": {
                "url": "s3://ctp/ctp/inference-log",
                "mode": "all",
                "metadataAnnotations": ["ctp.dev/version"],
                "storage": {
                    "serviceAccountName": "ctp-logger",
                    "path": "",
                    "key": "credentials",
                    "parameters": {"format": "json"},
                },
            },
            "model": {
                "modelFormat": {"name": "onnx"},
                "protocolVersion": "v2",
                "storageUri": uri,
                "storage": {"key": "ctp-predictor"},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            },
        }
    }
    assert isvc["spec"]["predictor"]["securityContext"]["runAsUser"] == RUN_AS_UID
    with pytest.raises(jsonschema.ValidationError):  # the schema really rejects a misspelt field
        jsonschema.validate(merge_patch(isvc, {"spec": {"predictor": {"canaryTraficPercent": 10}}}), SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # ...and a misspelt logger field (LoggerStorageSpec)
        jsonschema.validate(
            merge_patch(isvc, {"spec": {"predictor": {"logger": {"storage": {"secret": "x"}}}}}), SCHEMA
        )
    with pytest.raises(ConfigError):
        storage_uri("/tmp/store", "digits", "v1")
    with pytest.raises(ConfigError):
        log_url("/tmp/store")


# ----------------------------------------------------------------------------- payload logger
def kserve_log_key(logger: dict, namespace: str, isvc: str, event_id: str, kind: str) -> tuple[str, str]:
    """(bucket, key) KServe's blob-storage logger writes an event to (kserve/kserve v0.16.0
    pkg/logger/store.go: parseBlobStoreURL takes the URL's host as the bucket and its path,
    without the leading "/", as the prefix; getObjectPrefix joins prefix, namespace,
    inferenceService, component and storage.path with path.Join; getObjectKey appends
    ``<id>-<request|response>.<format>``)."""
    url = urllib.parse.urlsplit(logger["url"])
    assert url.scheme == "s3"  # GetStorageStrategy: a blob store, not an HTTP sink
    prefix = posixpath.join(url.path.lstrip("/"), namespace, isvc, "predictor", logger["storage"]["path"])
    return url.netloc, f"{prefix.rstrip('/')}/{event_id}-{kind}.{logger['storage']['parameters']['format']}"


def test_the_payload_logger_writes_where_the_compaction_reads(s3_store):
    """The logger the step configures, fed through KServe's own key rule (kserve_log_key), puts
    each event under the store's CompactConfig().log_prefix, and ``compact`` turns a logged
    request and response into one traffic row and one prediction row of the served version:
    the URL and format are derived from the code on both sides, not restated."""
    from pipelines import inference_log
    from tests.kserve_log import log_record, v2_request, v2_response
    from tests.unit.test_inference_log import digits

    for store_uri in ("s3://ctp/ctp", "s3://ctp/ctp/", "s3://other/deep/prefix"):
        logger = inference_service(CONFIG, storage_uri(store_uri, "digits", "v1"), "v1", log_url(store_uri))
        bucket, key = kserve_log_key(logger["spec"]["predictor"]["logger"], "ml", "digits", "e1", "request")
        store_bucket, _, prefix = store_uri[len("s3://") :].rstrip("/").partition("/")
        assert (bucket, key) == (
            store_bucket,
            f"{prefix}/{inference_log.LOG_PREFIX}ml/digits/predictor/e1-request.json",
        )
    isvc = inference_service(CONFIG, storage_uri(s3_store.uri, "digits", "v1"), "v1", log_url(s3_store.uri))
    logger = isvc["spec"]["predictor"]["logger"]
    assert logger["mode"] == "all" and logger["storage"]["parameters"]["format"] == "json"
    images, logits = digits(1)
    version = isvc["metadata"]["annotations"][logger["metadataAnnotations"][0]]
    for kind, payload in (("request", v2_request(images)), ("response", v2_response(logits))):
        bucket, key = kserve_log_key(logger, "ml", "digits", "e1", kind)
        assert bucket == s3_store.bucket and key.startswith(f"{s3_store.prefix}/")
        record = log_record("e1", kind, payload, version=version, namespace="ml")
        s3_store.put_bytes(key[len(s3_store.prefix) + 1 :], json.dumps(record).encode())
    report = inference_log.compact(s3_store, inference_log.CompactConfig(min_age_seconds=0))
    assert (report.objects, report.traffic_rows, report.prediction_rows) == (2, 1, 1), report.one_line()
    assert s3_store.list("predictions/digits/version=v1/") and not s3_store.list(inference_log.LOG_PREFIX)


def test_the_logged_version_annotation_is_the_one_the_compaction_reads():
    """``logger.metadataAnnotations`` names the InferenceService annotations the agent copies
    into every logged event (kserve/kserve v0.16.0 pkg/controller/v1beta1/inferenceservice/
    components/component.go addLoggerAnnotations; pkg/webhook/admission/pod/agent_injector.go
    reads their values off the predictor pod, which carries the InferenceService's annotations:
    components/predictor.go). The one named is the one the step sets to the served version,
    on create and on every canary patch, and the one the compaction keys predictions on."""
    from pipelines import inference_log
    from tests.kserve_log import log_record

    isvc = inference_service(CONFIG, storage_uri("s3://ctp/ctp", "digits", "v7"), "v7", LOG_URL)
    (named,) = isvc["spec"]["predictor"]["logger"]["metadataAnnotations"]
    assert named == inference_log.VERSION_ANNOTATION
    assert isvc["metadata"]["annotations"][named] == "v7"
    assert canary_patch("s3://ctp/ctp/models/digits/versions/v8/triton/", "v8", 10)["metadata"]["annotations"] == {
        named: "v8"
    }
    record = log_record("e1", "request", {"inputs": []}, version="v7")
    assert record["annotations"] == {named: "v7"}  # what the agent writes, in the test fixture's terms
    assert inference_log.to_event(record).version == "v7"


def test_a_canary_brings_an_older_inferenceservice_up_to_date():
    """An InferenceService created before the logger (what ctp sent until now: no logger, no
    model.storage, the model key on the predictor's ServiceAccount) gets the logger and the
    model key with its next canary patch; the patch changes only the canary revision's pod
    template, so the champion keeps serving until the canary is promoted. On one that has them,
    the same patch leaves the wiring as it was."""
    api = FakeKubernetesApi()
    current = inference_service(CONFIG, storage_uri("s3://ctp/ctp", "digits", "v1"), "v1", LOG_URL)
    del current["spec"]["predictor"]["logger"], current["spec"]["predictor"]["model"]["storage"]
    api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", "ml", "inferenceservices", current)
    rollout, _ = bare_rollout(api)
    rollout.start(storage_uri("s3://ctp/ctp", "digits", "v2"), "v2", LOG_URL)
    predictor = api.objects["digits"]["spec"]["predictor"]
    fresh = inference_service(CONFIG, storage_uri("s3://ctp/ctp", "digits", "v2"), "v2", LOG_URL)["spec"]["predictor"]
    assert predictor == {**fresh, "canaryTrafficPercent": CONFIG.canary_percent}
    generation = api.objects["digits"]["metadata"]["generation"]
    rollout.start(storage_uri("s3://ctp/ctp", "digits", "v2"), "v2", LOG_URL)
    assert api.objects["digits"]["metadata"]["generation"] == generation  # nothing changed


def test_logger_and_storage_initializer_each_get_their_own_key():
    """Two S3 identities in the predictor pod, each least privilege, the way KServe wires them
    (kserve/kserve v0.16.0, same in v0.17.0 and v0.18.0):

    - the agent (payload logger) gets the S3 keys of the pod's ServiceAccount first, then of
      ``logger.storage.serviceAccountName`` (pkg/webhook/admission/pod/agent_injector.go
      InjectAgent, two CreateSecretVolumeAndEnv calls); pkg/utils/utils.go MergeEnvs overwrites
      only ``Value`` of an env already present, so a secretKeyRef from the pod's account would
      win and the logger would write with the model reader's key. Hence the predictor's account
      ``ctp-kserve`` names no Secret and the logger's ``ctp-logger`` names its own;
    - the storage initializer reads the model with ``model.storage.key``, an entry of the
      ``storage-config`` Secret (pkg/webhook/admission/pod/storage_initializer_injector.go:
      StorageSpec key and parameters -> CreateStorageSpecSecretEnvs, STORAGE_CONFIG; pkg/
      constants/constants.go DefaultStorageSpecSecret), not the ServiceAccount's Secrets;
    - a logger ``storage`` must set path, key and parameters (pkg/apis/serving/v1beta1/
      component.go validateLogger), though the agent reads only path and parameters.format."""
    predictor = inference_service(CONFIG, storage_uri("s3://ctp/ctp", "digits", "v1"), "v1", LOG_URL)["spec"][
        "predictor"
    ]
    storage = predictor["logger"]["storage"]
    assert all(storage.get(field) is not None for field in ("path", "key", "parameters"))  # validateLogger
    manifests = Path(__file__).parents[2] / "manifests" / "base"
    predictor_account = yaml.safe_load(KSERVE_SA.read_text())
    logger_account = yaml.safe_load((manifests / "ctp-logger-serviceaccount.yaml").read_text())
    assert predictor["serviceAccountName"] == predictor_account["metadata"]["name"]
    assert "secrets" not in predictor_account  # nothing for the agent to pick up before the logger's key
    assert storage["serviceAccountName"] == logger_account["metadata"]["name"]
    assert logger_account["secrets"] == [{"name": "ctp-logger-s3"}]
    assert predictor["model"]["storage"] == {"key": CONFIG.model_storage_key}
    assert storage["serviceAccountName"] != predictor["serviceAccountName"]


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
    uri = f"{s3_store.uri}/models/digits/versions/{record['version']}/triton/"
    assert [(verb, name) for verb, name, _ in api.calls] == [("get", "digits"), ("create", "digits"), ("get", "digits")]
    assert api.calls[1][2] == inference_service(CONFIG, uri, record["version"], log_url(s3_store.uri))
    assert record["decision"] == "promote" and record["target"] == "kserve"
    assert record["analysis"]["inference_service"] == {"namespace": "ml", "name": "digits"}
    assert Registry(s3_store, "digits").alias(CHAMPION).version == record["version"]
    repository = f"models/digits/versions/{record['version']}/triton/"  # what KServe downloads for Triton
    assert s3_store.list(repository) == [repository + "digits/1/model.onnx", repository + "digits/config.pbtxt"]


def test_good_canary_is_watched_for_every_interval_then_promoted(s3_store, models):
    api = FakeKubernetesApi()
    first = first_deploy(api, s3_store, models)
    api.calls.clear()
    rollout, traffic = rollout_for(api, s3_store, models / "good")
    second = deploy(s3_store, models / "good", card(models / "good", first["version"], "r2"), DeployConfig(), rollout)
    uri = f"{s3_store.uri}/models/digits/versions/{second['version']}/triton/"
    assert api.calls == [
        ("get", "digits", None),
        (
            "patch",
            "digits",
            {
                "metadata": {"annotations": {"ctp.dev/version": second["version"]}},
                "spec": {
                    "predictor": {
                        "canaryTrafficPercent": 10,
                        "model": {"storageUri": uri, "storage": {"key": "ctp-predictor"}},
                        "serviceAccountName": "ctp-kserve",
                        "logger": payload_logger(CONFIG, log_url(s3_store.uri)),
                    }
                },
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


# ----------------------------------------------------------------------------- runtime selection
# kserve/kserve v0.15.2 config/runtimes/kserve-tritonserver.yaml, the only stock runtime that
# lists onnx (supportedModelFormats: name, autoSelect) and the protocols it speaks.
TRITON_RUNTIME = {
    "name": "kserve-tritonserver",
    "formats": {"tensorrt", "tensorflow", "onnx", "triton"},  # autoSelect: true (pytorch is not)
    "protocols": {"v2", "grpc-v2"},
}


def supporting_runtimes(model: dict, runtimes=(TRITON_RUNTIME,)) -> list[str]:
    """ModelSpec.GetSupportingRuntimes (pkg/apis/serving/v1beta1/predictor_model.go): a runtime
    serves the model when it auto-selects the model's format and supports its protocol, which is
    ``v1`` when the model names none (ModelSpec.GetProtocol)."""
    protocol = model.get("protocolVersion", "v1")
    return [r["name"] for r in runtimes if model["modelFormat"]["name"] in r["formats"] and protocol in r["protocols"]]


def test_the_onnx_model_finds_the_triton_runtime_only_with_protocol_v2():
    """KServe's stock runtime for ONNX is Triton, v2/grpc-v2 only (kserve/kserve v0.15.2
    config/runtimes/kserve-tritonserver.yaml); a model without protocolVersion asks for v1
    (pkg/apis/serving/v1beta1/predictor_model.go GetProtocol) and no runtime matches: the old
    InferenceService was never served."""
    model = inference_service(CONFIG, storage_uri("s3://ctp/ctp", "digits", "v1"), "v1", LOG_URL)["spec"]["predictor"][
        "model"
    ]
    assert supporting_runtimes(model) == ["kserve-tritonserver"]
    old = {"modelFormat": {"name": "onnx"}, "storageUri": model["storageUri"]}  # what ctp sent before
    assert supporting_runtimes(old) == []


# ----------------------------------------------------------------------------- readiness
def bare_rollout(api, config=CONFIG):
    clock = FakeClock()
    return KServeRollout(api, config, predictions=None, poll=clock.poll, clock=clock), clock


def old_wait_ready_accepts(status: dict) -> bool:
    """What wait_ready checked before: any Ready=True condition."""
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))


def served_first(api, lag=0):
    rollout, _ = bare_rollout(api)
    rollout.start(storage_uri("s3://ctp/ctp", "digits", "v1"), "v1", LOG_URL)
    assert rollout.wait_ready() is not None
    api.lag = lag
    return rollout


def test_a_stale_ready_right_after_a_patch_is_refused():
    """Right after a patch KServe still shows the old status: Ready=True, the old revision
    latest created and ready, observedGeneration that of the old Knative Service (kserve/kserve
    v0.15.2 pkg/apis/serving/v1beta1/inference_service_status.go: ObservedGeneration and
    ComponentStatusSpec latestCreatedRevision / latestReadyRevision come from the Knative Service
    in PropagateStatus). The old check accepted it; now the wait lasts until the controller has
    reconciled the patch and the new revision is the latest ready one."""
    api = FakeKubernetesApi()
    served_first(api, lag=3)
    rollout, clock = bare_rollout(api)
    rollout.start(storage_uri("s3://ctp/ctp", "digits", "v2"), "v2", LOG_URL)
    stale = api.get_namespaced_custom_object("serving.kserve.io", "v1beta1", "ml", "inferenceservices", "digits")
    assert old_wait_ready_accepts(stale["status"])  # what the old code returned at once
    assert stale["status"]["components"]["predictor"]["latestReadyRevision"] == "digits-predictor-00001"
    status = rollout.wait_ready()
    assert status["components"]["predictor"] == {
        "latestCreatedRevision": "digits-predictor-00002",
        "latestReadyRevision": "digits-predictor-00002",
    }
    assert clock.polls == [5.0, 5.0]  # two stale answers refused before the reconciled one


def test_a_new_revision_that_never_gets_ready_is_not_ready():
    """The patched model does not load: KServe shows the new revision as latestCreatedRevision
    while latestReadyRevision stays the old one (Knative keeps serving it), so it never counts
    as serving the patch, whatever the generation counters say."""
    api = FakeKubernetesApi()
    served_first(api)
    bad = storage_uri("s3://ctp/ctp", "digits", "v2")
    api.broken.add(bad)
    rollout, clock = bare_rollout(api, KServeConfig(name="digits", namespace="ml", ready_timeout_seconds=20))
    rollout.start(bad, "v2", LOG_URL)
    assert rollout.wait_ready() is None
    assert rollout.last_reason == "predictor revision digits-predictor-00002 not ready (ready: digits-predictor-00001)"
    assert clock.now >= 20


def test_observed_generation_is_the_knative_services_so_it_is_compared_with_itself():
    """KServe copies status.observedGeneration from the Knative Service (serverless) or the
    Deployment (raw) it manages (kserve/kserve v0.15.2 pkg/apis/serving/v1beta1/
    inference_service_status.go: `ss.ObservedGeneration = serviceStatus.ObservedGeneration` in
    PropagateStatus, `deploymentList[0].Status.ObservedGeneration` in PropagateRawStatus), so
    `observedGeneration >= metadata.generation` compares two different objects' counters. Both
    ways it goes wrong are shown here, and the check used instead (the child's generation moved
    past the one seen before the patch, and a new revision is the latest ready) gets both right.

    1. The Knative Service ahead: KServe itself rolled the predictor (a changed
       inferenceservice-config). After our patch the stale status satisfies the generation
       comparison and is Ready: it would be accepted while the old model serves.
    2. The InferenceService ahead: a spec change KServe maps to the same Knative Service
       (minReplicas: 1 is the default, pkg/controller/v1alpha1/utils/utils.go). After our patch
       is served, observedGeneration stays below metadata.generation forever: the comparison
       would wait out every timeout and roll back a good model."""

    def generation_comparison_accepts(isvc):
        status = isvc["status"]
        predictor = status["components"]["predictor"]
        return (
            old_wait_ready_accepts(status)
            and status["observedGeneration"] >= isvc["metadata"]["generation"]
            and predictor["latestReadyRevision"] == predictor["latestCreatedRevision"]
        )

    get = dict(group="serving.kserve.io", version="v1beta1", namespace="ml", plural="inferenceservices", name="digits")
    api = FakeKubernetesApi()
    served_first(api)
    api.reconcile("digits", template_change={"storage-initializer": "kserve/storage-initializer:v0.15.2"})
    api.lag = 5
    rollout, _ = bare_rollout(api)
    rollout.start(storage_uri("s3://ctp/ctp", "digits", "v2"), "v2", LOG_URL)
    stale = api.get_namespaced_custom_object(**get)
    assert stale["metadata"]["generation"] == 2 and stale["status"]["observedGeneration"] == 2
    assert generation_comparison_accepts(stale)  # 1: accepted while revision 00002 serves v1
    assert not_ready_reason(stale, rollout.before) == "not reconciled yet (observedGeneration 2)"
    assert rollout.wait_ready()["components"]["predictor"]["latestReadyRevision"] == "digits-predictor-00003"

    api = FakeKubernetesApi()
    served_first(api)
    api.patch_namespaced_custom_object(**{**get, "body": {"spec": {"predictor": {"minReplicas": 1}}}})
    rollout, _ = bare_rollout(api)
    rollout.start(storage_uri("s3://ctp/ctp", "digits", "v2"), "v2", LOG_URL)
    assert rollout.wait_ready() is not None
    settled = api.get_namespaced_custom_object(**get)
    assert (settled["metadata"]["generation"], settled["status"]["observedGeneration"]) == (3, 2)
    assert not generation_comparison_accepts(settled)  # 2: refused although v2 is served and Ready
    assert not_ready_reason(settled, rollout.before) is None
