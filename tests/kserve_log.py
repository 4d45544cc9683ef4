"""Raw inference-log objects exactly as KServe's blob-storage payload logger writes them.

Sources (kserve/kserve, read with `git show <tag>:<path>`):
- v0.17.0 pkg/logger/types.go: ``LogRequest`` and its JSON tags (url, bytes, contentType, reqType,
  id, sourceUri, inferenceService, namespace, component, endpoint, metadata, annotations,
  certName, tlsSkipVerify, occurrenceTime); v0.16.0 has the same struct without tags (Go names).
- v0.17.0 pkg/logger/marshaller_json.go: one record -> the object itself, several -> an array;
  ``Bytes *[]byte`` is base64 in JSON (encoding/json), ``Url *url.URL`` a struct of its fields.
- v0.17.0 pkg/logger/store.go ``getObjectPrefix``/``getObjectKey``: ``<url path>/<namespace>/
  <inferenceService>/<component>[/<storage.path>]/<id>-<request|response>.<ext>``.
- v0.17.0 pkg/logger/worker.go: reqType ``org.kubeflow.serving.inference.request``/``.response``;
  pkg/logger/handler.go: request and response share the id (``Ce-Id`` header or a new uuid),
  the response is logged only for HTTP 200.
- v0.17.0 docs/predict-api/v2/required_api.md: the v2 request ``{"inputs": [{"name", "shape",
  "datatype", "data"}]}`` and response ``{"model_name", "model_version", "outputs": [...]}``
  (Triton's HTTP JSON, the stock ONNX runtime's protocol).
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import numpy as np

from components._shared.model.inputs import to_array
from pipelines.inference_log import REQUEST_TYPE, RESPONSE_TYPE


def v2_request(images: np.ndarray) -> dict:
    tensor = to_array(images)  # what the client sends the served ONNX model: N,C,H,W float32 in 0..1
    return {
        "inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "FP32", "data": tensor.ravel().tolist()}]
    }


def v2_response(logits: np.ndarray) -> dict:
    return {
        "model_name": "digits",
        "model_version": "1",
        "outputs": [
            {"name": "logits", "shape": list(logits.shape), "datatype": "FP32", "data": logits.ravel().tolist()}
        ],
    }


def _go_url(scheme: str, host: str, path: str) -> dict:
    return {
        "Scheme": scheme,
        "Opaque": "",
        "User": None,
        "Host": host,
        "Path": path,
        "RawPath": "",
        "OmitHost": False,
        "ForceQuery": False,
        "RawQuery": "",
        "Fragment": "",
        "RawFragment": "",
    }


def log_record(
    event_id: str,
    kind: str,
    payload: dict,
    *,
    version: str = "v1",
    endpoint: str = "default",
    isvc: str = "digits",
    namespace: str = "ctp",
    when: dt.datetime | None = None,
) -> dict:
    body = json.dumps(payload).encode()
    return {
        "url": _go_url("s3", "ctp", "/inference-log"),
        "bytes": base64.b64encode(body).decode(),
        "contentType": "application/json",
        "reqType": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "id": event_id,
        "sourceUri": _go_url("", "", f"{isvc}-predictor-00001-deployment-abc"),
        "inferenceService": isvc,
        "namespace": namespace,
        "component": "predictor",
        "endpoint": endpoint,
        "metadata": {},
        **({"annotations": {"ctp.dev/version": version}} if version else {}),
        "tlsSkipVerify": False,
        "occurrenceTime": (when or dt.datetime.now(dt.UTC)).isoformat().replace("+00:00", "Z"),
    }


def raw_key(event_id: str, kind: str, *, isvc: str = "digits", namespace: str = "ctp") -> str:
    return f"inference-log/{namespace}/{isvc}/predictor/{event_id}-{kind}.json"


def logged_inference(event_id: str, image: np.ndarray, logits: np.ndarray, **kw) -> dict[str, bytes]:
    """Raw key -> object bytes for one inference (one image), request and response."""
    return {
        raw_key(event_id, "request"): json.dumps(
            log_record(event_id, "request", v2_request(image[None]), **kw)
        ).encode(),
        raw_key(event_id, "response"): json.dumps(
            log_record(event_id, "response", v2_response(logits[None]), **kw)
        ).encode(),
    }
