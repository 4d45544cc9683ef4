"""Train: the model, the (optionally distributed) training loop, warm start, and export.

The loop runs the same in one process and under torchrun: ``train(config)`` reads the rank
from the environment; only global rank 0 writes outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from components._shared.errors import ConfigError
from components._shared.snapshot import Split, load_split, read_manifest
from components._shared.store import open_store

WEIGHTS_FILE, ONNX_FILE, META_FILE = "model.safetensors", "model.onnx", "meta.json"
INIT_POLICIES = ("auto", "warm", "scratch")
REFERENCE_ROWS = 1000


@dataclasses.dataclass
class TrainConfig:
    store_uri: str
    fingerprint: str
    out_dir: str
    epochs: int = 5
    batch_size: int = 64  # global: split across ranks
    lr: float = 2e-3
    seed: int = 0
    init: str = "auto"
    init_weights: str = ""  # champion weights (safetensors) to warm-start from
    init_meta: str = ""  # the champion's meta.json, to check compatibility

    def __post_init__(self):
        if self.init not in INIT_POLICIES:
            raise ConfigError(f"init policy {self.init!r} unknown", hint=f"use one of {', '.join(INIT_POLICIES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls(**json.loads(Path(path).read_text()))


class SmallCNN(nn.Module):
    """Two conv layers and a classifier: enough for 8x8 digits, trains in seconds on a CPU."""

    def __init__(self, in_channels: int, num_classes: int, side: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (side // 2) ** 2, 128), nn.ReLU(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def architecture_for(image_shape: list[int]) -> str:
    h, w, _ = image_shape
    return "small_cnn" if h == w and h <= 32 else "resnet18"


def build_model(arch: str, image_shape: list[int], num_classes: int) -> nn.Module:
    h, _, c = image_shape
    if arch == "small_cnn":
        return SmallCNN(c, num_classes, h)
    if arch == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        model.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    raise ConfigError(f"unknown architecture {arch!r}")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in 0..1: the one preprocessing, also in ONNX use."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float().div_(255.0)


@dataclasses.dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str


def setup_distributed() -> DistInfo:
    """Join the process group when launched by torchrun; a plain run is a world of one."""
    if int(os.environ.get("RANK", -1)) == -1:
        return DistInfo(0, 1, 0, "none")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def initial_weights(model: nn.Module, config: TrainConfig, arch: str, image_shape: list[int]) -> dict:
    """Apply the init policy; returns what was done, for the model card."""
    if config.init == "scratch" or not config.init_weights:
        if config.init == "warm":
            raise ConfigError("init=warm but there is no champion to start from", hint="use init=auto")
        return {"policy": config.init, "applied": "scratch", "reason": "requested" if config.init == "scratch"
                else "no champion"}
    from safetensors.torch import load_file

    meta = json.loads(Path(config.init_meta).read_text())
    if meta["arch"] != arch or list(meta["image_shape"]) != list(image_shape):
        if config.init == "warm":
            raise ConfigError("init=warm but the champion's architecture or image shape differs")
        return {"policy": config.init, "applied": "scratch", "reason": "champion incompatible"}
    state = load_file(config.init_weights)
    own = model.state_dict()
    grown = _grow_head(state, own)
    model.load_state_dict(state)
    return {"policy": config.init, "applied": "warm", "grown_classes": grown}


def _grow_head(state: dict, own: dict) -> int:
    """When new classes appear, keep the champion's rows of the classifier and add fresh ones."""
    grown = 0
    for name, tensor in own.items():
        old = state.get(name)
        if old is not None and old.shape != tensor.shape and old.shape[1:] == tensor.shape[1:]:
            merged = tensor.clone()
            merged[: old.shape[0]] = old
            state[name] = merged
            grown = tensor.shape[0] - old.shape[0]
    return grown


def _loader(split: Split, config: TrainConfig, info: DistInfo, epoch_seed: int):
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    dataset = TensorDataset(to_tensor(split.images), torch.from_numpy(split.labels))
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=epoch_seed)
    per_rank = max(1, config.batch_size // info.world_size)
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler), sampler


def train(config: TrainConfig) -> dict | None:
    """Train on the snapshot's train split; rank 0 writes outputs and returns the summary."""
    info = setup_distributed()
    torch.manual_seed(config.seed)
    store = open_store(config.store_uri)
    manifest = read_manifest(store, config.fingerprint)
    split = load_split(store, config.fingerprint, "train", manifest)
    image_shape = list(split.images.shape[1:])
    classes = sorted(set(manifest["classes"]) | set(_champion_classes(config)))
    num_classes = max(classes) + 1
    arch = architecture_for(image_shape)
    model = build_model(arch, image_shape, num_classes)
    init = initial_weights(model, config, arch, image_shape)
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    model.to(device)
    ddp_model = nn.parallel.DistributedDataParallel(model) if info.world_size > 1 else model
    history = _fit(ddp_model, split, config, info, device)
    if info.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    if info.rank != 0:
        return None
    meta = {"arch": arch, "image_shape": image_shape, "num_classes": num_classes, "classes": classes,
            "init": init, "history": history, "world_size": info.world_size, "backend": info.backend,
            "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed,
            "fingerprint": config.fingerprint, "train_rows": len(split)}
    write_outputs(model.cpu().eval(), split, meta, Path(config.out_dir))
    return meta


def _champion_classes(config: TrainConfig) -> list[int]:
    if config.init == "scratch" or not config.init_meta:
        return []
    return json.loads(Path(config.init_meta).read_text()).get("classes", [])


def _fit(model: nn.Module, split: Split, config: TrainConfig, info: DistInfo, device) -> list[dict]:
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    loader, sampler = _loader(split, config, info, config.seed)
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        started, total, seen = time.perf_counter(), 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            seen += len(y)
        seconds = time.perf_counter() - started
        entry = {"epoch": epoch + 1, "loss": total / max(seen, 1), "seconds": seconds,
                 "examples_per_s": seen * info.world_size / max(seconds, 1e-9)}
        history.append(entry)
        if info.rank == 0:
            print(f"[train] epoch {entry['epoch']}/{config.epochs} loss={entry['loss']:.4f} "
                  f"{entry['examples_per_s']:.0f} ex/s (world={info.world_size})", flush=True)
    return history


def write_outputs(model: nn.Module, split: Split, meta: dict, out_dir: Path) -> None:
    from safetensors.torch import save_file

    from components.validate_data.drift import features

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    export_onnx(model, meta["image_shape"], out_dir / ONNX_FILE)
    rng = np.random.default_rng(meta["seed"])
    sample = rng.choice(len(split), size=min(REFERENCE_ROWS, len(split)), replace=False)
    np.save(out_dir / "reference.npy", features(split.images[np.sort(sample)]), allow_pickle=False)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def export_onnx(model: nn.Module, image_shape: list[int], path: Path) -> None:
    """Export with a dynamic batch axis: input 'input' (N, C, H, W) float 0..1, output 'logits'."""
    h, w, c = image_shape
    example = torch.zeros(2, c, h, w)
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
