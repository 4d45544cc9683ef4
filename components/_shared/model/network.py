"""The network in PyTorch: architectures, the input tensor, embeddings, loading and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from components._shared.errors import ConfigError
from components._shared.model.files import META_FILE, WEIGHTS_FILE
from components._shared.model.inputs import to_array


class SmallCNN(nn.Module):
    """Two conv layers and a classifier: enough for 8x8 digits, trains in seconds on a CPU."""

    def __init__(self, in_channels: int, num_classes: int, side: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (side // 2) ** 2, 128),
            nn.ReLU(),
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


def load_model(meta: dict, weights: bytes) -> nn.Module:
    """The network described by a model's meta.json, with its safetensors weights, in eval mode."""
    from safetensors.torch import load

    model = build_model(meta["arch"], meta["image_shape"], meta["num_classes"])
    model.load_state_dict(load(weights))
    return model.eval()


def load_model_dir(model_dir: Path) -> nn.Module:
    """The model in a folder of its files (a train output or a fetched version)."""
    return load_model(json.loads((model_dir / META_FILE).read_text()), (model_dir / WEIGHTS_FILE).read_bytes())


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in 0..1 (inputs.to_array, as a tensor)."""
    return torch.from_numpy(to_array(images))


def encoder(model: nn.Module) -> nn.Module:
    """The model up to its penultimate layer: the representation drift is decided on."""
    if isinstance(model, SmallCNN):
        return model.features
    return nn.Sequential(*list(model.children())[:-1], nn.Flatten())  # ResNet: all but the classifier


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, D) float32 penultimate-layer embeddings (model in eval mode)."""
    net = encoder(model).eval()
    pieces = [net(to_tensor(images[start : start + batch])).numpy() for start in range(0, len(images), batch)]
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros((0, 0), np.float32)


def export_onnx(model: nn.Module, image_shape: list[int], path: Path) -> None:
    """Export with a dynamic batch axis: input 'input' (N, C, H, W) float 0..1, output 'logits'."""
    h, w, c = image_shape
    example = torch.zeros(2, c, h, w)
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
