"""Retention: what the store may forget, computed from its listing and the references in it.

``plan`` reads the store (listings, leases, aliases, cards, run records) and returns exactly the
keys to delete with the reason for each group; ``sweep`` deletes them, re-checking before each
group that nothing started to need it since the plan (a run that starts during the gc):

- **checkpoints** ``checkpoints/<run>/``: removed once the run finished (a decision, or a failed
  gate). A failed or killed run's are kept ``failed_grace_hours`` after its last write, so a retry
  can resume. An active run's (it holds a model's lease) are never touched.
- **snapshots** ``snapshots/<fingerprint>/``: kept while a kept version's card, an active run or a
  run inside its retry grace refers to it (``runs/<run>/run.json``, written by ingest before it
  touches the snapshot). Deleted under a tombstone (mark, re-check, sweep; see ``sweep``).
- **versions** ``models/<m>/versions/<v>/``: champion, previous, canary and their parents back to
  ``lineage_depth`` are never removed, nor an active run's. Any other (rejected, or retired beyond
  the lineage) is kept while younger than ``version_days`` or among the newest ``version_keep``.
  The card goes first, so a half-deleted version is invisible (the janitor removes the rest).
- **run records** ``runs/<run>/`` and **monitor reports** ``monitor/<m>/reports/``: kept while
  younger than N days or among the newest K; also while a kept version refers to them.
- Never touched: aliases, audit entries, leases, monitor claims, datasets, traffic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import time
from collections.abc import Callable

from components._shared import lease
from components._shared.errors import AlreadyExists, ConfigError
from components._shared.registry import CANARY, CHAMPION, PREVIOUS
from components._shared.snapshot import RUN_RECORD, TOMBSTONE, TOMBSTONE_STALE_SECONDS, reference_snapshot
from components._shared.store import Store

__all__ = ["RetentionPolicy", "plan", "sweep", "reference_snapshot", "TOMBSTONE", "RUN_RECORD"]

PROTECTED_ALIASES = (CHAMPION, PREVIOUS, CANARY)
_STAMP = re.compile(r"^(\d{8}T\d{6})")


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """What `ctp store gc` keeps. Each default is written here once."""

    failed_grace_hours: float = dataclasses.field(
        default=72.0, metadata={"help": "Hours a failed or killed run's checkpoints and snapshot stay (a retry)."}
    )
    lineage_depth: int = dataclasses.field(
        default=3, metadata={"help": "Parents of champion, previous and canary never removed."}
    )
    version_days: float = dataclasses.field(default=30.0, metadata={"help": "Keep other versions this many days..."})
    version_keep: int = dataclasses.field(default=5, metadata={"help": "...or the newest this many per model."})
    run_days: float = dataclasses.field(default=30.0, metadata={"help": "Keep run records this many days..."})
    run_keep: int = dataclasses.field(default=50, metadata={"help": "...or the newest this many."})
    report_days: float = dataclasses.field(default=14.0, metadata={"help": "Keep monitor reports this many days..."})
    report_keep: int = dataclasses.field(default=200, metadata={"help": "...or the newest this many per model."})

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ConfigError(f"retention {field.name}={getattr(self, field.name)} must not be negative")


@dataclasses.dataclass
class Group:
    """One thing to delete: its kind, name, keys (deleted in this order) and why."""

    kind: str  # checkpoints, snapshot, version, run, report
    name: str
    keys: list[str]
    reason: str


@dataclasses.dataclass
class Plan:
    groups: list[Group]
    kept: dict[str, list[str]]  # what was kept on purpose, by kind: "name: why"
    active_runs: list[str]

    def keys(self) -> list[str]:
        return [k for g in self.groups for k in g.keys]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.kind] = out.get(g.kind, 0) + 1
        return out


@dataclasses.dataclass
class RunInfo:
    run_id: str
    status: str  # active, finished, failed, unknown
    at: dt.datetime  # when it finished or failed, else its last write
    model: str | None
    fingerprint: str | None


def _parse(value) -> dt.datetime | None:
    if not value:
        return None
    try:
        found = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=dt.UTC)


def _stamp(name: str) -> dt.datetime | None:
    found = _STAMP.match(name)
    return dt.datetime.strptime(found.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC) if found else None


def _group_by(listing: dict[str, dt.datetime], depth: int) -> dict[str, dict[str, dt.datetime]]:
    groups: dict[str, dict[str, dt.datetime]] = {}
    for key, when in listing.items():
        parts = key.split("/")
        if len(parts) > depth:
            groups.setdefault(parts[depth - 1], {})[key] = when
    return groups


def active_leases(store: Store, models: list[str], now: float) -> dict[str, str]:
    """run id -> model, for every unexpired lease."""
    out = {}
    for model in models:
        found = lease.read(store, model)
        if found is not None and found.active(now) and found.run_id:
            out[found.run_id] = model
    return out


def _models(store: Store) -> list[str]:
    return store.list_dirs("models")


def _json(store: Store, key: str) -> dict | None:
    found = store.get_json_with_etag(key)
    return found[0] if found else None


def _runs(
    store: Store, run_keys: dict[str, dict[str, dt.datetime]], ckpt_keys: dict[str, dict], active: dict[str, str]
) -> dict[str, RunInfo]:
    out = {}
    for run_id in sorted(set(run_keys) | set(ckpt_keys)):
        keys = run_keys.get(run_id, {})
        last = max([*keys.values(), *ckpt_keys.get(run_id, {}).values()])
        record = _json(store, f"runs/{run_id}/{RUN_RECORD}") if f"runs/{run_id}/{RUN_RECORD}" in keys else None
        record = record or {}
        decision = _json(store, f"runs/{run_id}/decision.json") if f"runs/{run_id}/decision.json" in keys else None
        evaluation = None
        if decision is None and f"runs/{run_id}/evaluation.json" in keys:
            evaluation = _json(store, f"runs/{run_id}/evaluation.json")
        error = _json(store, f"runs/{run_id}/error.json") if f"runs/{run_id}/error.json" in keys else None
        started = _parse(record.get("at"))
        fingerprint = record.get("fingerprint") or (evaluation or {}).get("fingerprint")
        model = record.get("model") or (decision or {}).get("model")
        if run_id in active:
            status, at = "active", last
        elif decision is not None:
            status, at = "finished", _parse(decision.get("decided_at")) or last
        elif evaluation is not None and evaluation.get("gate", {}).get("decision") == "fail":
            status, at = "finished", started or keys[f"runs/{run_id}/evaluation.json"]  # ended minutes after
        elif error is not None:
            status, at = "failed", _parse(error.get("at")) or last
        else:
            status, at = "unknown", last
        out[run_id] = RunInfo(run_id, status, at, model or active.get(run_id), fingerprint)
    return out


def _newest(items: list[tuple[str, dt.datetime]], keep: int) -> set[str]:
    return {name for name, _ in sorted(items, key=lambda x: (x[1], x[0]), reverse=True)[:keep]}


def plan(store: Store, policy: RetentionPolicy = RetentionPolicy(), *, now: dt.datetime | None = None) -> Plan:
    now = now or dt.datetime.now(dt.UTC)
    grace = dt.timedelta(hours=policy.failed_grace_hours)
    models = _models(store)
    active = active_leases(store, models, now.timestamp())
    run_keys = _group_by(store.list_modified("runs/"), 2)
    ckpt_keys = _group_by(store.list_modified("checkpoints/"), 2)
    runs = _runs(store, run_keys, ckpt_keys, active)
    groups: list[Group] = []
    kept: dict[str, list[str]] = {k: [] for k in ("checkpoints", "snapshot", "version", "run", "report")}
    # runs that must keep what they use: active ones, and failed/killed ones a retry may resume
    live = set(active)
    live |= {r.run_id for r in runs.values() if r.status in ("failed", "unknown") and now - r.at < grace}

    # --- versions, per model ----------------------------------------------------------------
    kept_fingerprints, kept_runs, kept_evidence = set(), set(), set()
    for model in models:
        listing = store.list_modified(f"models/{model}/versions/")
        by_version = _group_by({k[len(f"models/{model}/") :]: t for k, t in listing.items()}, 2)
        cards = {
            v: _json(store, f"models/{model}/versions/{v}/card.json")
            for v, keys in by_version.items()
            if f"versions/{v}/card.json" in keys
        }
        cards = {v: c for v, c in cards.items() if c is not None}
        protected = _protected(store, model, cards.get, policy.lineage_depth)
        protected |= {v for v, c in cards.items() if c.get("run_id") in live}
        others = [(v, _parse(c.get("published_at")) or now) for v, c in cards.items() if v not in protected]
        young = {v for v, at in others if now - at < dt.timedelta(days=policy.version_days)}
        keep = protected | young | _newest(others, policy.version_keep)
        for version in sorted(cards):
            card = cards[version]
            if version in keep:
                why = "protected" if version in protected else "recent"
                kept["version"].append(f"{model}:{version}: {why}")
                kept_fingerprints.add((card.get("data") or {}).get("fingerprint"))
                kept_runs.add(card.get("run_id"))
                kept_evidence.add(card.get("trigger_evidence"))
                continue
            prefix = f"models/{model}/versions/{version}/"
            keys = sorted(k for k in listing if k.startswith(prefix))
            keys.remove(prefix + "card.json")
            groups.append(Group("version", f"{model}:{version}", [prefix + "card.json", *keys], "unprotected and old"))

    # --- checkpoints ---------------------------------------------------------------------------
    for run_id in sorted(ckpt_keys):
        info = runs[run_id]
        if run_id in live:
            kept["checkpoints"].append(f"{run_id}: {info.status}")
            continue
        reason = "run finished" if info.status == "finished" else f"{info.status} run past its retry grace"
        groups.append(Group("checkpoints", run_id, sorted(ckpt_keys[run_id]), reason))

    # --- snapshots -----------------------------------------------------------------------------
    used = kept_fingerprints | {runs[r].fingerprint for r in live if r in runs}
    for fingerprint, keys in sorted(_group_by(store.list_modified("snapshots/"), 2).items()):
        manifest = f"snapshots/{fingerprint}/manifest.json"
        if manifest not in keys:
            continue  # unpublished: a writer at work, or the janitor's
        if fingerprint in used:
            kept["snapshot"].append(f"{fingerprint}: referenced")
            continue
        rest = sorted(k for k in keys if k != manifest and not k.endswith("/" + TOMBSTONE))
        groups.append(Group("snapshot", fingerprint, [manifest, *rest], "no kept version or live run refers to it"))

    # --- run records ---------------------------------------------------------------------------
    recent = {r for r, info in runs.items() if r in run_keys and now - info.at < dt.timedelta(days=policy.run_days)}
    newest = _newest([(r, runs[r].at) for r in run_keys], policy.run_keep)
    for run_id in sorted(run_keys):
        if run_id in live or run_id in kept_runs or run_id in recent or run_id in newest:
            kept["run"].append(f"{run_id}: {runs[run_id].status}")
            continue
        groups.append(Group("run", run_id, sorted(run_keys[run_id]), f"{runs[run_id].status}, old"))

    # --- monitor reports -----------------------------------------------------------------------
    for model in store.list_dirs("monitor"):
        listing = store.list_modified(f"monitor/{model}/reports/")
        dated = [(k, _stamp(k.rsplit("/", 1)[1]) or t) for k, t in listing.items()]
        keep = _newest(dated, policy.report_keep)
        keep |= {k for k, at in dated if now - at < dt.timedelta(days=policy.report_days)}
        keep |= {k for k in listing if any(e and e.endswith("/" + k) for e in kept_evidence)}
        old = sorted(k for k, _ in dated if k not in keep)
        kept["report"] += [f"{model}: {len(listing) - len(old)} report(s)"]
        if old:
            groups.append(Group("report", model, old, "old monitor reports"))
    return Plan(groups=groups, kept=kept, active_runs=sorted(active))


def _protected(store: Store, model: str, card: Callable[[str], dict | None], depth: int) -> set[str]:
    """Alias targets and their parents back to ``depth`` generations (``card``: a version's card)."""
    out = set()
    for alias in PROTECTED_ALIASES:
        found = _json(store, f"models/{model}/aliases/{alias}.json")
        version = (found or {}).get("version")
        for _ in range(depth + 1):
            if not version:
                break
            out.add(version)
            version = (card(version) or {}).get("parent_version")
    return out


# --------------------------------------------------------------------------------------- sweep
@dataclasses.dataclass
class SweepResult:
    deleted: dict[str, list[str]]  # kind -> names of groups removed
    skipped: dict[str, str]  # "kind name" -> why it was kept after all (it became needed)
    objects_deleted: int
    seconds: float


def sweep(store: Store, planned: Plan, policy: RetentionPolicy = RetentionPolicy()) -> SweepResult:
    """Delete the plan's groups; before each, re-check what the plan assumed (mark-then-sweep for
    snapshots). Versions first (their cards vanish first), then checkpoints, snapshots, records."""
    started = time.perf_counter()
    models = _models(store)
    result = SweepResult({}, {}, 0, 0.0)

    def done(group: Group) -> None:
        result.deleted.setdefault(group.kind, []).append(group.name)
        result.objects_deleted += len(group.keys)

    order = {"version": 0, "checkpoints": 1, "snapshot": 2, "run": 3, "report": 4}
    for group in sorted(planned.groups, key=lambda g: order[g.kind]):
        why = _still_needed(store, group, models, policy)
        if why:
            result.skipped[f"{group.kind} {group.name}"] = why
            continue
        if group.kind == "snapshot":
            why = _delete_snapshot(store, group, models)
            if why:
                result.skipped[f"{group.kind} {group.name}"] = why
                continue
        else:
            store.delete_many(group.keys)
        done(group)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _still_needed(store: Store, group: Group, models: list[str], policy: RetentionPolicy) -> str:
    """Why ``group`` must stay after all ('' when it may go): state read now, not at plan time."""
    now = time.time()
    if group.kind == "version":
        model, version = group.name.split(":", 1)

        def card(v: str) -> dict | None:
            return _json(store, f"models/{model}/versions/{v}/card.json")

        if version in _protected(store, model, card, policy.lineage_depth):
            return "now an alias or in an alias's lineage"
        holder = active_leases(store, [model], now)
        if (card(version) or {}).get("run_id") in holder:
            return "its run is active"
        return ""
    if group.kind in ("checkpoints", "run"):
        if group.name in active_leases(store, models, now):
            return "the run is active again"
        prefix = f"{'checkpoints' if group.kind == 'checkpoints' else 'runs'}/{group.name}/"
        if set(store.list(prefix)) - set(group.keys):
            return "the run wrote since the plan"
    return ""


def _live_fingerprints(store: Store, models: list[str]) -> set[str]:
    out = set()
    for run_id in active_leases(store, models, time.time()):
        record = _json(store, f"runs/{run_id}/{RUN_RECORD}")
        if record and record.get("fingerprint"):
            out.add(record["fingerprint"])
    return out


def _delete_snapshot(store: Store, group: Group, models: list[str]) -> str:
    """Mark, re-check, sweep. Ingest writes its run record (the reference) and then looks for a
    tombstone (``reference_snapshot``); gc writes the tombstone and then looks for references.
    Whichever comes second sees the other, so a snapshot is never deleted under a run using it."""
    fingerprint = group.name
    tombstone = f"snapshots/{fingerprint}/{TOMBSTONE}"
    body = {"gc": secrets.token_hex(6), "at": dt.datetime.now(dt.UTC).isoformat(), "epoch": time.time()}
    try:
        store.put_json(tombstone, body, create_only=True)
    except AlreadyExists:
        other = _json(store, tombstone) or {}
        if time.time() - float(other.get("epoch", 0)) < TOMBSTONE_STALE_SECONDS:
            return "another gc is deleting it"
        store.put_json(tombstone, body)  # a dead gc's tombstone
    if fingerprint in _live_fingerprints(store, models):
        store.delete(tombstone)
        return "an active run started using it"
    store.delete_many(group.keys)  # the manifest first: readers stop seeing the snapshot
    store.delete(tombstone)
    return ""


def describe(planned: Plan) -> list[str]:
    return [f"{g.kind} {g.name}: {len(g.keys)} object(s), {g.reason}" for g in planned.groups]
