"""`ctp models`: inspect the registry and move the champion by hand (list, show, promote,
rollback, audit). Every move is a compare-and-swap recorded in the audit log, like a run's."""

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
@click.option("--reason", default="promoted by hand", show_default=True, help="Recorded in the audit log.")
@click.argument("version")
def models_promote(store_uri, model_name, as_json, reason, version):
    """Make VERSION the champion; the old champion becomes `previous` (compare-and-swap)."""
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
    if not registry.promote(version, champion, run_id=CLI_RUN_ID, reason=reason):
        raise CtpError(
            f"the champion of {model_name} moved while promoting {version}",
            code="CHAMPION_MOVED",
            hint="another run or user moved it first; check `ctp models list` and retry",
        )
    _emit(
        as_json,
        {"model": model_name, "champion": version, "previous": before},
        f"champion {model_name}: {before or '-'} -> {version}",
    )


@models.command("rollback")
@_options
@click.option("--reason", default="rolled back by hand", show_default=True, help="Recorded in the audit log.")
def models_rollback(store_uri, model_name, as_json, reason):
    """Restore the `previous` version as champion (the displaced champion becomes `previous`)."""
    from components._shared.registry import CHAMPION

    registry = _registry(store_uri, model_name)
    champion = registry.alias(CHAMPION)
    before = champion.version if champion else None
    restored = registry.rollback(run_id=CLI_RUN_ID, reason=reason)
    _emit(
        as_json,
        {"model": model_name, "champion": restored, "previous": before},
        f"champion {model_name}: {before or '-'} -> {restored} (rolled back)",
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
