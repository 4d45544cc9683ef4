"""Object-store credentials per role (manifests/object-store/*-policy.json): each role's S3 policy
allows exactly the keys its code touches, taken from the code, not restated by hand.

- steps (ctp-s3-steps): read-write on every top-level key prefix the step code (components/)
  names in a key literal, and nothing else.
- monitor (ctp-s3-monitor, both CronJobs): the real `ctp monitor --submit` and `ctp submit`
  run against an S3 server (moto, over HTTP on 127.0.0.1) that records every request; each
  request must be allowed by the policy, and each statement of the policy must be used.
- compact (ctp-s3-compact, the ctp-log-compact CronJob): the real `ctp log compact` against the
  recording S3 server, on a raw log in KServe's format (tests/kserve_log.py) holding a truncated
  object and an interrupted chunk: allowed, and every grant used.
- predictor (entry ctp-predictor of KServe's storage-config Secret): what KServe's storage
  initializer does with the storageUri the canary step builds (kserve/kserve v0.16.0
  python/storage/kserve_storage/kserve_storage.py _download_s3: ListObjects with Prefix, then
  GetObject per key).
- logger (ctp-logger-s3): what KServe's blob-storage payload logger does with the logger URL the
  canary step builds: one PutObject per event (kserve/kserve v0.16.0 pkg/logger/store.go
  BlobStore.Store -> pkg/agent/storage/s3.go UploadObject, an s3manager upload of one small
  object), sent to the recording S3 server; nothing else.

The policies are AWS IAM policy documents, Allow-only (SeaweedFS's embedded IAM cannot Deny:
kubeflow/pipelines 2.17.0 .../pipelines-profile-controller/sync.py; MinIO reads the same JSON).
"""

from __future__ import annotations

import ast
import fnmatch
import io
import json
import re
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest

from tests.manifests.render import OBJECT_STORE, REPO, find, rendered

STORE_URI = find(rendered("base"), "ConfigMap", "ctp-settings")[0]["data"]["CTP_STORE"]
BUCKET, _, PREFIX = STORE_URI[len("s3://") :].partition("/")
POLICIES = {
    role: json.loads((OBJECT_STORE / f"ctp-{role}-policy.json").read_text())
    for role in ("steps", "monitor", "compact", "predictor", "gc", "logger")
}
# The retention planner and sweeper run only in `ctp store gc` (the ctp-gc CronJob), never in a
# pipeline step; what steps call of it (snapshot.reference_snapshot) lives in snapshot.py.
GC_CODE = REPO / "components" / "_shared" / "retention.py"
KEY_HEAD = re.compile(r"^([a-z][a-z_]*)/$")
BUCKET_ONLY = {"s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:CreateBucket"}


# ----------------------------------------------------------------------------- policy evaluation
def allowed(policy: dict, action: str, resource: str, prefix: str | None = None) -> list[int]:
    """Indexes of the Allow statements that grant (action, resource[, s3:prefix])."""
    hits = []
    for i, st in enumerate(policy["Statement"]):
        assert st["Effect"] == "Allow", "Allow-only policies (SeaweedFS cannot Deny)"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        cond = st.get("Condition", {})
        assert set(cond) <= {"StringLike"} and set(cond.get("StringLike", {})) <= {"s3:prefix"}, cond
        like = cond.get("StringLike", {}).get("s3:prefix")
        if like is not None and (prefix is None or not any(fnmatch.fnmatchcase(prefix, p) for p in like)):
            continue
        hits.append(i)
    return hits


def grants(policy: dict) -> set[tuple[str, str]]:
    """(action, top-level key prefix) pairs a policy grants, from its resources and conditions."""
    out = set()
    for st in policy["Statement"]:
        for action in st["Action"]:
            if action in BUCKET_ONLY:
                for p in st["Condition"]["StringLike"]["s3:prefix"]:
                    out.add((action, _top(p)))
            else:
                for r in st["Resource"]:
                    out.add((action, _top(r.split(":::", 1)[1].split("/", 1)[1])))
    return out


def _top(key: str) -> str:
    assert key.startswith(PREFIX + "/"), key
    head = key[len(PREFIX) + 1 :].split("/", 1)
    assert len(head) == 2 and head[1] == "*", f"grant {key} is not a whole top-level prefix"
    return head[0]


def test_policy_checker_is_not_vacuous():
    p = POLICIES["predictor"]
    assert allowed(p, "s3:GetObject", f"arn:aws:s3:::{BUCKET}/{PREFIX}/models/m/versions/v/model.onnx")
    assert not allowed(p, "s3:GetObject", f"arn:aws:s3:::{BUCKET}/{PREFIX}/runs/r/decision.json")
    assert not allowed(p, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/{PREFIX}/models/m/x")
    assert allowed(p, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", f"{PREFIX}/models/m/versions/v/")
    assert not allowed(p, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", f"{PREFIX}/")
    assert not allowed(p, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}")  # HeadBucket / unprefixed list


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_policies_are_scoped_to_the_configured_store(role):
    """Every grant is inside s3://<bucket>/<prefix>/ of CTP_STORE (ctp-settings), none is a
    wildcard action, and no role may create buckets or touch bucket policy."""
    for st in POLICIES[role]["Statement"]:
        assert all(re.fullmatch(r"s3:[A-Za-z]+", a) for a in st["Action"]), st["Action"]
        for r in st["Resource"]:
            assert r == f"arn:aws:s3:::{BUCKET}" or r.startswith(f"arn:aws:s3:::{BUCKET}/{PREFIX}/"), r
            if r == f"arn:aws:s3:::{BUCKET}":
                assert set(st["Action"]) <= BUCKET_ONLY - {"s3:CreateBucket"} and st.get("Condition"), st
    grants(POLICIES[role])  # every grant is a whole top-level prefix


# ----------------------------------------------------------------------------- steps: from the code
def _key_prefixes_in(paths) -> set[str]:
    """Top-level store prefixes named in key literals: "x/" exactly, f"x/{...}", and the kind=
    argument (and default) of list_batches, which builds f"{kind}/{dataset}/batch=..."."""
    out = set()
    for path in paths:
        tree = ast.parse(Path(path).read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for n in ast.walk(tree):
            if isinstance(n, ast.JoinedStr) and len(n.values) > 1 and isinstance(n.values[0], ast.Constant):
                m = KEY_HEAD.match(str(n.values[0].value))
                if m and isinstance(n.values[1], ast.FormattedValue):
                    out.add(m.group(1))
            elif isinstance(n, ast.Constant) and isinstance(n.value, str) and KEY_HEAD.match(n.value):
                parent = parents.get(n)
                if isinstance(parent, ast.JoinedStr) or (isinstance(parent, ast.BinOp) and parent.right is n):
                    continue  # a suffix (run_prefix + "output/"), not a key's first segment
                out.add(n.value[:-1])
            elif isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "list_batches":
                out |= {k.value.value for k in n.keywords if k.arg == "kind" and isinstance(k.value, ast.Constant)}
            elif isinstance(n, ast.FunctionDef) and n.name == "list_batches":
                args = n.args.args[-len(n.args.defaults) :] if n.args.defaults else []
                out |= {d.value for a, d in zip(args, n.args.defaults) if a.arg == "kind"}
    return out


def test_steps_policy_covers_exactly_the_prefixes_the_step_code_names():
    """Pipeline steps run components/ code; the policy grants read-write on exactly the top-level
    prefixes their key literals name (datasets/, traffic/, snapshots/, models/, runs/, ...)."""
    derived = _key_prefixes_in(sorted(p for p in (REPO / "components").rglob("*.py") if p != GC_CODE))
    assert {"datasets", "models", "runs", "snapshots", "checkpoints", "traffic"} <= derived  # sanity
    g = grants(POLICIES["steps"])
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"):
        assert {p for a, p in g if a == action} == derived, action
    assert "monitor" not in derived


def test_gc_credentials_allow_what_the_gc_deletes():
    """`ctp store gc --apply` lists, reads and deletes under the prefixes retention.py names."""
    prefixes = _key_prefixes_in([GC_CODE]) - {"versions"}  # "versions/" is relative to models/<m>/
    assert prefixes == {"checkpoints", "snapshots", "runs", "models", "monitor"}
    g = grants(POLICIES["gc"])
    for action in ("s3:ListBucket", "s3:GetObject", "s3:DeleteObject"):
        assert {p for a, p in g if a == action} == prefixes, action  # exactly: nothing it never touches
    assert {p for a, p in g if a == "s3:PutObject"} == {"snapshots"}  # only its mark-then-sweep tombstones


def test_prefix_scanner_is_not_vacuous(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        'a = f"alpha/{x}/y"\nb = "beta/"\nc = p + "gamma/"\nd = "image/png"\n'
        'e = f"{root}delta/{x}"\nlist_batches(s, d, kind="eps")\n'
    )
    assert _key_prefixes_in([src]) == {"alpha", "beta", "eps"}


# ----------------------------------------------------------------------------- predictor
def test_predictor_policy_is_what_kserve_needs_for_the_uri_the_canary_builds():
    """The canary step points KServe at storage_uri(store, model, version) (components/
    deploy_canary/kserve.py); KServe lists that prefix and gets each object. The predictor's
    policy allows exactly those two actions under that URI's top-level prefix, nothing else."""
    from components.deploy_canary.kserve import storage_uri

    uri = storage_uri(STORE_URI, "digits", "20260101t000000z-abc")
    bucket, _, key_prefix = uri[len("s3://") :].partition("/")
    assert bucket == BUCKET
    policy = POLICIES["predictor"]
    assert allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}", key_prefix)
    assert allowed(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key_prefix}model.onnx")
    top = key_prefix[len(PREFIX) + 1 :].split("/", 1)[0]
    assert grants(policy) == {("s3:ListBucket", top), ("s3:GetObject", top)}


# ----------------------------------------------------------------------------- logger
def test_logger_policy_allows_exactly_the_puts_the_payload_logger_makes(recording_s3):
    """The payload logger of the InferenceService the canary step builds (components/
    deploy_canary/kserve.py inference_service) writes each event with one PutObject to the key
    KServe's store.go derives (tests/unit/test_kserve.py kserve_log_key). Those requests, sent to
    the recording S3 server, are allowed by ctp-logger-policy.json, which grants nothing but
    s3:PutObject under the prefix the compaction reads: the logger cannot read, list or delete
    anything, not even the log it wrote."""
    from components._shared.store import S3Store
    from components.deploy_canary.kserve import inference_service, log_url, storage_uri
    from pipelines.inference_log import LOG_PREFIX
    from tests.unit.test_kserve import CONFIG, kserve_log_key

    recorder, settings = recording_s3
    bucket = f"ctp-logger-{uuid.uuid4().hex[:8]}"
    S3Store(bucket, PREFIX, settings).put_bytes("ready", b"")  # creates the bucket: the admin's, not recorded
    store_uri = f"s3://{bucket}/{PREFIX}"
    isvc = inference_service(CONFIG, storage_uri(store_uri, "digits", "v1"), "v1", log_url(store_uri))
    logger = isvc["spec"]["predictor"]["logger"]
    client = S3Store(bucket, PREFIX, settings).client
    recorder.requests.clear()
    recorder.on = True
    try:
        for kind in ("request", "response"):
            put_bucket, key = kserve_log_key(logger, CONFIG.namespace, CONFIG.name, "e1", kind)
            client.put_object(put_bucket, key, io.BytesIO(b"{}"), 2)
    finally:
        recorder.on = False
    requests = [(a, r.replace(f":::{bucket}", f":::{BUCKET}"), p) for a, r, p in recorder.requests]
    assert [a for a, _, _ in requests] == ["s3:PutObject", "s3:PutObject"]
    policy = POLICIES["logger"]
    assert all(allowed(policy, *r) for r in requests), requests
    assert grants(policy) == {("s3:PutObject", LOG_PREFIX.rstrip("/"))}
    written = requests[0][1]
    for action in ("s3:GetObject", "s3:DeleteObject"):
        assert not allowed(policy, action, written)
    assert not allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", f"{PREFIX}/{LOG_PREFIX}")
    assert not allowed(policy, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/{PREFIX}/traffic/digits/x.parquet")


def test_the_logger_and_the_compaction_share_the_raw_log_prefix_only():
    """What the logger may write, the compaction may list, read and delete: the same top-level
    prefix, and the logger's is its only grant."""
    (logged,) = {p for _, p in grants(POLICIES["logger"])}
    compact = grants(POLICIES["compact"])
    assert {("s3:ListBucket", logged), ("s3:GetObject", logged), ("s3:DeleteObject", logged)} <= compact
    assert ("s3:PutObject", logged) not in grants(POLICIES["predictor"]) | compact


# ----------------------------------------------------------------------------- monitor: recorded
class Recorder:
    """WSGI middleware in front of moto's S3: the S3 action and key of every request."""

    def __init__(self, app):
        self.app, self.requests, self.on, self.lock = app, [], False, threading.Lock()

    def __call__(self, environ, start_response):
        if self.on:
            with self.lock:
                self.requests.extend(_delete_objects(environ) or [_action(environ)])
        return self.app(environ, start_response)


def _delete_objects(environ) -> list[tuple[str, str, None]]:
    """DeleteObjects (POST /<bucket>?delete, keys in the XML body) is authorized as s3:DeleteObject
    on each key; the body is read and put back for moto."""
    import io
    import xml.etree.ElementTree as ET

    if environ["REQUEST_METHOD"] != "POST" or "delete" not in parse_qs(environ.get("QUERY_STRING", ""), True):
        return []
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    bucket = unquote(environ.get("PATH_INFO", "")).strip("/")
    keys = [el.text for el in ET.fromstring(body).iter() if el.tag.endswith("Key")]
    return [("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{key}", None) for key in keys]


def _action(environ) -> tuple[str, str, str | None]:
    """(IAM action, resource ARN, s3:prefix) of one path-style S3 request."""
    method = environ["REQUEST_METHOD"]
    path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    bucket, _, key = path.partition("/")
    if not key:
        if method == "HEAD":
            return "s3:ListBucket", f"arn:aws:s3:::{bucket}", None  # HeadBucket needs ListBucket
        if method == "PUT":
            return "s3:CreateBucket", f"arn:aws:s3:::{bucket}", None
        if "uploads" in query:
            return "s3:ListBucketMultipartUploads", f"arn:aws:s3:::{bucket}", query.get("prefix", [None])[0]
        if method == "GET":
            return "s3:ListBucket", f"arn:aws:s3:::{bucket}", query.get("prefix", [None])[0]
        return f"s3:?{method}-bucket", f"arn:aws:s3:::{bucket}", None
    arn = f"arn:aws:s3:::{bucket}/{key}"
    if method in ("GET", "HEAD"):
        return ("s3:ListMultipartUploadParts" if "uploadId" in query else "s3:GetObject"), arn, None
    if method in ("PUT", "POST"):
        return "s3:PutObject", arn, None
    if method == "DELETE":
        return ("s3:AbortMultipartUpload" if "uploadId" in query else "s3:DeleteObject"), arn, None
    return f"s3:?{method}", arn, None


@pytest.fixture(scope="module")
def recording_s3():
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    from components._shared.store import S3Settings

    recorder = Recorder(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, recorder, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield recorder, S3Settings(endpoint=f"{host}:{port}", access_key="k", secret_key="s", secure=False)
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def monitor_requests(recording_s3, tmp_path_factory):
    """Every S3 request of the CronJobs' commands, on a store seeded with a champion and drifted
    traffic: `ctp monitor --submit` (drift: report, claim, submission record), the same with the
    KFP API failing (the claim is released: a delete), and `ctp submit --trigger schedule`."""
    from click.testing import CliRunner

    from components._shared.sampledata import SeedConfig, seed_digits
    from components._shared.store import S3Store
    from pipelines.cli import main
    from pipelines.continuous_training import compile_pipeline
    from pipelines.kfp_api import KfpSettings, connect, upload
    from tests.pipelines.fake_kfp import FakeKfpApi
    from tests.pipelines.test_monitor import SHIFT, publish_champion

    recorder, settings = recording_s3
    bucket = f"ctp-policy-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("monitor-policy")
    admin = S3Store(bucket, PREFIX, settings)  # the admin's / the steps' writes: not recorded
    seed_digits(admin, SeedConfig(batches=2))
    publish_champion(admin, tmp)
    seed_digits(admin, SeedConfig(**SHIFT))
    package = compile_pipeline(str(tmp / "ct.yaml"))
    env = {
        "CTP_STORE": f"s3://{bucket}/{PREFIX}",
        "MINIO_ENDPOINT": settings.endpoint,
        "MINIO_ACCESS_KEY": "k",
        "MINIO_SECRET_KEY": "s",
        "MINIO_SECURE": "false",
        "CTP_NAMESPACE": "ctp",
        "KF_PIPELINES_SA_TOKEN_PATH": str(tmp / "no-token"),
    }
    outputs = []
    with FakeKfpApi() as fake:
        upload(connect(KfpSettings(fake.url, "ctp-continuous-training")), package)
        recorder.requests.clear()
        recorder.on = True
        try:
            for args, refused in (
                (["monitor", "--submit", "--cooldown-minutes", "0"], {("POST", "/runs")}),  # releases its claim
                (["monitor", "--submit", "--cooldown-minutes", "0"], set()),
                (["submit", "--trigger", "schedule"], set()),
            ):
                fake.unavailable = refused
                result = CliRunner().invoke(main, args, env={**env, "KFP_HOST": fake.url})
                host = fake.url
                outputs.append((args, host, result.exit_code, result.output[-400:]))
        finally:
            recorder.on = False
    requests = [(a, r.replace(f":::{bucket}", f":::{BUCKET}"), p) for a, r, p in recorder.requests]
    return requests, outputs


@pytest.mark.slow
def test_monitor_commands_ran_their_real_paths(monitor_requests):
    requests, outputs = monitor_requests
    (_, _, failed, _), (_, _, ok, out), (_, _, sub, sout) = outputs
    assert failed != 0, outputs[0]
    assert ok == 0 and "monitor: submitted:" in out, out
    assert sub == 0, sout
    actions = {a for a, _, _ in requests}
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= actions


def _without_bucket_check(requests):
    return [
        r
        for r in requests
        if not (r[0] in ("s3:ListBucket", "s3:CreateBucket") and r[2] is None and r[1] == f"arn:aws:s3:::{BUCKET}")
    ]


@pytest.mark.slow
def test_monitor_policy_allows_every_request_the_monitor_makes(monitor_requests):
    """Every request of the CronJobs' code is allowed by ctp-monitor-policy.json (the bucket
    existence check, which the monitor never makes, is asserted below)."""
    requests, _ = monitor_requests
    denied = sorted({r for r in _without_bucket_check(requests) if not allowed(POLICIES["monitor"], *r)})
    assert not denied, "\n".join(map(str, denied))


@pytest.mark.slow
def test_monitor_policy_grants_nothing_the_monitor_does_not_use(monitor_requests):
    """Exactness: every (action, prefix) the policy grants is used by some recorded request, and
    it writes only under monitor/ (its reports and claims)."""
    requests, _ = monitor_requests
    used = set()
    for action, resource, prefix in _without_bucket_check(requests):
        key = prefix if prefix is not None else resource.split(":::", 1)[1].split("/", 1)[1]
        used.add((action, key[len(PREFIX) + 1 :].split("/", 1)[0]))
    assert grants(POLICIES["monitor"]) == used
    assert {p for a, p in used if a in ("s3:PutObject", "s3:DeleteObject")} == {"monitor"}


@pytest.mark.slow
def test_monitor_never_checks_or_creates_the_bucket(monitor_requests):
    """A scoped key may list only its prefixes; HeadBucket (minio bucket_exists) is authorized as
    an unprefixed s3:ListBucket and make_bucket as s3:CreateBucket: the admin creates the bucket
    (manifests/README.md, `ctp data seed`), the roles' code needs neither (open_store checks the
    bucket only with create_bucket=True, components/_shared/store.py)."""
    requests, _ = monitor_requests
    assert len(_without_bucket_check(requests)) == len(requests)


# ----------------------------------------------------------------------------- compact: recorded
@pytest.fixture(scope="module")
def compact_requests(recording_s3):
    """Every S3 request of `ctp log compact` (the ctp-log-compact CronJob): a raw log in KServe's
    format with a truncated object (copied to compaction/<dataset>/rejected/), and a chunk a
    killed run left planned (finished first)."""
    from click.testing import CliRunner

    from components._shared.store import S3Store
    from pipelines import inference_log
    from pipelines.cli import main
    from tests.kserve_log import logged_inference, raw_key
    from tests.unit.test_inference_log import digits

    recorder, settings = recording_s3
    bucket = f"ctp-compact-{uuid.uuid4().hex[:8]}"
    admin = S3Store(bucket, PREFIX, settings)  # KServe's logger writes: not recorded
    images, logits = digits(6)
    for i in range(6):
        for key, data in logged_inference(f"p{i}", images[i], logits[i]).items():
            admin.put_bytes(key, data)
    admin.put_bytes(raw_key("cut", "request"), b'{"id": "cut", "reqType": "org.kub')
    config = inference_log.CompactConfig(min_age_seconds=0, chunk_objects=4)
    planned = list(inference_log.iter_listing(admin, "inference-log/"))[:4]
    inference_log._plan(admin, config, planned)  # a killed run's plan, not yet compacted
    env = {
        "CTP_STORE": f"s3://{bucket}/{PREFIX}",
        "MINIO_ENDPOINT": settings.endpoint,
        "MINIO_ACCESS_KEY": "k",
        "MINIO_SECRET_KEY": "s",
        "MINIO_SECURE": "false",
    }
    recorder.requests.clear()
    recorder.on = True
    try:
        args = ["log", "compact", "--min-age-seconds", "0", "--chunk-objects", "4"]
        result = CliRunner().invoke(main, args, env=env)
    finally:
        recorder.on = False
    assert result.exit_code == 0 and "1 interrupted chunks finished" in result.output, result.output
    assert "LOG_UNPARSEABLE" in result.output and admin.list("inference-log/") == []
    return [(a, r.replace(f":::{bucket}", f":::{BUCKET}"), p) for a, r, p in recorder.requests]


@pytest.mark.slow
def test_compact_policy_allows_every_request_and_grants_nothing_unused(compact_requests):
    """ctp-compact-policy.json is exactly what `ctp log compact` does: every request allowed, every
    (action, prefix) granted used; it writes only traffic/, predictions/ and its own compaction/,
    and deletes only the raw log and its own state."""
    requests = _without_bucket_check(compact_requests)
    denied = sorted({r for r in requests if not allowed(POLICIES["compact"], *r)})
    assert not denied, "\n".join(map(str, denied))
    used = set()
    for action, resource, prefix in requests:
        key = prefix if prefix is not None else resource.split(":::", 1)[1].split("/", 1)[1]
        used.add((action, key[len(PREFIX) + 1 :].split("/", 1)[0]))
    assert grants(POLICIES["compact"]) == used
    assert {p for a, p in used if a == "s3:PutObject"} == {"traffic", "predictions", "compaction"}
    assert {p for a, p in used if a == "s3:DeleteObject"} == {"inference-log", "compaction"}
