"""Train: the model, the (optionally distributed) training loop, warm start, and export.

The loop runs the same in one process and under torchrun: ``train(config)`` reads the rank
from the environment; only global rank 0 writes outputs and checkpoints. The data streams from
the snapshot (stream.py), so memory does not grow with the dataset. Every
``checkpoint_every`` steps the full state goes to ``checkpoints/<run-id>/step-<n>/``
(checkpoint.py); a (re)started run resumes from the newest complete one and continues exactly
as if never stopped (same batches, same RNG). Continual learning: ``init`` scratch / warm / auto
(a new class grows the head), optional shrink-and-perturb, early stopping on a validation split.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from components._shared.cluster import GPUS_REQUESTED_ENV  # GPUs this pod asked for (set on the cluster)
from components._shared.dataset import decode_images
from components._shared.errors import ConfigError, CtpError, IntegrityError
from components._shared.model.files import EMBEDDING_FILE, META_FILE, ONNX_FILE, REFERENCE_FILE, WEIGHTS_FILE
from components._shared.model.inputs import pixel_features
from components._shared.model.network import architecture_for, build_model, embed, export_onnx, to_tensor
from components._shared.snapshot import CORRUPT_HINT, Split, SplitFile, read_manifest, split_key, verify_split
from components._shared.store import open_store
from components.train import checkpoint
from components.train.config import TrainConfig
from components.train.faults import FaultPlan
from components.train.stream import Augment, TrainStream, batch_loader, validation_mask

REFERENCE_ROWS = 1000
SHRINK, PERTURB = 0.4, 0.1  # shrink-and-perturb factors from Ash & Adams (2020)


@dataclasses.dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str


def require_cuda_if_requested() -> None:
    """A pod that asked for GPUs must not silently train with gloo on CPU while holding them."""
    requested = int(os.environ.get(GPUS_REQUESTED_ENV) or 0)
    if requested > 0 and not torch.cuda.is_available():
        built = torch.version.cuda
        raise CtpError(
            f"{requested} GPU(s) requested but CUDA is not usable in this pod",
            code="CUDA_UNAVAILABLE",
            hint=(
                f"this torch is built for CUDA {built}: the node needs an NVIDIA driver that supports CUDA {built} "
                "and the pod a GPU (nvidia.com/gpu limit, device plugin)"
                if built
                else "this torch is a CPU-only build: run the trainer image (CUDA build of torch)"
            ),
        )


def setup_distributed() -> DistInfo:
    """Join the process group when launched by torchrun; a plain run is a world of one."""
    require_cuda_if_requested()
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


def initial_weights(
    model: nn.Module, config: TrainConfig, arch: str, image_shape: list[int], weights: str, meta_path: str
) -> dict:
    """Apply the init policy to ``model`` from the champion's files; returns what was done."""
    if config.init == "scratch" or not weights:
        if config.init == "warm":
            raise ConfigError("init=warm but there is no champion to start from", hint="use init=auto")
        return {
            "policy": config.init,
            "applied": "scratch",
            "reason": "requested" if config.init == "scratch" else "no champion",
        }
    from safetensors.torch import load_file

    meta = json.loads(Path(meta_path).read_text())
    if meta["arch"] != arch or list(meta["image_shape"]) != list(image_shape):
        if config.init == "warm":
            raise ConfigError("init=warm but the champion's architecture or image shape differs")
        return {"policy": config.init, "applied": "scratch", "reason": "champion incompatible"}
    state = load_file(weights)
    own = model.state_dict()
    grown = _grow_head(state, own)
    model.load_state_dict(state)
    applied = {"policy": config.init, "applied": "warm", "grown_classes": grown}
    if config.shrink_perturb:
        applied["shrink_perturb"] = shrink_perturb(model)
    return applied


def shrink_perturb(model: nn.Module, shrink: float = SHRINK, perturb: float = PERTURB) -> dict:
    """Ash & Adams (2020): theta <- shrink * theta + perturb * theta_fresh_init. A warm start keeps
    what it knew but regains the plasticity that plain fine-tuning loses."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    with torch.no_grad():
        for param, noise in zip(model.parameters(), fresh.parameters(), strict=True):
            param.mul_(shrink).add_(noise, alpha=perturb)
    return {"shrink": shrink, "perturb": perturb}


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


def carve_validation(split: Split, fraction: float) -> tuple[Split, Split]:
    """(train, validation) of an in-memory split, by the rule the training stream applies."""
    is_val = validation_mask(split.ids, fraction)
    return split.where(~is_val), split.where(is_val)


@dataclasses.dataclass
class Progress:
    """Where training is: everything beyond tensors that a checkpoint must carry to resume exactly."""

    step: int = 0
    epoch_loss: float = 0.0
    epoch_seen: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0  # optimizer steps only (no checkpoint or validation time)
    history: list = dataclasses.field(default_factory=list)
    best_val: float = -1.0
    best_epoch: int = 0
    stopped_early: bool = False


def train(config: TrainConfig) -> dict | None:
    """Train on the snapshot's train split; rank 0 writes outputs and returns the summary."""
    info = setup_distributed()
    torch.manual_seed(config.seed)
    store = open_store(config.store_uri)
    manifest = read_manifest(store, config.fingerprint)
    image_shape = list(manifest["image_shape"])
    if config.crop_pad >= min(image_shape[:2]):
        raise ConfigError(
            f"crop_pad {config.crop_pad} is not smaller than the images' side ({image_shape[0]}x{image_shape[1]})",
            hint="use about 1/8 of the side, or 0 for no random crop",
        )
    _verify_train_split(store, config.fingerprint, manifest, info)
    stream = TrainStream(
        store,
        config.fingerprint,
        batch_size=max(1, config.batch_size // info.world_size),
        world_size=info.world_size,
        rank=info.rank,
        seed=config.seed,
        val_fraction=config.val_fraction if config.patience else 0.0,
        shuffle_rows=config.shuffle_rows,
        augment=Augment(config.flip, config.crop_pad),
    )
    val_split = stream.validation
    arch = architecture_for(image_shape)
    with tempfile.TemporaryDirectory() as tmp:
        weights, meta_path = _champion_files(store, config, Path(tmp))
        classes = sorted(set(manifest["classes"]) | set(_champion_classes(config, meta_path)))
        model = build_model(arch, image_shape, max(classes) + 1)
        init = initial_weights(model, config, arch, image_shape, weights, meta_path)
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if val_split is not None:
        init["val_accuracy_before"] = _accuracy(model, val_split, device, info)
    teacher = None
    if config.distill and init["applied"] == "warm":
        teacher = _teacher(model)
        init["distill"] = {"weight": config.distill, "temperature": config.distill_temperature}
    loop = _Loop(model, stream, config, info, device, store, teacher)
    progress = loop.run(FaultPlan.from_env(os.environ))
    if info.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    if info.rank != 0:
        return None
    meta = {
        "arch": arch,
        "image_shape": image_shape,
        "num_classes": max(classes) + 1,
        "classes": classes,
        "init": init,
        "history": progress.history,
        "world_size": info.world_size,
        "backend": info.backend,
        "amp": device.type == "cuda",
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "augment": {"flip": config.flip, "crop_pad": config.crop_pad},
        "fingerprint": config.fingerprint,
        "train_rows": stream.rows,
        "train_seconds": progress.train_seconds,
        "steps": progress.step,
        "early_stopping": loop.early_stopping_summary(progress),
        "checkpoints": loop.checkpoint_summary(),
    }
    write_outputs(
        model.cpu().eval(),
        stream.sample_images(REFERENCE_ROWS, config.seed),
        held_out_sample(store, config.fingerprint, manifest, REFERENCE_ROWS, config.seed),
        meta,
        Path(config.out_dir),
    )
    if config.output_prefix:
        upload_outputs(store, Path(config.out_dir), config.output_prefix)
    return meta


def _verify_train_split(store, fingerprint: str, manifest: dict, info: DistInfo) -> None:
    """Rank 0 hashes the split (one streaming pass, not one per rank) and every rank learns the
    verdict, so all of them stop together before training on corrupt data."""
    failure = None
    if info.rank == 0:
        try:
            verify_split(store, fingerprint, "train", manifest)
        except IntegrityError as err:
            failure = err
    if info.world_size > 1:
        device = torch.device(f"cuda:{info.local_rank}" if info.backend == "nccl" else "cpu")  # nccl: CUDA only
        corrupt = torch.tensor([failure is not None], dtype=torch.uint8, device=device)
        dist.broadcast(corrupt, src=0)
        if corrupt.item() and failure is None:
            failure = IntegrityError(
                f"{store.describe(split_key(fingerprint, 'train'))} does not match its "
                "manifest checksum (found by rank 0)",
                hint=CORRUPT_HINT,
            )
    if failure is not None:
        raise failure


def _champion_files(store, config: TrainConfig, tmp: Path) -> tuple[str, str]:
    """Local paths of the champion's weights and meta: given, fetched from the registry, or none."""
    if config.init == "scratch" or not (config.init_weights or config.init_version):
        return "", ""
    if config.init_weights:
        return config.init_weights, config.init_meta
    from components._shared.registry import Registry

    registry = Registry(store, config.model_name)
    return (
        str(registry.fetch(config.init_version, WEIGHTS_FILE, tmp / WEIGHTS_FILE)),
        str(registry.fetch(config.init_version, META_FILE, tmp / META_FILE)),
    )


def _champion_classes(config: TrainConfig, meta_path: str) -> list[int]:
    if config.init == "scratch" or not meta_path:
        return []
    return json.loads(Path(meta_path).read_text()).get("classes", [])


def _teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of the warm-started model (the champion) to distil from."""
    teacher = copy.deepcopy(model).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Learning without forgetting, gated: KL(teacher || student) at ``temperature`` (times T^2),
    on the rows the teacher gets right, averaged over the batch. On replayed old rows it keeps the
    champion's function; on new rows it is silent where the champion is wrong."""
    keep = teacher_logits.argmax(1) == y
    if not keep.any():
        return logits.new_zeros(())
    t = temperature
    kl = nn.functional.kl_div(
        nn.functional.log_softmax(logits[keep].float() / t, 1),
        nn.functional.log_softmax(teacher_logits[keep].float() / t, 1),
        reduction="sum",
        log_target=True,
    )
    return kl * t * t / keep.sum()


@torch.no_grad()
def _accuracy(model: nn.Module, split: Split, device, info: DistInfo) -> float:
    """Accuracy on a held-out split; every rank computes it, rank 0's value is the one all use."""
    model.eval()
    correct = 0
    for start in range(0, len(split), 1024):
        x = to_tensor(split.images[start : start + 1024]).to(device)
        y = torch.from_numpy(split.labels[start : start + 1024]).to(device)
        correct += int((model(x).argmax(1) == y).sum())
    model.train()
    value = torch.tensor([correct / max(len(split), 1)], dtype=torch.float64, device=device)  # nccl: CUDA tensors
    if info.world_size > 1:
        dist.broadcast(value, src=0)
    return float(value.item())


class _Loop:
    """The training loop with checkpoints, resume and early stopping. AMP on CUDA only."""

    def __init__(
        self,
        model: nn.Module,
        stream: TrainStream,
        config: TrainConfig,
        info: DistInfo,
        device,
        store,
        teacher: nn.Module | None = None,
    ):
        self.model, self.stream, self.val, self.teacher = model, stream, stream.validation, teacher
        self.config, self.info, self.device, self.store = config, info, device, store
        self.net = nn.parallel.DistributedDataParallel(model) if info.world_size > 1 else model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss_fn = nn.CrossEntropyLoss()
        self.steps_per_epoch = stream.batches_per_epoch
        self.best_state: dict[str, torch.Tensor] = {}
        self.resumed_from: int | None = None

    def run(self, fault: FaultPlan | None) -> Progress:
        progress = self._resume() or Progress()
        try:
            self._epochs(progress, fault)
        finally:
            self.stream.stop_workers()  # the loader's workers live across epochs, not past the run
        if self.best_state:
            self.model.load_state_dict(self.best_state)
        return progress

    def _epochs(self, progress: Progress, fault: FaultPlan | None) -> None:
        first_epoch = progress.step // self.steps_per_epoch
        for epoch in range(first_epoch, self.config.epochs):
            if progress.stopped_early:
                break
            skip = progress.step - epoch * self.steps_per_epoch
            self.epoch_started = time.perf_counter()
            for x, y in self._batches(epoch, skip):
                self._step(x, y, progress)
                if progress.step % self.steps_per_epoch == 0:
                    self._end_epoch(progress)
                if self.config.checkpoint_every and progress.step % self.config.checkpoint_every == 0:
                    self._save(progress)
                if fault:
                    fault.after_step(progress.step, self.info.rank)

    def _batches(self, epoch: int, skip_steps: int):
        """This rank's batches of ``epoch`` in the seeded order, after the first ``skip_steps``
        (skipped inside the stream: a resumed epoch does not read what it already trained on)."""
        self.stream.set_epoch(epoch, skip_steps)
        return batch_loader(self.stream, self.config.loader_workers)

    def _step(self, x, y, progress: Progress) -> None:
        started = time.perf_counter()
        x, y = to_tensor(x).to(self.device), torch.from_numpy(y).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            logits = self.net(x)
            loss = self.loss_fn(logits, y)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                loss = loss + self.config.distill * distillation_loss(
                    logits, teacher_logits, y, self.config.distill_temperature
                )
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        progress.step += 1
        progress.epoch_loss += loss.item() * len(y)
        progress.epoch_seen += len(y)
        elapsed = time.perf_counter() - started
        progress.epoch_seconds += elapsed
        progress.train_seconds += elapsed

    def _end_epoch(self, progress: Progress) -> None:
        epoch = progress.step // self.steps_per_epoch
        entry = {
            "epoch": epoch,
            "step": progress.step,
            "loss": progress.epoch_loss / max(progress.epoch_seen, 1),
            "seconds": progress.epoch_seconds,  # in optimizer steps (compute and all-reduce)
            "wall_seconds": time.perf_counter() - self.epoch_started,  # and reading the data
            "examples_per_s": progress.epoch_seen * self.info.world_size / max(progress.epoch_seconds, 1e-9),
        }
        if self.val is not None:
            entry["val_accuracy"] = _accuracy(self.model, self.val, self.device, self.info)
            self._early_stopping(entry["val_accuracy"], epoch, progress)
        progress.history.append(entry)
        progress.epoch_loss, progress.epoch_seen, progress.epoch_seconds = 0.0, 0, 0.0
        if self.info.rank == 0:
            val = f" val_acc={entry['val_accuracy']:.4f}" if "val_accuracy" in entry else ""
            print(
                f"[train] epoch {epoch}/{self.config.epochs} step {progress.step} loss={entry['loss']:.4f}{val} "
                f"{entry['examples_per_s']:.0f} ex/s (world={self.info.world_size})",
                flush=True,
            )

    def _early_stopping(self, val_accuracy: float, epoch: int, progress: Progress) -> None:
        if val_accuracy > progress.best_val:
            progress.best_val, progress.best_epoch = val_accuracy, epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        elif epoch - progress.best_epoch >= self.config.patience:
            progress.stopped_early = True

    def _save(self, progress: Progress) -> None:
        if self.info.rank == 0:
            optimizer_tensors, optimizer_rest = checkpoint.optimizer_to_parts(self.optimizer.state_dict())
            groups = {"model": self.model.state_dict(), "optimizer": optimizer_tensors, "rng": checkpoint.rng_tensors()}
            if self.best_state:
                groups["best"] = self.best_state
            state = {
                "progress": dataclasses.asdict(progress),
                "optimizer": optimizer_rest,
                "scaler": self.scaler.state_dict(),
                "identity": self._identity(),
            }
            prefix = checkpoint.save(
                self.store, self.config.run_id, progress.step, groups, state, keep=self.config.keep_checkpoints
            )
            print(f"[train] checkpoint {self.store.describe(prefix)}", flush=True)
        if self.info.world_size > 1:
            dist.barrier()  # no rank runs ahead of a checkpoint it might have to resume from

    def _identity(self) -> dict:
        """What must match for a checkpoint to be resumed by this run."""
        c = self.config
        return {
            "fingerprint": c.fingerprint,
            "batch_size": c.batch_size,
            "lr": c.lr,
            "seed": c.seed,
            "init": c.init,
            "world_size": self.info.world_size,
            "loader_workers": c.loader_workers,
            "shuffle_rows": c.shuffle_rows,
            "flip": c.flip,
            "crop_pad": c.crop_pad,
            "distill": c.distill,
            "distill_temperature": c.distill_temperature,
        }

    def _resume(self) -> Progress | None:
        if not self.config.checkpoint_every:
            return None
        step = checkpoint.latest_step(self.store, self.config.run_id)
        if step is None:
            return None
        groups, state = checkpoint.load(self.store, self.config.run_id, step)
        if state["identity"] != self._identity():
            raise ConfigError(
                f"checkpoints/{self.config.run_id}/ belongs to a different training ({state['identity']})",
                hint="use a new run id, or delete that checkpoint folder",
            )
        self.model.load_state_dict(groups["model"])
        self.optimizer.load_state_dict(checkpoint.optimizer_from_parts(groups["optimizer"], state["optimizer"]))
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(groups["rng"])
        self.best_state = groups.get("best", {})
        self.resumed_from = step
        if self.info.rank == 0:
            print(f"[train] resumed from checkpoint step {step}", flush=True)
        return Progress(**state["progress"])

    def checkpoint_summary(self) -> dict:
        return {
            "every": self.config.checkpoint_every,
            "run_id": self.config.run_id,
            "resumed_from_step": self.resumed_from,
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        }

    def early_stopping_summary(self, progress: Progress) -> dict | None:
        if self.val is None:
            return None
        return {
            "patience": self.config.patience,
            "val_fraction": self.config.val_fraction,
            "val_rows": len(self.val),
            "best_epoch": progress.best_epoch,
            "best_val_accuracy": progress.best_val,
            "stopped_early": progress.stopped_early,
            "epochs_run": len(progress.history),
        }


def upload_outputs(store, out_dir: Path, prefix: str) -> None:
    """Every output file, meta.json last (it is the marker that the rest is there)."""
    names = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name != META_FILE)
    for name in [*names, META_FILE]:
        store.put_file(prefix + name, out_dir / name)


def held_out_sample(store, fingerprint: str, manifest: dict, size: int, seed: int) -> np.ndarray:
    """A seeded sample of the snapshot's test images: data the model never trained on, so its
    embeddings are what the model makes of unseen data from the training distribution."""
    verify_split(store, fingerprint, "test", manifest)
    with SplitFile(store, fingerprint, "test") as split:
        return decode_images(split.sample_table(size, seed))


def write_outputs(
    model: nn.Module, reference_images: np.ndarray, held_out_images: np.ndarray, meta: dict, out_dir: Path
) -> None:
    """Weights, ONNX, meta, and the drift references: pooled-pixel features of a sample of the
    training images (reference.npy) and the model's embeddings of held-out images."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    export_onnx(model, meta["image_shape"], out_dir / ONNX_FILE)
    np.save(out_dir / REFERENCE_FILE, pixel_features(reference_images), allow_pickle=False)
    np.save(out_dir / EMBEDDING_FILE, embed(model, held_out_images), allow_pickle=False)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
