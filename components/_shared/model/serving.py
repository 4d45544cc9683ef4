"""The exported model through onnxruntime, as it is served: no torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components._shared.model.inputs import to_array


def onnx_session(onnx_path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def onnx_probabilities(onnx_path: Path, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    session = onnx_session(onnx_path)
    logits = [
        session.run(["logits"], {"input": to_array(images[i : i + batch])})[0] for i in range(0, len(images), batch)
    ]
    return softmax(np.concatenate(logits) if logits else np.zeros((0, 1), np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
