"""`ctp store`: maintenance of the artifact store (the janitor, and gc by the retention policy)."""

from __future__ import annotations

import dataclasses
import json

import click

from pipelines.cli.options import json_option, store_option


@click.group()
def store():
    """Maintenance of the artifact store."""


@store.command("janitor")
@store_option()
@click.option(
    "--older-than",
    default="24h",
    show_default=True,
    help="Only leftovers older than this (s, m, h, d): writers still at work are younger.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@json_option()
def janitor_command(store_uri, older_than, dry_run, as_json):
    """Abort stale incomplete uploads; remove model version dirs without a card and snapshot dirs
    without a manifest (what killed writers leave; readers never see them)."""
    from components._shared.janitor import parse_duration, sweep
    from components._shared.store import open_store

    result = sweep(open_store(store_uri), parse_duration(older_than), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for label, items in (
        ("incomplete upload", result.uploads),
        ("orphan version", result.versions),
        ("orphan snapshot", result.snapshots),
    ):
        for item in items:
            click.echo(f"{verb} {label} {item}")
    click.echo(
        f"{verb} {len(result.uploads)} upload(s), {len(result.versions)} version dir(s), "
        f"{len(result.snapshots)} snapshot dir(s)"
    )


def _policy_options(func):
    """One option per RetentionPolicy field: its default and help come from the dataclass."""
    from components._shared.retention import RetentionPolicy

    for field in reversed(dataclasses.fields(RetentionPolicy)):
        func = click.option(
            f"--{field.name.replace('_', '-')}",
            field.name,
            type=type(field.default),
            default=field.default,
            show_default=True,
            help=field.metadata["help"],
        )(func)
    return func


@store.command("gc")
@store_option()
@click.option("--apply", "apply_", is_flag=True, help="Delete. Without it, only list what would go (dry run).")
@_policy_options
@json_option()
def gc_command(store_uri, apply_, as_json, **policy):
    """Apply the retention policy: finished runs' checkpoints, unreferenced snapshots, old rejected
    versions, run records and monitor reports. Champion, previous, canary and their lineage,
    active runs and what a retry needs are kept; audit entries, aliases and leases are never
    touched. Each group is re-checked just before it is deleted (a run may start meanwhile)."""
    from components._shared import retention
    from components._shared.store import open_store

    the_store = open_store(store_uri)
    config = retention.RetentionPolicy(**policy)
    planned = retention.plan(the_store, config)
    swept = retention.sweep(the_store, planned, config) if apply_ else None
    if as_json:
        out = {
            "dry_run": not apply_,
            "policy": dataclasses.asdict(config),
            "active_runs": planned.active_runs,
            "planned": [dataclasses.asdict(g) | {"objects": len(g.keys)} for g in planned.groups],
            "kept": planned.kept,
            "result": dataclasses.asdict(swept) if swept else None,
        }
        click.echo(json.dumps(out, indent=2))
        return
    verb = "removed" if apply_ else "would remove"
    skipped = swept.skipped if swept else {}
    for group in planned.groups:
        label = f"{group.kind} {group.name}"
        if label in skipped:
            click.echo(f"kept {label}: {skipped[label]}")
        else:
            click.echo(f"{verb} {label} ({len(group.keys)} objects): {group.reason}")
    objects = swept.objects_deleted if swept else len(planned.keys())
    groups = len(planned.groups) - len(skipped)
    click.echo(
        f"{verb} {groups} group(s), {objects} object(s); active runs: {', '.join(planned.active_runs) or 'none'}"
    )
