"""`ctp store`: maintenance of the artifact store (the janitor)."""

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
