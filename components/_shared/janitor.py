"""Cleans what crashed writers leave behind. None of it is ever visible to readers (uploads are
incomplete, version dirs have no card, snapshot dirs no manifest), but it costs storage.

Only leftovers older than ``older_than`` are touched: a writer still at work is younger than that
(publishing a version or a snapshot takes seconds to minutes; the CLI default is 24 hours).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from components._shared.errors import ConfigError
from components._shared.store import Store

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '30m', '24h', '7d' -> timedelta."""
    found = _DURATION.match(text.strip())
    if not found:
        raise ConfigError(f"duration {text!r} is not a number with a unit", hint="use e.g. 30m, 24h or 7d")
    return dt.timedelta(seconds=float(found.group(1)) * _UNIT_SECONDS[found.group(2)])


@dataclasses.dataclass
class Sweep:
    uploads: list[str]  # "<key> <upload id>" of aborted incomplete uploads
    versions: list[str]  # orphan version dirs removed (no card.json)
    snapshots: list[str]  # orphan snapshot dirs removed (no manifest.json)
    objects_deleted: int
    dry_run: bool


def _orphans(modified: dict[str, dt.datetime], depth: int, marker: str, cutoff: dt.datetime) -> dict[str, list[str]]:
    """Dirs ``depth`` segments deep without ``marker`` whose newest object is older than cutoff."""
    groups: dict[str, list[str]] = {}
    for key in modified:
        parts = key.split("/")
        if len(parts) > depth:
            groups.setdefault("/".join(parts[:depth]) + "/", []).append(key)
    return {
        folder: keys
        for folder, keys in groups.items()
        if folder + marker not in modified and max(modified[k] for k in keys) < cutoff
    }


def sweep(store: Store, older_than: dt.timedelta, *, dry_run: bool = False) -> Sweep:
    cutoff = dt.datetime.now(dt.UTC) - older_than
    uploads = store.stale_uploads(older_than)
    versions = _orphans(
        {k: t for k, t in store.list_modified("models/").items() if k.split("/")[2:3] == ["versions"]},
        4,
        "card.json",
        cutoff,
    )
    snapshots = _orphans(store.list_modified("snapshots/"), 2, "manifest.json", cutoff)
    doomed = [key for keys in (*versions.values(), *snapshots.values()) for key in keys]
    if not dry_run:
        for upload in uploads:
            store.abort_upload(upload)
        for key in doomed:
            store.delete(key)
    return Sweep(
        uploads=[f"{u.key} {u.upload_id}" for u in uploads],
        versions=sorted(versions),
        snapshots=sorted(snapshots),
        objects_deleted=0 if dry_run else len(doomed),
        dry_run=dry_run,
    )
