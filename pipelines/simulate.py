"""`ctp simulate`: replay a stream of batches and run retraining policies over it, before any of
them costs money.

Every step of every policy goes through the pipeline's own core functions: batches are read and
split by ``ingest``, each retraining window is published as a snapshot by ``ingest`` and trained
by ``train`` (in-process, one rank), the challenger is judged by ``evaluate`` (ONNX parity,
paired non-inferiority gate) and by the canary's ``canary_analysis`` on that step's traffic, and
the drift trigger is ``ks_drift`` on pooled pixels against the serving model's reference
sample, and a policy's replay of older rows is ingest's own rule (``replay_sample``; ``auto``: the
pipeline's default, ``auto_replay_fraction`` with IngestConfig.replay_ratio).
Evaluation is prequential: a batch is scored by the model in service (through its ONNX file)
before any policy may train on it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from components._shared.dataset import decode_images, list_batches
from components._shared.errors import ConfigError
from components._shared.model.files import META_FILE, ONNX_FILE, REFERENCE_FILE, WEIGHTS_FILE
from components._shared.model.inputs import pixel_features
from components._shared.model.serving import onnx_probabilities
from components._shared.registry import new_version_id, utc_now
from components._shared.sampledata import Segment, batch_table, seed_stream, stream_meta_key, stream_state
from components._shared.snapshot import Split, load_split
from components._shared.store import DEFAULT_STORE, LocalStore, Store, open_store, parquet_bytes, read_parquet
from components.deploy_canary.config import DeployConfig
from components.deploy_canary.core import canary_analysis
from components.evaluate.config import EvaluateConfig
from components.evaluate.core import evaluate
from components.ingest.config import REPLAY_AUTO, IngestConfig
from components.ingest.core import auto_replay_fraction, ingest, replay_sample
from components.train.config import TrainConfig
from components.validate_data import drift
from components.validate_data.config import ValidateConfig

MATERIAL_SHIFT = 0.3  # strength units (0.3 = 9 degrees, noise std 12, 27% of classes 0-4 dropped)
RECOVERY_TOLERANCE = 0.05  # back within 5 accuracy points of the pre-shift level
BASELINE_STEPS = 3

SCENARIOS = {
    # 16 steps of ~90 digits: a gradual rotation, a sudden class-prior shift, a noise burst.
    "default": (16, (Segment("rotation", 4, None, 1.0, ramp=3), Segment("prior", 9), Segment("noise", 12, 14))),
    # 8 steps of ~180 digits: one sudden 30-degree rotation at step 4.
    "quick": (8, (Segment("rotation", 4),)),
}
DEFAULT_POLICIES = ("never", "every4/warm/0", "drift/warm/0", "always/warm/0", "drift/scratch/1")
QUICK_POLICIES = ("never", "drift/warm/0", "always/warm/0")


@dataclasses.dataclass(frozen=True)
class Policy:
    """When to retrain (trigger, every n steps) and how (warm or scratch, share of older rows replayed:
    REPLAY_AUTO sizes it by the new rows, as the pipeline does by default)."""

    trigger: str
    every: int = 0
    init: str = "warm"
    replay: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Policy:
        """``never`` | ``always`` | ``drift`` | ``every<N>``, then optional ``/warm|scratch`` and
        ``/<replay 0..1>`` or ``/auto``."""
        parts = text.strip().split("/")
        match = re.fullmatch(r"never|always|drift|every([1-9]\d*)", parts[0])
        init = parts[1] if len(parts) > 1 else "warm"
        replay = (REPLAY_AUTO if parts[2] == "auto" else _float_or_none(parts[2])) if len(parts) > 2 else 0.0
        share = replay is not None and (0 <= replay <= 1 or replay == REPLAY_AUTO)
        if not match or len(parts) > 3 or init not in ("warm", "scratch") or not share:
            raise ConfigError(
                f"policy {text!r} is not understood",
                hint="write TRIGGER[/warm|scratch[/REPLAY 0..1 or auto]] with TRIGGER one of never, always, "
                "drift, every<N>; e.g. drift/warm/0.3 or drift/warm/auto",
            )
        every = int(match[1]) if match[1] else 0
        return cls("every" if every else match[0], every, init, replay)

    @property
    def label(self) -> str:
        if self.trigger == "never":
            return "never"
        replay = "auto" if self.replay == REPLAY_AUTO else f"{self.replay:g}"
        return f"{self.trigger}{self.every or ''}/{self.init}/{replay}"

    def wants_retrain(self, step: int, first_step: int, drift_report: dict | None, cooling: bool) -> bool:
        if self.trigger == "every":
            return (step - first_step + 1) % self.every == 0
        if self.trigger == "drift":
            return bool(drift_report and drift_report["is_drift"]) and not cooling
        return self.trigger == "always"


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    store_uri: str = DEFAULT_STORE
    dataset: str = ""  # replay datasets/<name>/ from the store; "" = seed the scenario's stream
    scenario: str = "default"
    policies: tuple[str, ...] = DEFAULT_POLICIES
    bootstrap_steps: int = 3  # the first model trains on these; scoring starts after them
    epochs: int = TrainConfig.epochs
    batch_size: int = 32  # not the pipeline's 64: a step's window is ~90-180 rows
    lr: float = TrainConfig.lr
    drift_p_val: float = ValidateConfig.drift_p_val
    drift_cooldown: int = 2  # steps without a drift-triggered run after one (the monitor's cooldown)
    seed: int = 0
    evaluate: EvaluateConfig = EvaluateConfig()
    deploy: DeployConfig = DeployConfig()

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {self.scenario!r}", hint=f"choose one of {', '.join(SCENARIOS)}")
        if not self.policies:
            raise ConfigError("no policy to simulate", hint="pass --policy at least once")
        if self.bootstrap_steps < 1 or self.epochs < 1 or self.drift_cooldown < 0:
            raise ConfigError("bootstrap_steps and epochs must be at least 1, drift_cooldown at least 0")


@dataclasses.dataclass
class Stream:
    """The replayed stream in memory: per step its labelled rows, its traffic, its true shift state."""

    steps: list[Split]
    traffic: list[np.ndarray | None]
    states: list[dict[str, float]]
    segments: list[Segment]

    def window(self, start: int, end: int) -> Split:
        parts = self.steps[start:end]
        return Split(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.labels for p in parts]),
            [i for p in parts for i in p.ids],
            [b for p in parts for b in p.batches],
        )


@dataclasses.dataclass
class Serving:
    """The model a policy has in service: its files, the steps its data covered, their shift states."""

    model_dir: Path
    seen_until: int
    states: list[dict[str, float]]

    def reference(self) -> np.ndarray:
        return np.load(self.model_dir / REFERENCE_FILE, allow_pickle=False)


class Workspace:
    """Scratch store for retraining windows and models: the user's store only gets runs/<id>/."""

    def __init__(self, root: Path):
        self.root = root
        self.store = LocalStore(root / "store")
        self._count = 0

    def publish_window(self, window: Split) -> str:
        """Write the window as batches of its own dataset and ingest it: the pipeline's snapshot."""
        self._count += 1
        name = f"window-{self._count:05d}"
        for batch in sorted(set(window.batches)):
            part = window.where(np.asarray(window.batches) == batch)
            self.store.put_bytes(
                f"datasets/{name}/batch={batch}/part-0.parquet",
                parquet_bytes(batch_table(part.images, part.labels, part.ids)),
            )
        return ingest(self.store, IngestConfig(dataset=name, replay_fraction=1.0)).fingerprint  # the policy's window

    def model_dir(self) -> Path:
        return self.root / "models" / f"{self._count:05d}"


# --- the stream -------------------------------------------------------------------------------------
def load_stream(store: Store, dataset: str, work: Workspace) -> Stream:
    """Copy the stream's batches into the workspace and ingest them (the pipeline's checks and
    split); return them per step. Shift ground truth comes from stream.json when present."""
    batches = list_batches(store, dataset)
    if not batches:
        raise ConfigError(
            f"no batches under {store.describe(f'datasets/{dataset}/')}",
            hint="pick a dataset with batches, or omit --dataset to seed a scenario stream",
        )
    for keys in batches.values():
        for key in keys:
            work.store.put_bytes(key.replace(f"datasets/{dataset}/", "datasets/stream/", 1), store.get_bytes(key))
    fingerprint = ingest(work.store, IngestConfig(dataset="stream", replay_fraction=1.0)).fingerprint
    train, test = load_split(work.store, fingerprint, "train"), load_split(work.store, fingerprint, "test")
    steps = [
        _concat(train.where(np.asarray(train.batches) == b), test.where(np.asarray(test.batches) == b)) for b in batches
    ]
    traffic_keys = list_batches(store, dataset, kind="traffic")
    traffic = [
        np.concatenate([decode_images(read_parquet(store, k)) for k in traffic_keys[b]]) if b in traffic_keys else None
        for b in batches
    ]
    meta_key = stream_meta_key(dataset)
    segments = [Segment(**s) for s in store.get_json(meta_key)["segments"]] if store.exists(meta_key) else []
    return Stream(steps, traffic, [stream_state(segments, i) for i in range(len(steps))], segments)


def _concat(a: Split, b: Split) -> Split:
    return Split(
        np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]), a.ids + b.ids, a.batches + b.batches
    )


def materially_shifted(state: dict[str, float], known: list[dict[str, float]]) -> bool:
    """Ground truth: the batch differs from every batch the serving model learned from."""
    return all(max(abs(state[k] - seen[k]) for k in state) >= MATERIAL_SHIFT for seen in known)


# --- one policy over the stream -----------------------------------------------------------------
def train_model(
    work: Workspace, window: Split, config: SimulateConfig, parent: Serving | None, init: str
) -> tuple[Path, dict, float]:
    """Publish the window, train on it in-process (one rank); returns (model dir, meta, wall seconds)."""
    fingerprint = work.publish_window(window)
    out_dir = work.model_dir()
    warm = init == "warm" and parent is not None
    train_config = TrainConfig(
        store_uri=work.store.uri,
        fingerprint=fingerprint,
        out_dir=str(out_dir),
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        init="warm" if warm else "scratch",
        init_weights=str(parent.model_dir / WEIGHTS_FILE) if warm else "",
        init_meta=str(parent.model_dir / META_FILE) if warm else "",
        checkpoint_every=0,
    )
    from components.train.core import train  # torch: only when a policy trains

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines would break the progress bar
        meta = train(train_config)
    return out_dir, {**meta, "fingerprint": fingerprint}, time.perf_counter() - started


def retraining_window(stream: Stream, serving: Serving, step: int, replay: float) -> Split:
    """Everything the serving model has not seen (through ``step``) plus a ``replay`` share of older
    rows, chosen by ingest's own replay rule (per-class shares, stable id hash, a minimum per class;
    REPLAY_AUTO: the share that replays IngestConfig.replay_ratio x the new rows)."""
    new = stream.window(serving.seen_until, step + 1)
    if replay == 0 or serving.seen_until == 0:
        return new
    old = stream.window(0, serving.seen_until)
    if replay == REPLAY_AUTO:
        replay = auto_replay_fraction(len(old), len(new), IngestConfig.replay_ratio)
    return _concat(old.where(replay_sample(old.ids, old.labels, replay, IngestConfig.test_fraction)), new)


def retrain(
    stream: Stream,
    serving: Serving,
    step: int,
    policy: Policy,
    config: SimulateConfig,
    work: Workspace,
    traffic: np.ndarray | None,
) -> tuple[Serving, dict]:
    """Train a challenger, gate it (evaluate) and canary it (deploy decision); swap it in if both pass."""
    window = retraining_window(stream, serving, step, policy.replay)
    model_dir, meta, train_wall = train_model(work, window, config, serving, policy.init)
    started = time.perf_counter()
    report = evaluate(work.store, meta["fingerprint"], model_dir, serving.model_dir, config.evaluate)
    canary = canary_analysis(model_dir / ONNX_FILE, serving.model_dir / ONNX_FILE, traffic, config.deploy)
    deployed = report["gate"]["decision"] == "pass" and canary["decision"] == "promote"
    record = {
        "window_rows": len(window),
        "train_rows": meta["train_rows"],
        "init": meta["init"]["applied"],
        "train_examples": meta["train_rows"] * meta["epochs"],
        "train_seconds": sum(e["seconds"] for e in meta["history"]),
        "train_wall_seconds": train_wall,
        "judge_seconds": time.perf_counter() - started,
        "gate": report["gate"],
        "deployed": deployed,
        "canary": {k: canary[k] for k in ("decision", "reason", "agreement", "disagreement_confidence") if k in canary},
    }
    if not deployed:
        return serving, record
    start = serving.seen_until if policy.replay == 0 else 0
    known = (serving.states if meta["init"]["applied"] == "warm" else []) + stream.states[start : step + 1]
    return Serving(model_dir, step + 1, known), record


def run_policy(
    policy: Policy, stream: Stream, initial: Serving, config: SimulateConfig, work: Workspace, tick
) -> list[dict]:
    serving, rows, cool_until = initial, [], 0
    for step in range(config.bootstrap_steps, len(stream.steps)):
        batch = stream.steps[step]
        probs = onnx_probabilities(serving.model_dir / ONNX_FILE, batch.images)  # prequential: score first
        shifted = bool(stream.segments) and materially_shifted(stream.states[step], serving.states)
        row = {
            "step": step,
            "rows": len(batch),
            "accuracy": float((probs.argmax(1) == batch.labels).mean()),
            "shifted": shifted if stream.segments else None,
            "drift": None,
            "retrain": None,
        }
        if policy.trigger == "drift":
            report = drift.ks_drift(serving.reference(), pixel_features(batch.images), config.drift_p_val)
            row["drift"] = {k: report.get(k) for k in ("decision", "is_drift", "min_p_val", "features_drifted")}
        if policy.wants_retrain(step, config.bootstrap_steps, row["drift"], cooling=step < cool_until):
            serving, row["retrain"] = retrain(stream, serving, step, policy, config, work, stream.traffic[step])
            cool_until = step + 1 + config.drift_cooldown
        rows.append(row)
        tick(policy.label)
    return rows


# --- what the runs mean ---------------------------------------------------------------------------
def shift_events(segments: list[Segment], first_step: int, steps: int) -> list[dict]:
    return [
        {"name": f"{s.shift}@{s.start}", "step": s.start}
        for s in sorted(segments, key=lambda s: s.start)
        if first_step < s.start < steps
    ]


def recovery_steps(rows: list[dict], event_step: int, until: int) -> int | None:
    """Steps from the shift until accuracy is back within tolerance of the pre-shift level and
    averages at least that until the next shift (one noisy batch does not undo a recovery);
    0 = never fell; None = not recovered before ``until``."""
    before = [r["accuracy"] for r in rows if event_step - BASELINE_STEPS <= r["step"] < event_step]
    after = [r for r in rows if event_step <= r["step"] < until]
    if not before or not after:
        return None
    floor = float(np.mean(before)) - RECOVERY_TOLERANCE
    for i, row in enumerate(after):
        if row["accuracy"] >= floor and np.mean([r["accuracy"] for r in after[i:]]) >= floor:
            return row["step"] - event_step
    return None


def summarize(rows: list[dict], events: list[dict], steps: int) -> dict:
    retrains = [r["retrain"] for r in rows if r["retrain"]]
    bounds = [e["step"] for e in events[1:]] + [steps]
    summary = {
        "mean_accuracy": float(np.mean([r["accuracy"] for r in rows])),
        "retrains": len(retrains),
        "deployed": sum(r["deployed"] for r in retrains),
        "train_examples": sum(r["train_examples"] for r in retrains),
        "train_seconds": sum(r["train_seconds"] for r in retrains),
        "retrain_seconds": sum(r["train_wall_seconds"] + r["judge_seconds"] for r in retrains),
        "recovery": {e["name"]: recovery_steps(rows, e["step"], end) for e, end in zip(events, bounds)},
    }
    if events:
        summary["false_triggers"] = sum(1 for r in rows if r["retrain"] and not r["shifted"])
        summary["missed_triggers"] = sum(1 for r in rows if r["shifted"] and not r["retrain"])
    return summary


# --- the whole simulation -------------------------------------------------------------------------
def simulate(config: SimulateConfig, *, progress: bool = True) -> dict:
    """Run every policy over the same stream; write result.json, table.md/.csv and plot.png under
    runs/simulate-<ts>/ in the store; return the result."""
    store = open_store(config.store_uri)
    policies = [Policy.parse(p) for p in config.policies]
    with one_torch_thread():
        return _simulate(store, policies, config, progress)


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models: on 2 shared, busy cores two intra-op threads ran 17x slower than one (idle: 1.5x
    faster, see bench_simulate), so one thread is the safe choice."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _simulate(store: Store, policies: list[Policy], config: SimulateConfig, progress: bool) -> dict:
    from tqdm import tqdm

    run_id = f"simulate-{new_version_id().lower()}"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ctp-simulate-") as tmp:
        work = Workspace(Path(tmp))
        stream = _open_stream(store, config, work)
        if len(stream.steps) <= config.bootstrap_steps:
            raise ConfigError(
                f"the stream has {len(stream.steps)} batches; bootstrap uses {config.bootstrap_steps}",
                hint="use a longer stream or fewer --bootstrap-steps",
            )
        model_dir, _, bootstrap_seconds = train_model(
            work, stream.window(0, config.bootstrap_steps), config, None, "scratch"
        )
        initial = Serving(model_dir, config.bootstrap_steps, stream.states[: config.bootstrap_steps])
        scored = len(stream.steps) - config.bootstrap_steps
        with tqdm(total=len(policies) * scored, desc="simulate", unit="step", disable=not progress) as bar:

            def tick(label: str) -> None:
                bar.set_postfix_str(label)
                bar.update()

            runs = [(p, run_policy(p, stream, initial, config, work, tick)) for p in policies]
    events = shift_events(stream.segments, config.bootstrap_steps, len(stream.steps))
    result = {
        "run_id": run_id,
        "created_at": utc_now(),
        "wall_seconds": time.perf_counter() - started,
        "config": _config_record(config),
        "stream": {
            "steps": len(stream.steps),
            "rows": [len(s) for s in stream.steps],
            "segments": [dataclasses.asdict(s) for s in stream.segments],
            "states": stream.states,
        },
        "events": events,
        "bootstrap_seconds": bootstrap_seconds,
        "policies": [
            {
                "label": p.label,
                **dataclasses.asdict(p),
                "steps": rows,
                "summary": summarize(rows, events, len(stream.steps)),
            }
            for p, rows in runs
        ],
    }
    write_outputs(store, result)
    return result


def _open_stream(store: Store, config: SimulateConfig, work: Workspace) -> Stream:
    if config.dataset:
        return load_stream(store, config.dataset, work)
    steps, segments = SCENARIOS[config.scenario]
    seed_stream(work.store, "seeded", steps, segments, seed=config.seed)
    return load_stream(work.store, "seeded", work)


def _config_record(config: SimulateConfig) -> dict:
    record = dataclasses.asdict(config)
    record["scenario"] = "" if config.dataset else config.scenario
    return record


# --- outputs --------------------------------------------------------------------------------------
TABLE_COLUMNS = (
    "policy",
    "mean_acc",
    "retrains",
    "deployed",
    "train_examples",
    "train_s",
    "retrain_s",
    "recovery",
    "false",
    "missed",
)


def table_rows(result: dict) -> list[dict]:
    rows = []
    for policy in result["policies"]:
        s = policy["summary"]
        recovery = ", ".join(f"{k}: {'-' if v is None else v}" for k, v in s["recovery"].items()) or "n/a"
        rows.append(
            {
                "policy": policy["label"],
                "mean_acc": f"{s['mean_accuracy']:.3f}",
                "retrains": s["retrains"],
                "deployed": s["deployed"],
                "train_examples": s["train_examples"],
                "train_s": f"{s['train_seconds']:.1f}",
                "retrain_s": f"{s['retrain_seconds']:.1f}",
                "recovery": recovery,
                "false": s.get("false_triggers", "n/a"),
                "missed": s.get("missed_triggers", "n/a"),
            }
        )
    return rows


def markdown_table(result: dict) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in TABLE_COLUMNS) + " |" for row in table_rows(result)]
    return "\n".join(lines) + "\n"


def csv_table(result: dict) -> str:
    sink = io.StringIO()
    writer = csv.DictWriter(sink, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(table_rows(result))
    return sink.getvalue()


def plot_png(result: dict) -> bytes:
    """Accuracy per step per policy; filled markers = retrain deployed, hollow = retrain rejected;
    shaded spans = the stream's shifts (darker as they strengthen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    steps = result["stream"]["steps"]
    for segment, color in zip(result["stream"]["segments"], ("tab:orange", "tab:purple", "tab:gray", "tab:olive")):
        shift = Segment(**segment)
        for step in range(steps):
            if shift.strength_at(step) > 0:
                ax.axvspan(step - 0.5, step + 0.5, color=color, alpha=0.06 + 0.12 * shift.strength_at(step), lw=0)
        ax.annotate(
            f"{shift.shift} from {shift.start}",
            (shift.start - 0.45, 0.02),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color=color,
        )
    for policy in result["policies"]:
        xs = [r["step"] for r in policy["steps"]]
        (line,) = ax.plot(
            xs,
            [r["accuracy"] for r in policy["steps"]],
            marker=".",
            lw=1.6,
            label=f"{policy['label']} (mean {policy['summary']['mean_accuracy']:.3f}, "
            f"{policy['summary']['retrains']} retrains)",
        )
        for r in policy["steps"]:
            if r["retrain"]:
                ax.plot(
                    r["step"],
                    r["accuracy"],
                    "o",
                    ms=8,
                    color=line.get_color(),
                    mfc=line.get_color() if r["retrain"]["deployed"] else "none",
                )
    ax.set(
        xlim=(result["config"]["bootstrap_steps"] - 0.5, steps - 0.5),
        xlabel="step (batch)",
        ylabel="prequential accuracy (batch scored before training on it)",
        title="ctp simulate: retraining policies on one stream",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    sink = io.BytesIO()
    fig.savefig(sink, format="png")
    plt.close(fig)
    return sink.getvalue()


def write_outputs(store: Store, result: dict) -> None:
    prefix = f"runs/{result['run_id']}/"
    store.put_bytes(prefix + "plot.png", plot_png(result))
    store.put_bytes(prefix + "table.md", markdown_table(result).encode())
    store.put_bytes(prefix + "table.csv", csv_table(result).encode())
    store.put_json(prefix + "result.json", result)  # last: its presence means the run is complete
