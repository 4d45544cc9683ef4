"""`ctp models list|show|promote|rollback|audit` on a real registry in a local store."""

import json
import sys

import pytest
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException

from components._shared.errors import CtpError
from components._shared.registry import CHAMPION, PREVIOUS, Registry
from components._shared.store import LocalStore
from pipelines.cli.models import models


@pytest.fixture
def registry(tmp_path):
    registry = Registry(LocalStore(tmp_path / "store"), "digits")
    for i, version in enumerate(("v1", "v2", "v3")):
        blob = tmp_path / f"{version}.onnx"
        blob.write_bytes(version.encode())
        registry.publish(
            version,
            {"model.onnx": blob},
            {
                "metrics": {"accuracy": 0.9 + i / 100, "macro_f1": 0.8 + i / 100},
                "trigger": "manual",
                "parent_version": None,
                "data": {"fingerprint": "f" * 32, "batches": ["0000"]},
                "gate": {"decision": "pass", "reason": "ok"},
            },
        )
    registry.promote("v1", None, run_id="r1", reason="first")
    registry.promote("v2", registry.alias(CHAMPION), run_id="r2", reason="better")
    return registry


def ctp_models(registry, *args):
    result = CliRunner().invoke(models, [*args, "--store", registry.store.uri])
    if isinstance(result.exception, CtpError):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_list_json_shows_versions_newest_first_with_aliases(registry):
    listing = json.loads(ctp_models(registry, "list", "--json"))
    assert [v["version"] for v in listing["versions"]] == ["v3", "v2", "v1"]
    assert listing["aliases"] == {"champion": "v2", "previous": "v1"}
    assert listing["versions"][1]["aliases"] == ["champion"] and listing["versions"][0]["accuracy"] == 0.92
    table = ctp_models(registry, "list").splitlines()
    assert table[0].startswith("VERSION") and table[2].split()[:2] == ["v2", "champion"]


def test_show_resolves_aliases_and_prints_the_card(registry):
    card = json.loads(ctp_models(registry, "show", "previous", "--json"))
    assert card["version"] == "v1" and card["files"]["model.onnx"]
    text = ctp_models(registry, "show")
    assert text.startswith("version   digits:v2") and "accuracy  0.9100" in text


def test_promote_moves_champion_and_previous_and_audits(registry):
    out = json.loads(ctp_models(registry, "promote", "v3", "--reason", "hand-picked", "--json"))
    assert out == {"model": "digits", "champion": "v3", "previous": "v2", "serving": None}  # not served by KServe
    assert registry.alias(CHAMPION).version == "v3" and registry.alias(PREVIOUS).version == "v2"
    last = registry.audit_log()[-2:]
    assert [(e["alias"], e["from"], e["version"], e["won"]) for e in last] == [
        ("champion", "v2", "v3", True),
        ("previous", "v1", "v2", True),
    ]
    assert last[0]["reason"] == "hand-picked" and last[0]["run_id"] == "ctp-cli"


def test_rollback_restores_previous_and_a_second_rollback_undoes_it(registry):
    assert "v2 -> v1 (rolled back)" in ctp_models(registry, "rollback")
    assert (registry.alias(CHAMPION).version, registry.alias(PREVIOUS).version) == ("v1", "v2")
    ctp_models(registry, "rollback")
    assert (registry.alias(CHAMPION).version, registry.alias(PREVIOUS).version) == ("v2", "v1")
    audit = ctp_models(registry, "audit", "--limit", "2").splitlines()
    assert len(audit) == 2 and "champion  v1 -> v2  won" in audit[0]


def test_promote_errors_are_one_line_and_change_nothing(registry):
    before = registry.aliases()
    with pytest.raises(CtpError) as err:
        ctp_models(registry, "promote", "v2")
    assert err.value.code == "ALREADY_CHAMPION"
    with pytest.raises(CtpError) as err:
        ctp_models(registry, "promote", "v9")
    assert err.value.code == "STORE_NOT_FOUND" and "v9" in err.value.one_line()
    assert registry.aliases() == before


def test_promote_that_loses_the_compare_and_swap_reports_it(registry, monkeypatch):
    """Another publisher moves the champion between our read and our swap."""
    real_promote = Registry.promote

    def raced_promote(self, version, expected, **kwargs):
        self.move_alias(CHAMPION, "v3", self.alias(CHAMPION), run_id="other-run", reason="won the race")
        return real_promote(self, version, expected, **kwargs)

    monkeypatch.setattr(Registry, "promote", raced_promote)
    with pytest.raises(CtpError) as err:
        ctp_models(registry, "promote", "v1")
    assert err.value.code == "CHAMPION_MOVED"
    monkeypatch.undo()
    assert registry.alias(CHAMPION).version == "v3"
    assert [(e["run_id"], e["won"]) for e in registry.audit_log()[-2:]] == [("other-run", True), ("ctp-cli", False)]


def test_rollback_without_previous_is_an_error(tmp_path):
    empty = Registry(LocalStore(tmp_path / "empty"), "digits")
    with pytest.raises(CtpError) as err:
        ctp_models(empty, "rollback")
    assert err.value.code == "STORE_NOT_FOUND"
    assert "no versions of digits yet" in ctp_models(empty, "list")


# ----------------------------------------------------------------------------- serving by KServe
# The Kubernetes side is tests/unit/test_kserve.py's FakeKubernetesApi (named fake: no API server
# or KServe here; it bumps generations and lags its status as KServe v0.15.2 does); the registry
# is real, on moto's S3 server.
ISVC = dict(group="serving.kserve.io", version="v1beta1", namespace="ml", plural="inferenceservices", name="digits")


@pytest.fixture
def served(tmp_path, s3_env, monkeypatch):
    """v1, v2, v3 on S3; v2 champion (previous v1), deployed to KServe by run r2, which the
    InferenceService ml/digits serves."""
    import uuid

    from components._shared.store import S3Store
    from components.deploy_canary.config import KServeConfig
    from components.deploy_canary.kserve import inference_service, log_url, storage_uri
    from tests.unit.test_kserve import FakeKubernetesApi

    store = S3Store("ctp-test", f"cli-{uuid.uuid4().hex[:8]}", s3_env)
    registry = Registry(store, "digits")
    for version in ("v1", "v2", "v3"):
        blob = tmp_path / f"{version}.onnx"
        blob.write_bytes(version.encode())
        registry.publish(version, {"model.onnx": blob}, {"run_id": f"r{version[1]}", "metrics": {}})
    registry.promote("v1", None, run_id="r1", reason="first")
    registry.promote("v2", registry.alias(CHAMPION), run_id="r2", reason="better")
    where = {"namespace": "ml", "name": "digits"}
    store.put_json("runs/r2/decision.json", {"target": "kserve", "analysis": {"inference_service": where}})
    api = FakeKubernetesApi()
    config = KServeConfig(name="digits", namespace="ml")
    api.create_namespaced_custom_object(
        **{k: v for k, v in ISVC.items() if k != "name"},
        body=inference_service(config, storage_uri(store.uri, "digits", "v2"), "v2", log_url(store.uri)),
    )
    api.get_namespaced_custom_object(**ISVC)  # the controller reconciles: v2 is served and Ready
    api.calls.clear()
    cli_module = sys.modules[models.callback.__module__]  # pipelines.cli.models (the name is the group)
    monkeypatch.setattr(cli_module, "_custom_objects_api", lambda: api)
    return registry, api


def serving_of(api) -> tuple[str, str]:
    isvc = api.objects["digits"]
    return isvc["spec"]["predictor"]["model"]["storageUri"].split("/versions/")[1], isvc["metadata"]["annotations"][
        "ctp.dev/version"
    ]


def test_promote_moves_serving_then_the_alias(served):
    """ctp models promote on a KServe-served model: patch the InferenceService to the version's
    Triton repository with all the traffic, wait until it serves it (a new Ready revision), then
    move the alias. --json says both."""
    registry, api = served
    out = json.loads(ctp_models(registry, "promote", "v3", "--kserve-namespace", "ml", "--json"))
    uri = f"{registry.store.uri}/models/digits/versions/v3/triton/"
    assert out == {
        "model": "digits",
        "champion": "v3",
        "previous": "v2",
        "serving": {
            "namespace": "ml",
            "name": "digits",
            "storage_uri": uri,
            "previous_storage_uri": f"{registry.store.uri}/models/digits/versions/v2/triton/",
        },
    }
    assert [verb for verb, _, _ in api.calls] == ["get", "patch", "get"]
    assert api.calls[1][2] == {
        "metadata": {"annotations": {"ctp.dev/version": "v3"}},
        "spec": {"predictor": {"canaryTrafficPercent": None, "model": {"storageUri": uri}}},
    }
    assert serving_of(api) == ("v3/triton/", "v3")
    assert api.objects["digits"]["status"]["components"]["predictor"]["latestReadyRevision"] == "digits-predictor-00002"
    assert (registry.alias(CHAMPION).version, registry.alias(PREVIOUS).version) == ("v3", "v2")


def test_rollback_finds_kserve_from_the_champions_decision_and_moves_both(served):
    """Without --kserve-namespace the champion's run record (runs/<id>/decision.json, target
    kserve) names the InferenceService."""
    registry, api = served
    out = json.loads(ctp_models(registry, "rollback", "--json"))
    assert (out["champion"], out["previous"], out["serving"]["namespace"]) == ("v1", "v2", "ml")
    assert serving_of(api) == ("v1/triton/", "v1")
    assert (registry.alias(CHAMPION).version, registry.alias(PREVIOUS).version) == ("v1", "v2")
    text = ctp_models(registry, "rollback", "--registry-only")  # the alias alone, on purpose
    assert "v1 -> v2 (rolled back)" in text and serving_of(api) == ("v1/triton/", "v1")


def test_a_failed_patch_moves_neither(served):
    registry, api = served
    before, spec = registry.aliases(), json.dumps(api.objects["digits"]["spec"])
    api.patch_error = ApiException(status=403, reason="Forbidden")
    with pytest.raises(CtpError) as err:
        ctp_models(registry, "promote", "v3", "--kserve-namespace", "ml")
    assert err.value.code == "KSERVE_PATCH_FAILED" and "403 Forbidden" in err.value.one_line()
    assert registry.aliases() == before and json.dumps(api.objects["digits"]["spec"]) == spec
    assert [e["run_id"] for e in registry.audit_log()] == ["r1", "r2", "r2"]  # no move was even tried


def test_a_version_that_never_gets_ready_is_patched_back_and_the_alias_stays(served):
    """v3's model does not load: its revision never becomes the latest ready one. At the
    timeout serving is patched back to v2 (and waited for), and the alias never moved."""
    registry, api = served
    api.broken.add(f"{registry.store.uri}/models/digits/versions/v3/triton/")
    before = registry.aliases()
    with pytest.raises(CtpError) as err:
        ctp_models(registry, "promote", "v3", "--ready-timeout", "0")
    assert err.value.code == "KSERVE_NOT_READY"
    assert "revision digits-predictor-00002 not ready (ready: digits-predictor-00001)" in err.value.message
    assert "restored v2" in err.value.message and "not Ready yet" not in err.value.message
    assert registry.aliases() == before and serving_of(api) == ("v2/triton/", "v2")
    patches = [body["metadata"]["annotations"] for verb, _, body in api.calls if verb == "patch"]
    assert patches == [{"ctp.dev/version": "v3"}, {"ctp.dev/version": "v2"}]
    predictor = api.objects["digits"]["status"]["components"]["predictor"]
    assert predictor == {
        "latestCreatedRevision": "digits-predictor-00003",
        "latestReadyRevision": "digits-predictor-00003",
    }
    assert [e["run_id"] for e in registry.audit_log()] == ["r1", "r2", "r2"]


def test_a_lost_compare_and_swap_puts_serving_back(served, monkeypatch):
    """Serving moved to v3, then another publisher moved the champion first: serving goes back
    to what it was, the other publisher's champion stays."""
    registry, api = served
    real_promote = Registry.promote

    def raced(self, version, expected, **kwargs):
        self.move_alias(CHAMPION, "v1", self.alias(CHAMPION), run_id="other-run", reason="won the race")
        return real_promote(self, version, expected, **kwargs)

    monkeypatch.setattr(Registry, "promote", raced)
    with pytest.raises(CtpError) as err:
        ctp_models(registry, "promote", "v3")
    assert err.value.code == "CHAMPION_MOVED" and "serving: restored v2" in err.value.message
    monkeypatch.undo()
    assert registry.alias(CHAMPION).version == "v1" and serving_of(api) == ("v2/triton/", "v2")
