"""Train step settings: the one place their defaults are written (stdlib only, no torch)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from components._shared.errors import ConfigError

INIT_POLICIES = ("auto", "warm", "scratch")
SHUFFLE_ROWS = 4096  # rows per shuffle window; memory ~ (window + one row group) x bytes per image


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    store_uri: str
    fingerprint: str
    out_dir: str
    epochs: int = 10
    batch_size: int = 64  # global: split across ranks
    lr: float = 2e-3
    seed: int = 0
    init: str = "auto"
    init_weights: str = ""  # champion weights (safetensors) to warm-start from, a local file
    init_meta: str = ""  # the champion's meta.json, to check compatibility
    model_name: str = "digits"  # with init_version: fetch the champion from this model's registry
    init_version: str = ""
    shrink_perturb: bool = False  # warm start only: shrink the weights and add fresh-init noise
    distill: float = 0.0  # warm start only: weight of KL to the champion's softened outputs, on the
    #                       rows the champion classifies correctly (mostly the replayed old data); 0 = off
    distill_temperature: float = 2.0
    patience: int = 0  # early stopping after this many epochs without validation gain; 0 = off
    val_fraction: float = 0.1  # carved from train by a stable hash of the id, when patience > 0
    run_id: str = ""  # names checkpoints/<run-id>/; a restarted worker resumes from there
    checkpoint_every: int = 50  # optimizer steps between checkpoints (needs run_id); 0 = none
    keep_checkpoints: int = 2  # newest complete checkpoints kept; 0 = all
    # DataLoader worker processes per rank that read, decode and augment the snapshot; 0 = in the loop.
    # 2, by bench_loader (docs/benchmarks.md, "Training input pipeline"): in the loop, reading and
    # decoding stop the step (a GPU idles while its rank decodes; one core decodes ~1,400 224x224
    # JPEGs/s, a GPU trains ResNet-18 faster); in workers they overlap it, and 2 workers gave 1.4-1.7x
    # one. A 2-rank GPU node then runs 2 trainers + 4 workers, within its usual 8+ vCPUs. Costs:
    # 0.1-0.2 s per epoch to start the workers, batches in flight in /dev/shm; the digits demo
    # (10 epochs, 2-core CPU) was not slower with 2 than with 0.
    loader_workers: int = 2
    shuffle_rows: int = SHUFFLE_ROWS  # rows shuffled together; memory ~ (this + one row group) x image bytes
    # Augmentation in the loader, per image, seeded (stream.Augment). Off by default: digits and text
    # are not mirror-symmetric. For photos: flip on, crop_pad ~ 1/8 of the side (the CIFAR recipe: 4 at 32).
    flip: bool = False  # mirror left-right with probability 1/2
    crop_pad: int = 0  # random crop of the image zero-padded by this many pixels per side; 0 = off
    output_prefix: str = ""  # also upload the outputs to the store here (multi-node pods)

    def __post_init__(self):
        if self.init not in INIT_POLICIES:
            raise ConfigError(f"init policy {self.init!r} unknown", hint=f"use one of {', '.join(INIT_POLICIES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0 or self.patience < 0 or self.loader_workers < 0:
            raise ConfigError("checkpoint_every, keep_checkpoints, patience and loader_workers must be >= 0")
        if self.crop_pad < 0:
            raise ConfigError(f"crop_pad {self.crop_pad} must be >= 0", hint="0 turns the random crop off")
        if self.shuffle_rows < 1:
            raise ConfigError(f"shuffle_rows {self.shuffle_rows} must be >= 1")
        if self.checkpoint_every and not self.run_id:
            raise ConfigError(
                "checkpoint_every needs a run_id to name checkpoints/<run-id>/",
                hint="pass run_id, or checkpoint_every=0 for no checkpoints",
            )
        if self.distill < 0 or self.distill_temperature <= 0:
            raise ConfigError("distill must be >= 0 and distill_temperature > 0")
        if self.distill and self.shrink_perturb:
            raise ConfigError("distill and shrink_perturb do not combine: the teacher is the unperturbed champion")
        if self.patience and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction {self.val_fraction} must be between 0 and 1")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls(**json.loads(Path(path).read_text()))
