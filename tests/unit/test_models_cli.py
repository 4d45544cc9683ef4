"""`ctp models list|show|promote|rollback|audit` on a real registry in a local store."""

import json

import pytest
from click.testing import CliRunner

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
    assert out == {"model": "digits", "champion": "v3", "previous": "v2"}
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
