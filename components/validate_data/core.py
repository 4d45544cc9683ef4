"""Validate-data: check a snapshot against the champion's data contract, and test the new data
for drift against the champion's reference sample. Errors stop the run before training.

The report names every problem (code, severity, batch, count, examples) as JSON and Markdown;
the drift report (KS decision, MMD second opinion, Chi-square on labels) comes with a PNG plot.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components._shared.dataset import BATCH, Finding, decode_images
from components._shared.dataset import raise_on_errors as raise_findings
from components._shared.model.files import EMBEDDING_FILE, META_FILE, REFERENCE_FILE, WEIGHTS_FILE
from components._shared.model.inputs import pixel_features
from components._shared.registry import CHAMPION, Registry
from components._shared.snapshot import SplitFile, read_manifest, verify_split
from components._shared.store import Store
from components.validate_data import drift
from components.validate_data.config import ValidateConfig
from components.validate_data.drift import EMBEDDING, PIXELS

WINDOW_ROWS = 10_000  # drift is tested on a seeded uniform sample of at most this many window rows
WINDOW_SEED = 0


@dataclasses.dataclass
class Champion:
    version: str
    card: dict
    reference: np.ndarray | None  # pooled pixels
    embedding: np.ndarray | None = None  # its penultimate-layer embeddings of held-out images
    encoder: Callable[[np.ndarray], np.ndarray] | None = None  # images -> those embeddings

    @property
    def representation(self) -> str:
        return EMBEDDING if self.embedding is not None and self.encoder is not None else PIXELS

    def reference_for(self, representation: str) -> np.ndarray | None:
        return self.embedding if representation == EMBEDDING else self.reference

    def represent(self, images: np.ndarray) -> np.ndarray:
        """The images in the representation drift is decided on (the monitor needs no other)."""
        return self.encoder(images) if self.representation == EMBEDDING else pixel_features(images)

    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The images in every representation this champion can compare."""
        found = {PIXELS: pixel_features(images)}
        if self.representation == EMBEDDING:
            found[EMBEDDING] = self.encoder(images)
        return found


@dataclasses.dataclass
class Validation:
    report: dict
    markdown: str
    plot_png: bytes


def load_champion(store: Store, model: str) -> Champion | None:
    registry = Registry(store, model)
    ref = registry.alias(CHAMPION)
    if ref is None or not ref.version:
        return None
    card = registry.card(ref.version)
    reference, embedding = (_load_npy(registry, ref.version, card, name) for name in (REFERENCE_FILE, EMBEDDING_FILE))
    encoder = _load_encoder(registry, ref.version, card) if embedding is not None else None
    return Champion(ref.version, card, reference, embedding, encoder)


def _load_npy(registry: Registry, version: str, card: dict, name: str) -> np.ndarray | None:
    if name not in card.get("files", {}):
        return None
    return np.load(io.BytesIO(registry.read_verified(version, name)), allow_pickle=False)


def _load_encoder(registry: Registry, version: str, card: dict) -> Callable[[np.ndarray], np.ndarray] | None:
    """The champion's penultimate layer (from its safetensors weights), when its card holds them."""
    if not {WEIGHTS_FILE, META_FILE} <= card.get("files", {}).keys():
        return None
    from components._shared.model.network import embed, load_model

    model = load_model(
        json.loads(registry.read_verified(version, META_FILE)), registry.read_verified(version, WEIGHTS_FILE)
    )
    return lambda images: embed(model, images)


def check_snapshot(manifest: dict, champion: Champion | None, config: ValidateConfig) -> list[Finding]:
    """Ingest's warnings plus the checks against the row bounds and the champion's contract."""
    findings = [Finding(**f) for f in manifest.get("findings", [])]
    rows = manifest["objects"]["train.parquet"]["rows"]
    if rows < config.min_train_rows:
        findings.append(
            Finding("ROW_COUNT", "error", "*", f"{rows} training rows; need at least {config.min_train_rows}", rows)
        )
    if config.max_train_rows and rows > config.max_train_rows:
        findings.append(
            Finding("ROW_COUNT", "error", "*", f"{rows} training rows; expected at most {config.max_train_rows}", rows)
        )
    if champion is None:
        return findings
    data = champion.card.get("data", {})
    shape = tuple(data.get("image_shape", ()))
    if shape and tuple(manifest["image_shape"]) != shape:
        findings.append(
            Finding(
                "IMAGE_SHAPE",
                "error",
                next(iter(manifest["batches"]), "*"),
                f"image shape {tuple(manifest['image_shape'])} differs from the champion's {shape}",
            )
        )
    findings += _label_contract_findings(manifest, data)
    known = set(data.get("classes", []))
    if known:
        findings += _new_class_findings(manifest, known, config.allow_new_classes)
    return findings


def _label_contract_findings(manifest: dict, data: dict) -> list[Finding]:
    """Labels must mean what they meant to the champion: the same type and, for string labels, each
    of its class indices still standing for the same name (indices follow first appearance, so
    they move if the batches that introduced a class were removed)."""
    kind, names = manifest.get("label_kind"), manifest.get("label_names") or []
    if data.get("label_kind") and kind and kind != data["label_kind"]:
        return [
            Finding(
                "LABEL_DTYPE",
                "error",
                "*",
                f"labels are {_KINDS[kind]}; the champion was trained on "
                f"{_KINDS[data['label_kind']]} (convert them, or start a new model)",
            )
        ]
    old = data.get("label_names") or []
    moved = [i for i, name in enumerate(old[: len(names)]) if names[i] != name]  # absent classes just have no rows
    if moved:
        shown = [f"{i}: {old[i]!r} -> {names[i]!r}" for i in moved[:5]]
        return [
            Finding(
                "LABEL_DOMAIN",
                "error",
                "*",
                f"{len(moved)} class index(es) no longer mean what they meant "
                f"to the champion ({', '.join(shown)}); restore the batches that introduced them, or "
                "start a new model",
                len(moved),
                shown,
            )
        ]
    return []


_KINDS = {"int": "integers", "str": "strings"}


def _new_class_findings(manifest: dict, known: set[int], allowed: bool) -> list[Finding]:
    names = manifest.get("label_names")
    findings = []
    for batch, counts in manifest["label_counts"].items():
        new = sorted(int(c) for c in counts if int(c) not in known)
        if new:
            shown = [names[c] for c in new] if names else new
            findings.append(
                Finding(
                    "LABEL_NEW_CLASS",
                    "warning" if allowed else "error",
                    batch,
                    f"label(s) {shown[:5]} are not among the champion's classes",
                    sum(counts[str(c)] for c in new),
                    shown[:5],
                )
            )
    return findings


def window_batches(manifest: dict, champion: Champion | None) -> list[str]:
    """The data the champion has not seen: batches newer than its training window (all if none)."""
    seen = set(champion.card.get("data", {}).get("batches", [])) if champion else set()
    new = [b for b in manifest["batches"] if b not in seen]
    return new or list(manifest["batches"])


def _label_counts(manifest: dict, batches: list[str]) -> dict[int, int]:
    total: dict[int, int] = {}
    for batch in batches:
        for label, count in manifest["label_counts"].get(batch, {}).items():
            total[int(label)] = total.get(int(label), 0) + count
    return total


def _window_features(
    store: Store, fingerprint: str, manifest: dict, batches: list[str], champion: Champion | None
) -> dict[str, np.ndarray]:
    """Drift features of a sample of the window's training rows (all of them up to WINDOW_ROWS),
    in every representation the champion compares, read a row group at a time: memory stays
    bounded whatever the snapshot's size."""
    verify_split(store, fingerprint, "train", manifest)
    window = pa.array(batches, pa.string())

    def in_window(table: pa.Table) -> np.ndarray:
        return pc.is_in(table.column(BATCH), value_set=window).to_numpy()

    pieces: dict[str, list[np.ndarray]] = {PIXELS: [np.zeros((0, drift.FEATURE_SIDE**2), np.float32)]}
    with SplitFile(store, fingerprint, "train") as split:
        for table in split.sample(WINDOW_ROWS, WINDOW_SEED, keep=in_window, keep_columns=[BATCH]):
            images = decode_images(table)
            found = champion.features(images) if champion else {PIXELS: pixel_features(images)}
            for name, array in found.items():
                pieces.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in pieces.items()}


def drift_report(
    store: Store, fingerprint: str, manifest: dict, champion: Champion | None, config: ValidateConfig
) -> tuple[dict, bytes]:
    """KS decides feature drift, MMD gives a second opinion, Chi-square tests the labels. The
    features are the champion's embedding when it has one (what the model sees), else pooled
    pixels; the plot's mean images are always the pixels (what a person can look at)."""
    batches = window_batches(manifest, champion)
    window = _window_features(store, fingerprint, manifest, batches, champion)
    pixels = window[PIXELS]
    base = {"window_batches": batches, "n_window": int(len(pixels))}
    if champion is None or champion.reference is None:
        report = {**base, "decision": "no_reference", "is_drift": False, "reason": "no champion yet"}
        return report, drift.plot_png(report, None, pixels.mean(axis=0) if len(pixels) else np.zeros(64))
    representation = champion.representation
    reference = champion.reference_for(representation)
    seen = champion.card.get("data", {}).get("batches", [])
    empty = np.zeros((0, reference.shape[1]), np.float32)  # no window rows: "insufficient data"
    feature = drift.feature_drift(reference, window.get(representation, empty), config.drift_p_val)
    ks = feature["features"]
    labels = drift.label_drift(_label_counts(manifest, seen), _label_counts(manifest, batches), config.drift_p_val)
    if ks["decision"] == "insufficient_data":
        decision = "insufficient_data"
    else:
        decision = "drift" if ks["is_drift"] or labels["is_drift"] else "no_drift"
    report = {
        **base,
        "decision": decision,
        "is_drift": decision == "drift",
        "reference_version": champion.version,
        "representation": representation,
        "n_reference": int(len(reference)),
        **feature,
        "labels": labels,
    }
    return report, drift.plot_png(report, champion.reference.mean(axis=0), pixels.mean(axis=0))


def validate(store: Store, fingerprint: str, config: ValidateConfig) -> Validation:
    """Builds the whole report (it never stops early); call raise_on_errors to stop the run."""
    manifest = read_manifest(store, fingerprint)
    champion = load_champion(store, config.model_name)
    findings = check_snapshot(manifest, champion, config)
    drift_result, plot = drift_report(store, fingerprint, manifest, champion, config)
    report = {
        "fingerprint": fingerprint,
        "champion": champion.version if champion else None,
        "rows": {split: manifest["objects"][f"{split}.parquet"]["rows"] for split in ("train", "test")},
        "findings": [dataclasses.asdict(f) for f in findings],
        "drift": drift_result,
        "status": "fail" if any(f.severity == "error" for f in findings) else "pass",
    }
    return Validation(report, report_markdown(report), plot)


def publish(store: Store, run_id: str, validation: Validation) -> dict[str, str]:
    """Writes the report, its Markdown, the drift report and its plot under runs/<run-id>/."""
    keys = {name: f"runs/{run_id}/{name}" for name in ("validation.json", "validation.md", "drift.json", "drift.png")}
    store.put_json(keys["validation.json"], validation.report)
    store.put_bytes(keys["validation.md"], validation.markdown.encode())
    store.put_json(keys["drift.json"], validation.report["drift"])
    store.put_bytes(keys["drift.png"], validation.plot_png)
    return keys


def raise_on_errors(report: dict) -> None:
    raise_findings(
        [Finding(**f) for f in report["findings"]],
        hint="fix or remove the batch, then re-run; the champion is unchanged",
    )


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def report_markdown(report: dict) -> str:
    """The report as Markdown for the KFP UI: status, every finding, and the drift tests."""
    rows = report["rows"]
    lines = [
        f"# Data validation: {report['status'].upper()}",
        "",
        f"fingerprint `{report['fingerprint']}` · champion `{report['champion'] or 'none'}` · "
        f"rows: train {rows['train']}, test {rows['test']}",
        "",
        "## Findings",
        "",
    ]
    if report["findings"]:
        lines += ["| code | severity | batch | count | examples | message |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {f['code']} | {f['severity']} | {_cell(f['batch'])} | {f['count']} | "
            f"{_cell(', '.join(map(str, f['examples'])))} | {_cell(f['message'])} |"
            for f in report["findings"]
        ]
    else:
        lines.append("No problems found.")
    lines += ["", *_drift_markdown(report["drift"])]
    return "\n".join(lines) + "\n"


def _drift_markdown(result: dict) -> list[str]:
    lines = [
        f"## Drift: {result['decision']}",
        "",
        f"window: batches {', '.join(result['window_batches'])} ({result['n_window']} rows)",
    ]
    if "features" not in result:
        return lines + ["", result.get("reason", "")]
    lines += [
        f"reference: champion `{result['reference_version']}` ({result['n_reference']} rows)",
        "",
        "| test | what | p-value | threshold | decision |",
        "|---|---|---|---|---|",
    ]
    ks, mmd, labels = result["features"], result["mmd"], result["labels"]
    space = "champion embedding" if result.get("representation") == EMBEDDING else "pooled pixels"
    lines.append(
        _test_row(
            f"KS, {ks.get('n_features', 64)} {space} features, Bonferroni",
            f"{ks.get('features_drifted', '-')} feature(s) drifted",
            ks.get("min_p_val"),
            ks.get("threshold"),
            ks,
        )
    )
    lines.append(
        _test_row(
            f"MMD (second opinion, {mmd['n_reference']} vs {mmd['n_window']} rows)",
            f"MMD² {mmd.get('mmd2', float('nan')):.2e}",
            mmd.get("p_value"),
            mmd["p_val"],
            mmd,
        )
    )
    lines.append(
        _test_row(
            "Chi-square on labels", f"classes {labels['classes']}", labels.get("p_value"), labels["p_val"], labels
        )
    )
    return lines


def _test_row(name: str, what: str, p_value, threshold, result: dict) -> str:
    shown = "-" if p_value is None else f"{p_value:.3g}"
    limit = "-" if threshold is None else f"{threshold:.3g}"
    return f"| {name} | {what} | {shown} | {limit} | {result['decision']} |"
