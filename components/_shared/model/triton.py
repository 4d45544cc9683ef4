"""Triton's model repository for one model version: what KServe's stock ONNX runtime loads.

KServe serves ``modelFormat: onnx`` with Triton (the ``kserve-tritonserver``
ClusterServingRuntime runs ``tritonserver --model-store=/mnt/models``), and the storage URI's
contents are downloaded to ``/mnt/models``. Triton wants ``<model>/<version>/model.onnx`` with
an optional ``<model>/config.pbtxt`` (Triton docs/user_guide/model_repository.md, "ONNX
Models"). The config is written out, not left to Triton's auto-complete, so what is served is
stated and reviewed: name (must match the directory), platform ``onnxruntime_onnx``,
``max_batch_size`` and every input and output with its data type and per-example dims
(docs/user_guide/model_configuration.md). It is generated from the ONNX graph itself, so it
cannot drift from the exported model.

A version folder in the registry then holds ``triton/<model>/1/model.onnx`` and
``triton/<model>/config.pbtxt``, and the InferenceService's storage URI is its ``triton/`` folder.
"""

from __future__ import annotations

from pathlib import Path

from components._shared.errors import CtpError
from components._shared.model.files import ONNX_FILE

REPOSITORY_DIR = "triton"  # inside a registry version: the model repository root KServe downloads
TRITON_VERSION = "1"  # Triton's numeric version folder; the registry version is the storage URI
CONFIG_FILE = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
MAX_BATCH_SIZE = 1024  # the batch onnx_probabilities runs; the export allows up to 65,536
# ONNX TensorProto.DataType -> Triton data type (model_configuration.md "Datatypes" table)
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}
_TRITON_TYPES.update({10: "TYPE_FP16", 11: "TYPE_FP64"})


def onnx_key(model: str) -> str:
    return f"{REPOSITORY_DIR}/{model}/{TRITON_VERSION}/{ONNX_FILE}"


def config_key(model: str) -> str:
    return f"{REPOSITORY_DIR}/{model}/{CONFIG_FILE}"


def _unservable(onnx_path: Path, why: str) -> CtpError:
    return CtpError(
        f"{onnx_path.name}: {why}; Triton cannot batch it",
        code="MODEL_NOT_SERVABLE",
        hint="export with a dynamic first (batch) axis and fixed other axes (model/network.py export_onnx)",
    )


def tensors(onnx_path: Path) -> dict[str, list[tuple[str, str, list[int]]]]:
    """The graph's inputs and outputs as (name, Triton data type, dims without the batch axis)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    found = {}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        found[kind] = []
        for value in values:
            if value.name in initializers:  # old exporters list weights as graph inputs
                continue
            tensor = value.type.tensor_type
            dims = list(tensor.shape.dim)
            if not dims or dims[0].HasField("dim_value"):
                raise _unservable(onnx_path, f"{kind} {value.name!r} has no dynamic batch axis")
            if any(not d.HasField("dim_value") for d in dims[1:]):
                raise _unservable(onnx_path, f"{kind} {value.name!r} has a dynamic axis besides the batch")
            if tensor.elem_type not in _TRITON_TYPES:
                raise _unservable(onnx_path, f"{kind} {value.name!r} has ONNX data type {tensor.elem_type}")
            found[kind].append((value.name, _TRITON_TYPES[tensor.elem_type], [d.dim_value for d in dims[1:]]))
    return found


def config_pbtxt(model: str, onnx_path: Path, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """Triton's model configuration (protobuf text format) for the ONNX file."""
    lines = [f'name: "{model}"', f'platform: "{PLATFORM}"', f"max_batch_size: {max_batch_size}"]
    for kind, entries in tensors(onnx_path).items():
        lines.append(f"{kind} [")
        body = [
            f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
            for name, dtype, dims in entries
        ]
        lines.append(",\n".join(body))
        lines.append("]")
    lines.append("dynamic_batching { }  # single requests are batched by the server, no added delay")
    return "\n".join(lines) + "\n"


def repository(model: str, onnx_path: Path, workdir: Path) -> dict[str, Path]:
    """The Triton files of a version, as registry names -> local files (the config is written
    into ``workdir``; the model file is the ONNX file itself)."""
    config = workdir / CONFIG_FILE
    config.write_text(config_pbtxt(model, onnx_path))
    return {onnx_key(model): onnx_path, config_key(model): config}
