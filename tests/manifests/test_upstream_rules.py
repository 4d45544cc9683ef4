"""Upstream rules, one test each: the rule and where it was read (repository, tag, path) are in
the docstring; the test checks the rendered overlays against it. No cluster exists here: every
rule was verified by reading the upstream source at the tag named (tests/platform_rules.py)."""

from __future__ import annotations

import ast
import re

import pytest

from tests import platform_rules as up
from tests.manifests.render import (
    OVERLAYS_EXPECTED,
    REPO,
    VARIANTS,
    all_pod_templates,
    find,
    ident,
    pod_specs,
    rendered,
)

MODES = sorted(OVERLAYS_EXPECTED)
NOWHERE_IP = "203.0.113.7"  # documentation address: never an allowed peer


def _ns(objs):
    return find(objs, "ConfigMap", "ctp-settings")[0]["metadata"]["namespace"]


def _policies(objs):
    return find(objs, "NetworkPolicy")


def _driver_labels():
    # What a KFP 2.17 driver pod carries: workflow-wide podMetadata plus Argo's own labels.
    return {**up.KFP_V2_POD_LABELS, "workflows.argoproj.io/workflow": "ctp-continuous-training-abcde"}


def _task_labels():
    # A ctp task pod: the driver's labels plus what pipelines/gpu.py adds to every task.
    return {**_driver_labels(), "app.kubernetes.io/part-of": "ctp"}


def _template_labels(objs, kind, name):
    (obj,) = find(objs, kind, name)
    ((_, tmpl),) = [(w, t) for w, t, o in all_pod_templates([obj])]
    return tmpl["metadata"]["labels"]


def _kfp_peers():
    ns = up.KFP_NAMESPACE
    return {
        "ml-pipeline grpc": dict(peer_labels=up.KFP_API_POD_LABELS, peer_namespace=ns, port=up.KFP_API_GRPC_PORT),
        "ml-pipeline http": dict(peer_labels=up.KFP_API_POD_LABELS, peer_namespace=ns, port=up.KFP_API_HTTP_PORT),
        "metadata grpc": dict(peer_labels=up.METADATA_GRPC_POD_LABELS, peer_namespace=ns, port=up.METADATA_GRPC_PORT),
        "seaweedfs s3": dict(peer_labels=up.SEAWEEDFS_POD_LABELS, peer_namespace=ns, port=up.SEAWEEDFS_TARGET_PORT),
        "dns udp": dict(peer_labels={"k8s-app": "kube-dns"}, peer_namespace="kube-system", port=53, protocol="UDP"),
        "dns tcp": dict(peer_labels={"k8s-app": "kube-dns"}, peer_namespace="kube-system", port=53),
    }


# ----------------------------------------------------------------------------- namespaces
def test_multi_user_profile_namespace_is_made_by_the_profile_controller():
    """Multi-user KFP runs a pipeline in the namespace the run names, as default-editor, which
    exists only in Profile namespaces (kubeflow/pipelines 2.17.0 manifests/kustomize/base/installs/
    multi-user/api-service/params.env). The profile controller refuses to adopt an existing
    namespace without its owner annotation (kubeflow/dashboard v2.0.0 components/profile-controller/
    controllers/profile_controller.go: "namespace already exist, but not owned by profile
    creator"), so ctp ships a Profile whose name is the overlay's namespace and no Namespace."""
    (profile,) = rendered("profile")
    assert profile["apiVersion"] == "kubeflow.org/v1" and profile["kind"] == "Profile"
    assert profile["spec"]["owner"]["kind"] == "User" and "@" in profile["spec"]["owner"]["name"]
    objs = rendered("multi-user")
    assert profile["metadata"]["name"] == _ns(objs) == OVERLAYS_EXPECTED["multi-user"][0]
    for variant in VARIANTS:
        assert not find(rendered(variant), "Namespace"), f"{variant} must not create or adopt a Namespace"


def test_profile_namespace_labels_are_what_kubeflow_needs():
    """The profile controller labels Profile namespaces pipelines.kubeflow.org/enabled=true (the
    pipelines profile controller then adds kfp-launcher and mlpipeline-minio-artifact,
    kubeflow/pipelines 2.17.0 .../pipelines-profile-controller/sync.py) and
    app.kubernetes.io/part-of=kubeflow-profile (the only namespaces Kubeflow's NetworkPolicies
    admit to ml-pipeline, metadata-grpc and SeaweedFS: kubeflow/manifests v1.11.0
    common/networkpolicies/base/ml-pipeline.yaml, applications/profiles/upstream/base/
    namespace-labels.yaml). The README tells the admin to check exactly these labels."""
    assert up.PROFILE_NAMESPACE_LABELS["pipelines.kubeflow.org/enabled"] == "true"
    text = (REPO / "manifests" / "README.md").read_text()
    for key in ("pipelines.kubeflow.org/enabled", "app.kubernetes.io/part-of"):
        assert key in text
    assert "kubeflow-profile" in text


@pytest.mark.parametrize("mode", MODES)
def test_steps_identity_is_the_one_kfp_runs_them_as(mode):
    """KFP runs steps as default-editor in multi-user mode (params.env DEFAULTPIPELINERUNNER-
    SERVICEACCOUNT) and as pipeline-runner in standalone mode (kubeflow/pipelines 2.17.0
    backend/src/apiserver/common/const.go DefaultPipelineRunnerServiceAccount), in namespace
    kubeflow when standalone. The Role with TrainJob/InferenceService verbs is bound to that
    identity, not to an account whose token no step holds."""
    namespace, runner, _ = OVERLAYS_EXPECTED[mode]
    assert runner == {"multi-user": up.MULTI_USER_RUNNER_SA, "standalone": up.STANDALONE_RUNNER_SA}[mode]
    objs = rendered(mode)
    assert _ns(objs) == namespace
    if mode == "standalone":
        assert namespace == up.KFP_NAMESPACE
    (binding,) = find(objs, "RoleBinding", "ctp-steps")
    assert binding["roleRef"]["name"] == "ctp-steps"
    assert [(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]] == [
        ("ServiceAccount", runner, namespace)
    ]
    for obj in objs:
        if obj["kind"] not in ("PriorityClass",):
            assert obj["metadata"].get("namespace") == namespace, ident(obj)


# ----------------------------------------------------------------------------- RBAC from the code
def _calls_in(path, pattern):
    tree = ast.parse(path.read_text())
    return {
        n.func.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and re.fullmatch(pattern, n.func.attr)
    }


def _steps_verbs_from_code() -> dict[tuple[str, str], set[str]]:
    """(group, plural) -> verbs, from the *_namespaced_custom_object calls in components/ (each
    module names its GROUP and PLURAL)."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted((REPO / "components").rglob("*.py")):
        text = path.read_text()
        m = re.search(r'^GROUP, VERSION, PLURAL(?:, KIND)? = "([^"]+)", "[^"]+", "([^"]+)"', text, re.M)
        calls = _calls_in(path, r"(create|get|list|patch|replace|delete|watch)_namespaced_custom_object")
        if calls:
            assert m, f"{path} calls the API without naming GROUP/PLURAL"
            found.setdefault((m.group(1), m.group(2)), set()).update(c.split("_")[0] for c in calls)
    return found


# kfp.Client calls made only by CI and the admin (upload a pipeline, manage a KFP recurring run):
# never by the CronJobs, whose identity is ctp-runner.
NOT_IN_CLUSTER = {"upload", "schedule", "recurring_runs_named", "upload_command", "schedule_command"}


def _kfp_rbac_from_code() -> set[tuple[str, str]]:
    """KFP (resource, verb) pairs of every kfp.Client call in pipelines/ (functions, methods),
    except those only CI/the admin run (NOT_IN_CLUSTER): what `ctp submit` and `ctp monitor
    --submit` can call as ctp-runner."""
    pairs = set()
    for path in sorted((REPO / "pipelines").rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef) and fn.name not in NOT_IN_CLUSTER:
                for n in ast.walk(fn):
                    if (
                        isinstance(n, ast.Call)
                        and isinstance(n.func, ast.Attribute)
                        and n.func.attr in up.KFP_CLIENT_RBAC
                    ):
                        pairs |= up.KFP_CLIENT_RBAC[n.func.attr]
    return pairs


def _granted(role):
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                out.setdefault((g, r), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("mode", MODES)
def test_every_steps_role_verb_is_used_by_the_steps(mode):
    """Every verb of Role ctp-steps is a call that code running as the KFP runner identity makes
    (components/**: train/trainjob.py, deploy_canary/kserve.py), and every such call is granted:
    derived from the code, not restated."""
    (role,) = find(rendered(mode), "Role", "ctp-steps")
    assert _granted(role) == _steps_verbs_from_code()


@pytest.mark.parametrize("mode", MODES)
def test_cronjob_identity_has_exactly_the_kfp_rights_its_calls_need(mode):
    """Multi-user KFP authorizes each API call with a SubjectAccessReview on group
    pipelines.kubeflow.org (kubeflow/pipelines 2.17.0 backend/src/apiserver/common/const.go;
    server/{pipeline,experiment,run}_server.go for the verb of each call). kfp.Client
    create_experiment lists by name and then creates (kfp 2.17 kfp/client/client.py), so
    experiments "create" is needed or the first CronJob run gets 403. No recurring runs ("jobs"):
    the one recurring mechanism is the ctp-recurring CronJob."""
    objs = rendered(mode)
    (role,) = find(objs, "Role", "ctp-runner")
    granted = _granted(role)
    assert {g for g, _ in granted} == {up.KFP_RBAC_GROUP}
    assert {(r, v) for (_, r), verbs in granted.items() for v in verbs} == _kfp_rbac_from_code()
    assert ("experiments", "create") in _kfp_rbac_from_code()
    (binding,) = find(objs, "RoleBinding", "ctp-runner")
    assert [s["name"] for s in binding["subjects"]] == ["ctp-runner"]
    for cron in find(objs, "CronJob"):
        ((_, pod),) = pod_specs(cron)
        assert pod["serviceAccountName"] == "ctp-runner" and pod["automountServiceAccountToken"] is False
        if cron["metadata"]["name"] in ("ctp-gc", "ctp-log-compact"):  # the store only: no KFP token at all
            assert not [v for v in pod["volumes"] if "projected" in v]
            continue
        token = [
            s["serviceAccountToken"]
            for v in pod["volumes"]
            for s in v.get("projected", {}).get("sources", [])
            if "serviceAccountToken" in s
        ]
        assert [t["audience"] for t in token] == [up.KFP_TOKEN_AUDIENCE]


def test_exactly_one_recurring_mechanism():
    """The daily run comes from one mechanism only: the ctp-recurring CronJob. A KFP recurring
    run with the same cron would race it for the champion every night, so the CronJob identity
    cannot create recurring runs (KFP resource "jobs") and the README schedules no `ctp schedule`."""
    objs = rendered("multi-user")
    crons = {c["metadata"]["name"]: c for c in find(objs, "CronJob")}
    assert set(crons) == {"ctp-monitor", "ctp-recurring", "ctp-gc", "ctp-log-compact"}
    assert crons["ctp-gc"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "ctp",
        "store",
        "gc",
        "--apply",
    ]
    ((_, pod),) = pod_specs(crons["ctp-recurring"])
    assert pod["containers"][0]["command"] == ["ctp", "submit", "--trigger", "schedule"]
    assert crons["ctp-recurring"]["spec"]["concurrencyPolicy"] == "Forbid"
    (role,) = find(objs, "Role", "ctp-runner")
    assert not [r for r in role["rules"] if "jobs" in r["resources"]]
    text = (REPO / "manifests" / "README.md").read_text()
    assert "ctp schedule" not in re.sub(r"(?s)<!-- not-a-step -->.*?<!-- /not-a-step -->", "", text)


# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("variant", VARIANTS)
def test_kfp_driver_and_launcher_pods_reach_what_they_need(variant):
    """KFP v2 driver pods come from one shared template (kubeflow/pipelines 2.17.0
    backend/src/v2/compiler/argocompiler/container.go addContainerDriverTemplate,
    "system-container-driver") and carry only the workflow-wide label
    pipelines.kubeflow.org/v2_component=true (argo.go spec.podMetadata), never a task's pod
    labels. Driver and launcher talk to ml-pipeline gRPC 8887 (and HTTP 8888), metadata-grpc 8080,
    the object store's pod port (SeaweedFS 8333), DNS and the Kubernetes API. Every
    NetworkPolicy that selects such a pod must allow all of that; the API server only at the
    configured CIDR."""
    objs = rendered(variant)
    ns, policies = _ns(objs), _policies(objs)
    cm = find(objs, "ConfigMap", "ctp-settings")[0]["data"]
    api_ip = cm["CTP_KUBE_API_CIDR"].split("/")[0]
    for what, labels in (("driver", _driver_labels()), ("ctp task", _task_labels())):
        for peer, kw in _kfp_peers().items():
            assert up.egress_allows(policies, labels, ns, **kw), f"{variant}: {what} pod cannot reach {peer}"
        for port in (443, 6443):
            assert up.egress_allows(
                policies, labels, ns, peer_labels=None, peer_namespace=None, peer_ip=api_ip, port=port
            ), f"{variant}: {what} pod cannot reach the API server :{port}"
    selecting = [
        p
        for p in policies
        if up.selector_matches(p["spec"]["podSelector"], _task_labels()) and "Egress" in p["spec"]["policyTypes"]
    ]
    assert selecting, "ctp's task pods are not egress-restricted at all"
    # ...and nothing else: not the API port anywhere, not the store's Service port by mistake.
    assert not up.egress_allows(
        policies, _task_labels(), ns, peer_labels=None, peer_namespace=None, peer_ip=NOWHERE_IP, port=443
    )
    assert not up.egress_allows(
        policies, _task_labels(), ns, peer_labels={"app": "something"}, peer_namespace=up.KFP_NAMESPACE, port=8333
    )


@pytest.mark.parametrize("mode", MODES)
def test_driver_isolation_matches_the_mode(mode):
    """Multi-user: the Profile namespace is ctp's alone, default-deny, and drivers are selected
    (and allowed) by ctp-kfp-egress. Standalone: namespace kubeflow is KFP's own; a namespace-wide
    deny would cut off KFP itself (ml-pipeline, SeaweedFS, other users' runs), so there is none
    and no ctp policy selects KFP's driver pods."""
    objs = rendered(mode)
    policies = _policies(objs)
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    driver_selected = [
        p["metadata"]["name"] for p in policies if up.selector_matches(p["spec"]["podSelector"], _driver_labels())
    ]
    if mode == "multi-user":
        assert [p["metadata"]["name"] for p in deny] == ["ctp-default-deny"]
        assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        assert "ctp-kfp-egress" in driver_selected
    else:
        assert not deny and not driver_selected
        # ...while KFP's own server pods are never selected by ctp's policies.
        for labels in (up.KFP_API_POD_LABELS, up.SEAWEEDFS_POD_LABELS, up.METADATA_GRPC_POD_LABELS):
            assert not [p for p in policies if up.selector_matches(p["spec"]["podSelector"], labels)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_store_port_is_the_pod_port_behind_the_configured_endpoint(variant):
    """NetworkPolicies match the destination pod port after Service translation. KFP 2.16+ serves
    S3 from SeaweedFS: Service seaweedfs.kubeflow port 9000 -> targetPort 8333 (kubeflow/pipelines
    2.17.0 manifests/kustomize/third-party/seaweedfs/base/seaweedfs/seaweedfs-service.yaml;
    launcher default backend/src/v2/objectstore/config.go "seaweedfs.kubeflow:9000"). The opt-in
    MinIO listens on 9000. Every ctp pod that reads the store (triggers, task pods, training
    workers, the predictor: its storage initializer, and the payload logger's agent sidecar
    that writes inference-log/) may reach the pod port behind MINIO_ENDPOINT, and the
    Service port 9000 alone (no 8333) would not do for SeaweedFS."""
    objs = rendered(variant)
    ns, policies = _ns(objs), _policies(objs)
    host, port = find(objs, "ConfigMap", "ctp-settings")[0]["data"]["MINIO_ENDPOINT"].rsplit(":", 1)
    services = {s["metadata"]["name"]: s for s in find(objs, "Service")}
    short = host.split(".")[0]
    if short in services:  # the opt-in MinIO in this namespace
        svc = services[short]
        (sp,) = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
        (deploy,) = find(objs, "Deployment", short)
        ((_, pod),) = pod_specs(deploy)
        named = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        target = named.get(sp["targetPort"], sp["targetPort"])
        peer = dict(peer_labels=deploy["spec"]["template"]["metadata"]["labels"], peer_namespace=ns)
        assert target == up.MINIO_POD_PORT
    else:
        assert host in (
            f"{up.SEAWEEDFS_SERVICE}.{up.KFP_NAMESPACE}",
            f"{up.SEAWEEDFS_SERVICE}.{up.KFP_NAMESPACE}.svc",
            f"{up.SEAWEEDFS_SERVICE}.{up.KFP_NAMESPACE}.svc.cluster.local",
        )
        assert int(port) == up.SEAWEEDFS_SERVICE_PORT
        target = up.SEAWEEDFS_TARGET_PORT
        peer = dict(peer_labels=up.SEAWEEDFS_POD_LABELS, peer_namespace=up.KFP_NAMESPACE)
    clients = {
        "monitor": _template_labels(objs, "CronJob", "ctp-monitor"),
        "recurring": _template_labels(objs, "CronJob", "ctp-recurring"),
        "log compaction": _template_labels(objs, "CronJob", "ctp-log-compact"),
        "training worker": _template_labels(objs, "TrainingRuntime", "ctp-torch-distributed"),
        "task": _task_labels(),
        "predictor": {
            "app.kubernetes.io/part-of": "ctp",
            "app.kubernetes.io/component": "predictor",
            up.KSERVE_ISVC_POD_LABEL: "ctp-digits",
        },
    }
    for who, labels in clients.items():
        assert up.egress_allows(policies, labels, ns, port=target, **peer), f"{variant}: {who} cannot reach the store"
    if target != 9000:
        assert not up.egress_allows(policies, clients["monitor"], ns, port=9000, **peer), "Service port allowed"


@pytest.mark.parametrize("variant", VARIANTS)
def test_triggers_reach_exactly_dns_kfp_http_and_the_store(variant):
    """The CronJobs call the KFP API over HTTP (kfp.Client at KFP_HOST, ml-pipeline:8888,
    kubeflow/pipelines 2.17.0 ml-pipeline-apiserver-service.yaml) and the store; they create no
    Kubernetes objects, so no API server egress and no 443 to anywhere."""
    objs = rendered(variant)
    ns, policies = _ns(objs), _policies(objs)
    labels = _template_labels(objs, "CronJob", "ctp-monitor")
    assert _template_labels(objs, "CronJob", "ctp-recurring") == {
        **labels,
        "app.kubernetes.io/name": "ctp-recurring",
        "app.kubernetes.io/component": "recurring",
    }
    kfp_host = find(objs, "ConfigMap", "ctp-settings")[0]["data"]["KFP_HOST"]
    assert kfp_host.endswith(f"{up.KFP_API_SERVICE}.{up.KFP_NAMESPACE}.svc.cluster.local:{up.KFP_API_HTTP_PORT}")
    peers = _kfp_peers()
    for ok in ("ml-pipeline http", "dns udp", "dns tcp", "seaweedfs s3"):
        assert up.egress_allows(policies, labels, ns, **peers[ok]), ok
    for no in ("ml-pipeline grpc", "metadata grpc"):
        assert not up.egress_allows(policies, labels, ns, **peers[no]), no
    api_ip = find(objs, "ConfigMap", "ctp-settings")[0]["data"]["CTP_KUBE_API_CIDR"].split("/")[0]
    for ip in (api_ip, NOWHERE_IP):
        assert not up.egress_allows(policies, labels, ns, peer_labels=None, peer_namespace=None, peer_ip=ip, port=443)


@pytest.mark.parametrize("mode", MODES)
def test_no_policy_allows_443_to_anywhere(mode):
    """No egress rule without peers on 443/6443 and no ipBlock wider than the configured API
    server CIDR: the API server is the only HTTPS peer."""
    objs = rendered(mode)
    cidr = find(objs, "ConfigMap", "ctp-settings")[0]["data"]["CTP_KUBE_API_CIDR"]
    for p in _policies(objs):
        for rule in p["spec"].get("egress") or []:
            ports = {q.get("port") for q in rule.get("ports") or []}
            if not rule.get("to"):
                assert rule.get("ports") is None or not ports & {443, 6443}, ident(p)
                if rule.get("ports") is None:  # all ports: only to ctp's own training peers
                    pytest.fail(f"{ident(p)}: egress rule without peers or ports")
            for peer in rule.get("to") or []:
                if "ipBlock" in peer:
                    assert peer["ipBlock"]["cidr"] == cidr, ident(p)


def test_api_server_cidr_comes_from_the_settings_configmap(tmp_path):
    """One place: changing CTP_KUBE_API_CIDR in the overlay's ctp-settings patch changes the
    NetworkPolicy (kustomize replacements), for both modes."""
    import shutil

    from tests.manifests.render import MANIFESTS, kustomize

    shutil.copytree(MANIFESTS, tmp_path / "m")
    for mode in MODES:
        patch = tmp_path / "m" / "overlays" / mode / "ctp-settings-configmap-patch.yaml"
        patch.write_text(
            patch.read_text().replace('CTP_KUBE_API_CIDR: "192.0.2.1/32"', 'CTP_KUBE_API_CIDR: "10.9.8.7/32"')
        )
        objs = kustomize(tmp_path / "m" / "overlays" / mode)
        (pol,) = find(objs, "NetworkPolicy", "ctp-kfp-egress")
        assert [
            peer["ipBlock"]["cidr"] for r in pol["spec"]["egress"] for peer in r.get("to", []) if "ipBlock" in peer
        ] == ["10.9.8.7/32"]


# ----------------------------------------------------------------------------- pod security
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_template_passes_pod_security_restricted(variant):
    """Pod Security Standards "restricted" (policy v1.32; the published checks are encoded once in
    tests/platform_rules.py) for every pod template ctp ships: CronJobs, the TrainingRuntime's
    workers, the opt-in MinIO. Kubeflow's own Profiles enforce "baseline" (kubeflow/manifests
    v1.11.0 applications/profiles/pss/namespace-labels.yaml), so "restricted" is what ctp can
    promise beyond it."""
    objs = rendered(variant)
    templates = all_pod_templates(objs)
    assert len(templates) >= 3
    for where, tmpl, _ in templates:
        annotations = tmpl.get("metadata", {}).get("annotations")
        assert up.restricted_violations(tmpl["spec"], where, annotations) == []
        assert up.baseline_violations(tmpl["spec"], where, annotations) == []
        # Istio's init container needs NET_ADMIN: profile namespaces inject it unless told not to.
        assert annotations.get("sidecar.istio.io/inject") == "false", where


@pytest.mark.parametrize(
    "mutation",
    [
        ("hostPID", lambda p, c: p.update(hostPID=True)),
        ("SYS_ADMIN", lambda p, c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"])),
        ("procMount", lambda p, c: c["securityContext"].update(procMount="Unmasked")),
        ("selinux user", lambda p, c: p["securityContext"].update(seLinuxOptions={"user": "root"})),
        ("hostProcess", lambda p, c: c["securityContext"].update(windowsOptions={"hostProcess": True})),
    ],
)
def test_baseline_checker_catches_each_baseline_rule(mutation):
    """Negative control for tests/platform_rules.baseline_violations."""
    (cron,) = find(rendered("base"), "CronJob", "ctp-monitor")
    ((_, pod),) = pod_specs(cron)
    assert up.baseline_violations(pod) == []
    mutation[1](pod, pod["containers"][0])
    assert up.baseline_violations(pod) and up.restricted_violations(pod)


@pytest.mark.parametrize(
    "mutation",
    [
        (
            "no runAsNonRoot anywhere",
            lambda p, c: p["securityContext"].pop("runAsNonRoot") and c["securityContext"].pop("runAsNonRoot"),
        ),
        ("escalation unset", lambda p, c: c["securityContext"].pop("allowPrivilegeEscalation")),
        ("gcePersistentDisk", lambda p, c: p["volumes"].append({"name": "d", "gcePersistentDisk": {"pdName": "x"}})),
        ("drop only NET_RAW", lambda p, c: c["securityContext"]["capabilities"].update(drop=["NET_RAW"])),
        ("add CHOWN", lambda p, c: c["securityContext"]["capabilities"].update(add=["CHOWN"])),
    ],
)
def test_restricted_checker_catches_each_restricted_rule(mutation):
    """Negative control for tests/platform_rules.restricted_violations: rules baseline allows."""
    (cron,) = find(rendered("base"), "CronJob", "ctp-monitor")
    ((_, pod),) = pod_specs(cron)
    mutation[1](pod, pod["containers"][0])
    assert up.restricted_violations(pod)


# ----------------------------------------------------------------------------- Trainer
@pytest.mark.parametrize("mode", MODES)
def test_trainingruntime_places_workers_on_the_gpu_pool(mode):
    """Kubeflow Trainer v2.3.0 TrainJob runtimePatches cannot set priorityClassName (PodSpecPatch,
    kubeflow/trainer v2.3.0 pkg/apis/trainer/v1alpha1/trainjob_types.go), so the TrainingRuntime
    (shaped like manifests/base/runtimes/torch_distributed.yaml: replicatedJob "node", container
    "node", mlPolicy.torch) carries the pool's node selector, toleration, PriorityClass and a
    memory-backed /dev/shm; the values agree with the single-pod train step's compile defaults."""
    assert "priorityClassName" not in up.TRAINJOB_POD_PATCH_FIELDS
    objs = rendered(mode)
    (rt,) = find(objs, "TrainingRuntime", "ctp-torch-distributed")
    assert rt["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert "torch" in rt["spec"]["mlPolicy"]
    (rj,) = rt["spec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == "node"
    assert rj["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = rj["template"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "node"
    (pc,) = find(objs, "PriorityClass")
    assert pod["priorityClassName"] == pc["metadata"]["name"] and pc.get("globalDefault") is not True
    assert pc["preemptionPolicy"] == "Never"
    from components._shared.cluster import ClusterSettings

    s = ClusterSettings()
    assert pod["nodeSelector"] == {s.node_selector_key: s.node_selector_value}
    assert pod["tolerations"] == [{"key": s.toleration_key, "operator": "Exists", "effect": s.toleration_effect}]
    assert c["resources"]["limits"][s.accelerator_type] == c["resources"]["requests"][s.accelerator_type]
    vols = {v["name"]: v for v in pod["volumes"]}
    (shm,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert vols[shm["name"]]["emptyDir"]["medium"] == "Memory"
    assert pod["automountServiceAccountToken"] is False
    assert rj["template"]["spec"]["template"]["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "ctp",
        "app.kubernetes.io/component": "training",
    }


def test_trainingruntime_without_gpu_pool_has_no_placement():
    """Without components/gpu-nodepool the runtime is CPU-only: no selector, toleration, priority
    class or GPU request (base)."""
    (rt,) = find(rendered("base"), "TrainingRuntime")
    pod = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "priorityClassName"} & set(pod)
    assert not [k for c in pod["containers"] for k in c["resources"].get("limits", {}) if "gpu" in k]
    assert not find(rendered("base"), "PriorityClass")


# ----------------------------------------------------------------------------- KServe
@pytest.mark.parametrize("mode", MODES)
def test_predictor_and_logger_identities_hold_only_their_own_keys(mode):
    """The predictor pod's ServiceAccount names no Secret: KServe gives the payload logger's agent
    the pod account's S3 keys before the logger account's, and MergeEnvs keeps the first
    secretKeyRef (kserve/kserve v0.16.0 pkg/webhook/admission/pod/agent_injector.go InjectAgent,
    pkg/utils/utils.go), so any key there would be the logger's. The logger's account
    (logger.storage.serviceAccountName) lists only the logger role's Secret, whose keys and
    serving.kserve.io/s3-* annotations KServe injects into the agent (pkg/credentials/
    service_account_credentials.go mountSecretCredential, pkg/credentials/s3/). Neither account
    gets a RoleBinding or an API token; both names are the ones the canary step sends."""
    from components.deploy_canary.config import KServeConfig

    objs = rendered(mode)
    (predictor,) = find(objs, "ServiceAccount", KServeConfig.service_account)
    (logger,) = find(objs, "ServiceAccount", KServeConfig.logger_service_account)
    assert "secrets" not in predictor and predictor["automountServiceAccountToken"] is False
    assert logger["secrets"] == [{"name": "ctp-logger-s3"}] and logger["automountServiceAccountToken"] is False
    bound = [s["name"] for b in find(objs, "RoleBinding") for s in b["subjects"]]
    assert KServeConfig.service_account not in bound and KServeConfig.logger_service_account not in bound


@pytest.mark.parametrize("variant", VARIANTS)
def test_predictor_takes_requests_where_kserve_sends_them_with_the_logger(variant):
    """With a payload logger KServe injects the agent sidecar (port 9081) into the predictor pod.
    Serverless: Knative's queue-proxy receives on 8012 and forwards inside the pod. Raw
    deployment: the predictor Service targets the agent's 9081 (kserve/kserve v0.16.0
    pkg/controller/v1beta1/inferenceservice/reconcilers/service/service_reconciler.go); without
    9081 in ctp-predictor's ingress every request to a raw-mode predictor with a logger would
    be dropped. Nothing else comes in."""
    from components.deploy_canary.kserve import POD_LABELS

    objs = rendered(variant)
    ns, policies = _ns(objs), _policies(objs)
    pod = {**POD_LABELS, up.KSERVE_ISVC_POD_LABEL: "digits"}
    client = dict(peer_labels={"app": "istio-ingressgateway"}, peer_namespace="istio-system")
    for port in (up.KNATIVE_QUEUE_PROXY_PORT, up.KSERVE_AGENT_PORT, up.KSERVE_MODEL_PORT):
        assert up.ingress_allows(policies, pod, ns, port=port, **client), f"{variant}: port {port}"
    assert not up.ingress_allows(policies, pod, ns, port=9090, **client)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cronjobs_that_push_metrics_reach_the_pushgateway(variant):
    """Every CronJob whose command takes --pushgateway (pipelines/metrics.py pushgateway_option,
    env CTP_PUSHGATEWAY from ctp-settings) may reach the Pushgateway's pod port 9091
    (prometheus/pushgateway main.go: webflag.AddFlags(app, ":9091")) in the pods of the
    prometheus-community chart (charts/prometheus-pushgateway/templates/_helpers.tpl
    selectorLabels: app.kubernetes.io/name=prometheus-pushgateway), and nothing else there: not
    another port, not another pod of that namespace. The commands are looked up in ctp's CLI
    from each CronJob's argv, so a CronJob that starts pushing is checked too."""
    import click

    from pipelines.cli import main

    objs = rendered(variant)
    ns, policies = _ns(objs), _policies(objs)
    assert "CTP_PUSHGATEWAY" in find(objs, "ConfigMap", "ctp-settings")[0]["data"]
    gateway = dict(peer_labels=up.PUSHGATEWAY_POD_LABELS, peer_namespace=up.PUSHGATEWAY_NAMESPACE)
    pushing = []
    for cron in find(objs, "CronJob"):
        ((_, pod),) = pod_specs(cron)
        argv = pod["containers"][0]["command"]
        assert argv[0] == "ctp"
        command, args = main, argv[1:]
        while isinstance(command, click.Group):
            command, args = command.commands[args[0]], args[1:]
        if any(getattr(param, "envvar", None) == "CTP_PUSHGATEWAY" for param in command.params):
            labels = _template_labels(objs, "CronJob", cron["metadata"]["name"])
            pushing.append(cron["metadata"]["name"])
            assert up.egress_allows(policies, labels, ns, port=up.PUSHGATEWAY_PORT, **gateway), pushing[-1]
            assert not up.egress_allows(policies, labels, ns, port=9090, **gateway)
            other = dict(peer_labels={"app.kubernetes.io/name": "grafana"}, peer_namespace=up.PUSHGATEWAY_NAMESPACE)
            assert not up.egress_allows(policies, labels, ns, port=up.PUSHGATEWAY_PORT, **other)
    assert {"ctp-monitor", "ctp-log-compact"} <= set(pushing)
