"""`ctp models`: inspect the registry and move the champion by hand (list, show, promote,
rollback, audit). Every move is a compare-and-swap recorded in the audit log, like a run's.

When KServe serves the model, promote and rollback move serving first: patch the InferenceService
to the version's storage URI, wait until it serves it (kserve.KServeRollout.switch), and only then
move the alias. A failed patch changes nothing; a version that never gets Ready is patched back,
and so is serving when the alias move loses its compare-and-swap: both stay as they were."""

from __future__ import annotations

import json

import click

from components._shared.errors import CtpError
from pipelines.cli.options import json_option, model_option, store_option

CLI_RUN_ID = "ctp-cli"  # the audit log's run_id for moves made by hand


def _options(func):
    func = json_option()(func)
    func = model_option()(func)
    return store_option()(func)


def _registry(store_uri: str, model_name: str):
    from components._shared.registry import Registry
    from components._shared.store import open_store

    return Registry(open_store(store_uri), model_name)


def _resolve(registry, name: str) -> str:
    """A version id, or an alias (champion, previous, canary) naming one."""
    ref = registry.alias(name) if name in registry.aliases() else None
    return ref.version if ref and ref.version else name


def _custom_objects_api():
    """The Kubernetes API from the kubeconfig, or the pod's service account inside a cluster."""
    from kubernetes import client
    from kubernetes import config as kube_config

    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    return client.CustomObjectsApi()


def _serving(registry, model_name: str, namespace: str | None, registry_only: bool, timeout: float):
    """The KServe rollout that serves the model, or None when only the registry moves: with
    --kserve-namespace, or when the champion's run deployed to KServe (runs/<id>/decision.json)."""
    from components.deploy_canary.config import KServeConfig
    from components.deploy_canary.kserve import KServeRollout

    if registry_only:
        return None
    if namespace is None:
        champion = registry.alias("champion")
        run_id = registry.card(champion.version).get("run_id") if champion and champion.version else None
        key = f"runs/{run_id}/decision.json"
        record = registry.store.get_json(key) if run_id and registry.store.exists(key) else {}
        if record.get("target") != "kserve":
            return None
        where = (record.get("analysis") or {}).get("inference_service")
        if not where:
            raise CtpError(
                f"{model_name} is served by KServe (run {run_id}) but its decision does not say where",
                code="KSERVE_TARGET_UNKNOWN",
                hint="pass --kserve-namespace NS (the InferenceService is named after the model), or --registry-only",
            )
        namespace, model_name = where["namespace"], where["name"]
    config = KServeConfig(name=model_name, namespace=namespace, ready_timeout_seconds=timeout)
    return KServeRollout(_custom_objects_api(), config, predictions=None)


def _serving_options(func):
    func = click.option(
        "--ready-timeout",
        default=600.0,
        show_default=True,
        help="Seconds the InferenceService has to serve the version before serving is put back.",
    )(func)
    func = click.option("--registry-only", is_flag=True, help="Move only the registry alias, not what KServe serves.")(
        func
    )
    return click.option(
        "--kserve-namespace",
        default=None,
        help="Move serving too: the InferenceService named after the model in this namespace "
        "[default: where the champion's run deployed it, if it used KServe].",
    )(func)


def _move_serving(serving, registry, version: str) -> dict | None:
    """Serve ``version`` (KServe), before its alias moves. Returns what was served before."""
    if serving is None:
        return None
    from components.deploy_canary.kserve import storage_uri

    registry.card(version)  # STORE_NOT_FOUND before anything is patched
    return serving.switch(storage_uri(registry.store.uri, registry.model, version), version)


def _serving_record(serving, replaced: dict | None, registry, version: str) -> dict | None:
    from components.deploy_canary.kserve import served, storage_uri

    if serving is None:
        return None
    return {
        **serving.identity(),
        "storage_uri": storage_uri(registry.store.uri, registry.model, version),
        "previous_storage_uri": served(replaced)[0],
    }


def _emit(as_json: bool, payload: dict, text: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else text)


@click.group()
def models():
    """The model registry: versions, aliases, cards, and moving the champion."""


@models.command("list")
@_options
def models_list(store_uri, model_name, as_json):
    """Versions with their aliases and metrics, newest first."""
    registry = _registry(store_uri, model_name)
    aliases = registry.aliases()
    rows = []
    for version in reversed(registry.versions()):
        card = registry.card(version)
        rows.append(
            {
                "version": version,
                "aliases": sorted(a for a, v in aliases.items() if v == version),
                "accuracy": card["metrics"]["accuracy"],
                "macro_f1": card["metrics"]["macro_f1"],
                "parent": card.get("parent_version"),
                "trigger": card.get("trigger"),
                "init": card.get("training", {}).get("init", {}).get("applied", "-"),
                "created_at": card.get("created_at"),
            }
        )
    if as_json or not rows:
        _emit(
            as_json,
            {"model": model_name, "aliases": aliases, "versions": rows},
            f"no versions of {model_name} yet; run `ctp run`",
        )
        return
    click.echo(f"{'VERSION':<30} {'ALIASES':<18} {'ACC':>6} {'F1':>6} {'INIT':<8} {'TRIGGER':<8} PARENT")
    for r in rows:
        click.echo(
            f"{r['version']:<30} {','.join(r['aliases']) or '-':<18} {r['accuracy']:>6.3f} "
            f"{r['macro_f1']:>6.3f} {r['init']:<8} {r['trigger'] or '-':<8} {r['parent'] or '-'}"
        )


@models.command("show")
@_options
@click.argument("version", default="champion")
def models_show(store_uri, model_name, as_json, version):
    """The model card of VERSION (or an alias: champion, previous, canary)."""
    registry = _registry(store_uri, model_name)
    card = registry.card(_resolve(registry, version))
    metrics, gate = card["metrics"], card.get("gate") or {}
    lines = [
        f"version   {model_name}:{card['version']}  (parent {card.get('parent_version') or '-'})",
        f"aliases   {', '.join(a for a, v in registry.aliases().items() if v == card['version']) or '-'}",
        f"trained   {card.get('created_at', '-')}  trigger {card.get('trigger', '-')}  run {card.get('run_id')}",
        f"data      {card.get('data', {}).get('fingerprint', '-')}  batches "
        f"{','.join(card.get('data', {}).get('batches', [])) or '-'}",
        f"accuracy  {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}",
        f"gate      {gate.get('decision', '-')}: {gate.get('reason', '-')}",
    ]
    _emit(as_json, card, "\n".join(lines))


@models.command("promote")
@_options
@_serving_options
@click.option("--reason", default="promoted by hand", show_default=True, help="Recorded in the audit log.")
@click.argument("version")
def models_promote(store_uri, model_name, as_json, kserve_namespace, registry_only, ready_timeout, reason, version):
    """Make VERSION the champion; the old champion becomes `previous` (compare-and-swap). When
    KServe serves the model, it serves VERSION first."""
    from components._shared.registry import CHAMPION

    registry = _registry(store_uri, model_name)
    version = _resolve(registry, version)
    champion = registry.alias(CHAMPION)
    before = champion.version if champion else None
    if before == version:
        raise CtpError(
            f"{model_name}:{version} is already the champion",
            code="ALREADY_CHAMPION",
            hint="nothing to do; `ctp models list` shows the aliases",
        )
    serving = _serving(registry, model_name, kserve_namespace, registry_only, ready_timeout)
    replaced = _move_serving(serving, registry, version)
    won = _or_put_back(
        serving, replaced, version, lambda: registry.promote(version, champion, run_id=CLI_RUN_ID, reason=reason)
    )
    if not won:
        raise CtpError(
            f"the champion of {model_name} moved while promoting {version}"
            + (f"; serving: {serving.restore(replaced, version)}" if serving else ""),
            code="CHAMPION_MOVED",
            hint="another run or user moved it first; check `ctp models list` and retry",
        )
    _emit(
        as_json,
        {
            "model": model_name,
            "champion": version,
            "previous": before,
            "serving": _serving_record(serving, replaced, registry, version),
        },
        f"champion {model_name}: {before or '-'} -> {version}" + (" (served by KServe)" if serving else ""),
    )


def _or_put_back(serving, replaced, version: str, move):
    """Run the alias move; if it raises, put serving back first (both stay as they were)."""
    try:
        return move()
    except Exception as err:
        if serving is not None:
            note = serving.restore(replaced, version)
            if isinstance(err, CtpError):
                err.message = f"{err.message}; serving: {note}"
        raise


@models.command("rollback")
@_options
@_serving_options
@click.option("--reason", default="rolled back by hand", show_default=True, help="Recorded in the audit log.")
def models_rollback(store_uri, model_name, as_json, kserve_namespace, registry_only, ready_timeout, reason):
    """Restore the `previous` version as champion (the displaced champion becomes `previous`).
    When KServe serves the model, it serves that version first."""
    from components._shared.errors import StoreNotFound

    registry = _registry(store_uri, model_name)
    plan = registry.rollback_plan()
    champion, target = plan
    before = champion.version if champion else None
    serving = _serving(registry, model_name, kserve_namespace, registry_only, ready_timeout)
    replaced = _move_serving(serving, registry, target)
    try:
        restored = _or_put_back(
            serving, replaced, target, lambda: registry.rollback(run_id=CLI_RUN_ID, reason=reason, plan=plan)
        )
    except StoreNotFound as err:
        raise CtpError(
            f"the champion of {model_name} moved while rolling back to {target}: {err.message}",
            code="CHAMPION_MOVED",
            hint="another run or user moved it first; check `ctp models list` and retry",
        ) from None
    _emit(
        as_json,
        {
            "model": model_name,
            "champion": restored,
            "previous": before,
            "serving": _serving_record(serving, replaced, registry, restored),
        },
        f"champion {model_name}: {before or '-'} -> {restored} (rolled back"
        + (", served by KServe)" if serving else ")"),
    )


@models.command("audit")
@_options
@click.option("--limit", default=20, show_default=True, help="Newest entries shown (0 = all).")
def models_audit(store_uri, model_name, as_json, limit):
    """Every alias move attempted, won or lost, oldest first."""
    entries = _registry(store_uri, model_name).audit_log()[-limit if limit else 0 :]
    lines = [
        f"{e['updated_at'][:19]}  {e['alias']:<9} {e.get('from') or '-'} -> {e['version'] or '-'}  "
        f"{'won ' if e['won'] else 'LOST'}  {e['run_id']}: {e['reason']}"
        for e in entries
    ]
    _emit(as_json, {"model": model_name, "audit": entries}, "\n".join(lines) or "no alias moves yet")
