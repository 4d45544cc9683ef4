"""Upstream platform rules, encoded once, for the rendered manifests AND the compiled pipeline YAML.

Every constant names the upstream file it was read from (repository, tag, path). The checks are
plain functions that return a list of violations (empty = passes), so tests can assert on them
and feed them deliberately broken objects.

Versions read (no cluster exists here; all of this was verified by reading the sources):
  kubeflow/pipelines 2.17.0, kubeflow/manifests v1.11.0, kubeflow/dashboard v2.0.0 (profile
  controller), kubeflow/trainer v2.3.0, kserve/kserve v0.16.0 (the payload logger's blob storage
  first appears there; checked unchanged in v0.17.0 and v0.18.0), prometheus/pushgateway and the
  prometheus-community prometheus-pushgateway chart (main branch as stored), and the Kubernetes Pod Security
  Standards (kubernetes.io/docs/concepts/security/pod-security-standards, policy version v1.32).
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- versions checked
KFP_VERSION = "2.17.0"
KUBEFLOW_MANIFESTS_VERSION = "v1.11.0"
PROFILE_CONTROLLER_VERSION = "kubeflow/dashboard v2.0.0"
TRAINER_VERSION = "v2.3.0"
KSERVE_VERSION = "v0.16.0"
# spec.predictor.logger.storage (LoggerStorageSpec, pkg/apis/serving/v1beta1/inference_service.go)
# and the agent's blob store (pkg/logger/store.go) are new in v0.16.0: the floor for the inference log.
KSERVE_LOGGER_FLOOR = "v0.16.0"
PSS_POLICY_VERSION = "v1.32"

# KFP backends before 2.16 set no securityContext on driver/launcher pods
# (backend/src/v2/compiler/argocompiler/security_context.go first appears in tag 2.16.0).
SECURITY_CONTEXT_BACKEND_FLOOR = "2.16.0"
# secretNameParameter (kfp-kubernetes use_secret_as_env with a parameter) needs backend >= 2.5.
SECRET_PARAMETER_BACKEND_FLOOR = "2.5.0"

# ----------------------------------------------------------------------------- KFP (2.17.0)
KFP_NAMESPACE = "kubeflow"
# manifests/kustomize/base/pipeline/ml-pipeline-apiserver-service.yaml: http 8888, grpc 8887,
# targetPort = port; pods labelled app=ml-pipeline.
KFP_API_SERVICE = "ml-pipeline"
KFP_API_HTTP_PORT = 8888
KFP_API_GRPC_PORT = 8887
KFP_API_POD_LABELS = {"app": "ml-pipeline"}
# manifests/kustomize/base/metadata/base/metadata-grpc-service.yaml: port 8080 (targetPort =
# port), selector component=metadata-grpc-server.
METADATA_GRPC_SERVICE = "metadata-grpc-service"
METADATA_GRPC_PORT = 8080
METADATA_GRPC_POD_LABELS = {"component": "metadata-grpc-server"}
# manifests/kustomize/third-party/seaweedfs/base/seaweedfs/seaweedfs-service.yaml: Service
# seaweedfs port 9000 (http-s3-compat) -> targetPort 8333; pods labelled app=seaweedfs.
# backend/src/v2/objectstore/config.go: DefaultEndpointInMultiUserMode = "seaweedfs.kubeflow:9000".
SEAWEEDFS_SERVICE = "seaweedfs"
SEAWEEDFS_SERVICE_PORT = 9000
SEAWEEDFS_TARGET_PORT = 8333
SEAWEEDFS_POD_LABELS = {"app": "seaweedfs"}
SEAWEEDFS_IAM_PORT = 8111  # same Service, http-iam: the IAM API the profile controller uses
# The opt-in MinIO component listens on 9000 in the pod (--address=:9000).
MINIO_POD_PORT = 9000
# backend/src/v2/compiler/argocompiler/argo.go: spec.podMetadata labels every pod of a v2
# workflow with this, and it is the ONLY KFP label a driver pod has: the shared driver template
# (container.go addContainerDriverTemplate, "system-container-driver") carries no task labels.
KFP_V2_POD_LABELS = {"pipelines.kubeflow.org/v2_component": "true"}
DRIVER_TEMPLATE_NAME = "system-container-driver"
# backend/src/apiserver/common/const.go DefaultPipelineRunnerServiceAccount;
# manifests/kustomize/base/installs/multi-user/api-service/params.env
# DEFAULTPIPELINERUNNERSERVICEACCOUNT=default-editor.
STANDALONE_RUNNER_SA = "pipeline-runner"
MULTI_USER_RUNNER_SA = "default-editor"
# backend/src/apiserver/common/const.go: the group and resources multi-user KFP checks with a
# SubjectAccessReview; kfp.Client reads its token audience from here.
KFP_RBAC_GROUP = "pipelines.kubeflow.org"
KFP_TOKEN_AUDIENCE = "pipelines.kubeflow.org"
# The KFP RBAC check behind each kfp.Client method (backend/src/apiserver/server/
# {pipeline,experiment,run,recurring_run}_server.go; kfp 2.17 kfp/client/client.py:
# create_experiment lists by name before creating, get_pipeline_id lists pipelines,
# list_pipeline_versions is authorized as "list" on pipelines).
KFP_CLIENT_RBAC = {
    "get_pipeline_id": {("pipelines", "list")},
    "list_pipeline_versions": {("pipelines", "list")},
    "get_pipeline_version": {("pipelines", "get")},
    "upload_pipeline": {("pipelines", "create")},
    "upload_pipeline_version": {("pipelines", "create")},
    "create_experiment": {("experiments", "list"), ("experiments", "create")},
    "get_experiment": {("experiments", "list")},
    "run_pipeline": {("runs", "create")},
    "get_run": {("runs", "get")},
    "list_runs": {("runs", "list")},
    "create_recurring_run": {("jobs", "create")},
    "list_recurring_runs": {("jobs", "list")},
    "delete_recurring_run": {("jobs", "delete")},
}
# manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py: only
# namespaces with this label get kfp-launcher, metadata-grpc-configmap, artifact-repositories and
# the mlpipeline-minio-artifact Secret.
PIPELINES_ENABLED_LABEL = ("pipelines.kubeflow.org/enabled", "true")

# ----------------------------------------------------------------------------- Kubeflow platform
# kubeflow/manifests v1.11.0 applications/profiles/upstream/base/namespace-labels.yaml: labels
# the profile controller puts on every Profile namespace. common/networkpolicies/base/
# ml-pipeline.yaml, metadata-grpc-server.yaml and the SeaweedFS NetworkPolicy admit only
# namespaces labelled app.kubernetes.io/part-of=kubeflow-profile (plus istio-system / same ns).
PROFILE_NAMESPACE_LABELS = {
    "pipelines.kubeflow.org/enabled": "true",
    "app.kubernetes.io/part-of": "kubeflow-profile",
    "serving.kubeflow.org/inferenceservice": "enabled",
    "katib.kubeflow.org/metrics-collector-injection": "enabled",
}
# applications/profiles/pss/namespace-labels.yaml: Kubeflow's own Profiles enforce "baseline".
KUBEFLOW_PROFILE_PSS_ENFORCE = "baseline"
# kubeflow/dashboard v2.0.0 components/profile-controller/controllers/profile_controller.go
PROFILE_EDITOR_SA = "default-editor"

# ----------------------------------------------------------------------------- Trainer (v2.3.0)
# pkg/apis/trainer/v1alpha1/trainjob_types.go PodSpecPatch: what a TrainJob runtimePatch may set
# on pods. No priorityClassName: that must come from the (Cluster)TrainingRuntime.
TRAINJOB_POD_PATCH_FIELDS = {
    "serviceAccountName",
    "volumes",
    "initContainers",
    "containers",
    "imagePullSecrets",
    "securityContext",
    "nodeSelector",
    "affinity",
    "tolerations",
    "schedulingGates",
    "terminationGracePeriodSeconds",
}

# ----------------------------------------------------------------------------- KServe (v0.16.0)
# pkg/apis/serving/v1beta1/component.go: ComponentExtensionSpec.labels "will be added to the
# component pod"; pkg/constants/constants.go InferenceServiceLabel.
KSERVE_ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"
# python/storage/kserve_storage/kserve_storage.py _download_s3: bucket.objects.filter(Prefix=...)
# then GetObject per key: the predictor needs s3:ListBucket (with that prefix) and s3:GetObject.
KSERVE_S3_ACTIONS = {"s3:ListBucket", "s3:GetObject"}
# Ports a request reaches in the predictor pod. pkg/constants/constants.go:
# InferenceServiceDefaultHttpPort "8080" (the model server), InferenceServiceDefaultAgentPort 9081
# (the agent sidecar, injected for the payload logger). Serverless: Knative's queue-proxy takes
# the request on 8012 and forwards inside the pod (agent_injector.go sets its USER_PORT to 9081).
# Raw deployment with a logger: the predictor Service's targetPort is the agent's 9081
# (pkg/controller/v1beta1/inferenceservice/reconcilers/service/service_reconciler.go).
KSERVE_MODEL_PORT = 8080
KSERVE_AGENT_PORT = 9081
KNATIVE_QUEUE_PROXY_PORT = 8012

# ----------------------------------------------------------------------------- Prometheus Pushgateway
# prometheus/pushgateway main.go: webflag.AddFlags(app, ":9091"), the default listen address.
# prometheus-community/helm-charts charts/prometheus-pushgateway/templates/_helpers.tpl: pods
# labelled app.kubernetes.io/name: prometheus-pushgateway (selectorLabels), containerPort 9091.
PUSHGATEWAY_PORT = 9091
PUSHGATEWAY_POD_LABELS = {"app.kubernetes.io/name": "prometheus-pushgateway"}
PUSHGATEWAY_NAMESPACE = "monitoring"  # a convention, not upstream's: the policy names it, the admin may patch it

# ----------------------------------------------------------------------------- Pod Security
# The published checks, policy version v1.32. Baseline:
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Restricted adds:
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
RESTRICTED_ADD_CAPABILITIES = {"NET_BIND_SERVICE"}


def pod_containers(pod_spec: dict) -> list[dict]:
    """All containers of a pod spec: init, regular and ephemeral."""
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in pod_spec.get(key) or []]


def baseline_violations(pod_spec: dict, where: str = "pod", annotations: dict | None = None) -> list[str]:
    """Pod Security Standards "baseline" (v1.32), every check of the published list."""
    out: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{where}: windowsOptions.hostProcess")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            out.append(f"{where}: {key} is true")
    for vol in pod_spec.get("volumes") or []:
        if "hostPath" in vol:
            out.append(f"{where}: hostPath volume {vol.get('name')}")
    for name, value in (annotations or {}).items():
        if name.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"{where}: AppArmor annotation {name}={value}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"{where}: unsafe sysctl {sysctl.get('name')}")
    contexts = [(where, psc)] + [
        (f"{where} container {c.get('name')}", c.get("securityContext") or {}) for c in pod_containers(pod_spec)
    ]
    for w, sc in contexts:
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{w}: appArmorProfile {sc['appArmorProfile']}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{w}: seLinuxOptions {se}")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{w}: seccompProfile Unconfined")
    for c in pod_containers(pod_spec):
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{cw}: windowsOptions.hostProcess")
        if sc.get("privileged"):
            out.append(f"{cw}: privileged")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            out.append(f"{cw}: capabilities.add beyond baseline: {sorted(added - BASELINE_CAPABILITIES)}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{cw}: procMount {sc['procMount']}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{cw}: hostPort {port['hostPort']}")
    return out


def restricted_violations(pod_spec: dict, where: str = "pod", annotations: dict | None = None) -> list[str]:
    """Pod Security Standards "restricted" (v1.32): baseline plus volume types, no privilege
    escalation, non-root (pod or every container), no uid 0, seccomp RuntimeDefault/Localhost
    (pod or every container), capabilities drop ALL and add at most NET_BIND_SERVICE."""
    out = baseline_violations(pod_spec, where, annotations)
    psc = pod_spec.get("securityContext") or {}
    for vol in pod_spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"{where}: volume {vol.get('name')} of type {sorted(kinds)} is not allowed")
    if psc.get("runAsUser") == 0:
        out.append(f"{where}: runAsUser 0")
    containers = pod_containers(pod_spec)
    if not containers:
        out.append(f"{where}: no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{cw}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{cw}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{cw}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{cw}: seccompProfile is not RuntimeDefault/Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{cw}: capabilities.drop does not include ALL")
        added = set(caps.get("add") or [])
        if added - RESTRICTED_ADD_CAPABILITIES:
            out.append(f"{cw}: capabilities.add beyond NET_BIND_SERVICE: {sorted(added)}")
    return out


# ----------------------------------------------------------------------------- label selectors
def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes LabelSelector against a label set ({} selects everything; None nothing)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def egress_allows(
    policies: list[dict],
    pod_labels: dict,
    pod_namespace: str,
    *,
    peer_labels: dict | None,
    peer_namespace: str | None,
    peer_namespace_labels: dict | None = None,
    port: int,
    protocol: str = "TCP",
    peer_ip: str | None = None,
) -> bool:
    """Would NetworkPolicies (all in pod_namespace) let a pod with pod_labels open a connection to
    the peer's POD port? Semantics of networking.k8s.io/v1: a pod no Egress policy selects is not
    isolated (everything allowed); otherwise the union of the selecting policies' rules."""
    rules = _rules_allowing(policies, "Egress", pod_labels, pod_namespace, port, protocol)
    if rules is None:
        return True
    ns_labels = dict(peer_namespace_labels or {})
    if peer_namespace is not None:
        ns_labels.setdefault("kubernetes.io/metadata.name", peer_namespace)
    for peers in rules:
        if not peers or any(
            _peer_matches(peer, pod_namespace, peer_labels, peer_namespace, ns_labels, peer_ip) for peer in peers
        ):
            return True
    return False


def ingress_allows(
    policies: list[dict],
    pod_labels: dict,
    pod_namespace: str,
    *,
    peer_labels: dict,
    peer_namespace: str,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Would NetworkPolicies let a pod (peer_labels in peer_namespace) connect to a pod with
    pod_labels on its port ``port``? Same semantics as egress_allows, for Ingress rules."""
    rules = _rules_allowing(policies, "Ingress", pod_labels, pod_namespace, port, protocol)
    if rules is None:
        return True
    ns_labels = {"kubernetes.io/metadata.name": peer_namespace}
    return any(
        not peers or any(_peer_matches(peer, pod_namespace, peer_labels, peer_namespace, ns_labels) for peer in peers)
        for peers in rules
    )


def _peer_matches(
    peer: dict,
    pod_namespace: str,
    peer_labels: dict | None,
    peer_namespace: str | None,
    ns_labels: dict,
    peer_ip: str | None = None,
) -> bool:
    """Does one ``to``/``from`` entry name the peer: an ipBlock holding peer_ip, or a pod selector
    (in the policy's namespace, or in the namespaces its namespaceSelector picks by ns_labels)?"""
    import ipaddress

    if "ipBlock" in peer:
        if peer_ip is None:
            return False
        block, ip = peer["ipBlock"], ipaddress.ip_address(peer_ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if peer_labels is None:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ns_labels):
            return False
    elif peer_namespace != pod_namespace:
        return False
    return selector_matches(peer.get("podSelector", {}), peer_labels)


def _rules_allowing(
    policies: list[dict], kind: str, pod_labels: dict, pod_namespace: str, port: int, protocol: str
) -> list[list[dict]] | None:
    """The peer lists of the ``kind`` ("Egress"/"Ingress") rules that open ``port``, in the
    policies selecting the pod (an empty list: every peer); None if no policy of that kind
    selects it (the pod is not isolated)."""
    selecting = [
        p
        for p in policies
        if kind in p["spec"].get("policyTypes", ["Ingress"])
        and p["metadata"].get("namespace") == pod_namespace
        and selector_matches(p["spec"].get("podSelector", {}), pod_labels)
    ]
    if not selecting:
        return None
    rules_key, peers_key = ("egress", "to") if kind == "Egress" else ("ingress", "from")
    return [
        rule.get(peers_key) or []
        for policy in selecting
        for rule in policy["spec"].get(rules_key) or []
        if not rule.get("ports")
        or any(p.get("protocol", "TCP") == protocol and _port_matches(p, port) for p in rule["ports"])
    ]


def _port_matches(rule_port: dict, port: int) -> bool:
    if "port" not in rule_port:
        return True
    if isinstance(rule_port["port"], str):
        return False  # named ports: not used by ctp, never assumed to match
    end = rule_port.get("endPort", rule_port["port"])
    return rule_port["port"] <= port <= end
