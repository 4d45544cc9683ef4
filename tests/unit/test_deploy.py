import json

import numpy as np
import pytest

from components._shared.model.files import META_FILE, ONNX_FILE
from components._shared.registry import CANARY, CHAMPION, PREVIOUS, Registry
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore
from components.deploy_canary.config import DeployConfig
from components.deploy_canary.core import canary_analysis, deploy


@pytest.fixture(scope="module")
def models(trained_models):
    return trained_models.root


def _card(model_dir, parent, run_id):
    meta = json.loads((model_dir / META_FILE).read_text())
    return {
        "run_id": run_id,
        "parent_version": parent,
        "data": {"classes": meta["classes"]},
        "metrics": {"accuracy": 0.0},
    }


@pytest.fixture
def store(tmp_path):
    store = LocalStore(tmp_path / "store")
    seed_digits(store, SeedConfig(batches=2))
    return store


def test_first_model_is_promoted_and_canary_cleared(store, models):
    record = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    registry = Registry(store, "digits")
    assert record["decision"] == "promote" and registry.alias(CHAMPION).version == record["version"]
    assert registry.alias(CANARY).version is None
    assert store.get_json("runs/r1/decision.json")["version"] == record["version"]


def test_agreeing_challenger_is_promoted_and_previous_kept(store, models):
    first = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    second = deploy(store, models / "good2", _card(models / "good2", first["version"], "r2"), DeployConfig())
    registry = Registry(store, "digits")
    assert second["decision"] == "promote", second
    assert second["analysis"]["agreement"] > 0.9
    assert registry.alias(CHAMPION).version == second["version"]
    assert registry.alias(PREVIOUS).version == first["version"]


def test_failed_canary_rolls_back_and_champion_stays(store, models):
    first = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    bad = deploy(store, models / "untrained", _card(models / "untrained", first["version"], "r2"), DeployConfig())
    registry = Registry(store, "digits")
    assert bad["decision"] == "rollback" and "agreement" in bad["reason"]
    assert registry.alias(CHAMPION).version == first["version"]
    assert registry.alias(CANARY).version is None
    assert bad["version"] in registry.versions()  # kept for the record, never served


def test_champion_moved_during_the_run_is_not_overwritten(store, models):
    first = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    stale = deploy(store, models / "good2", _card(models / "good2", "some-older-version", "r2"), DeployConfig())
    assert stale["decision"] == "rollback" and "moved" in stale["reason"]
    assert Registry(store, "digits").alias(CHAMPION).version == first["version"]


def test_canary_analysis_without_traffic_defers_to_the_gate(models):
    result = canary_analysis(models / "good" / ONNX_FILE, None, None, DeployConfig())
    assert result["decision"] == "promote" and result["n"] == 0


def test_canary_analysis_measures_agreement(models):
    from components._shared.sampledata import load_digits_uint8

    images, _ = load_digits_uint8()
    same = canary_analysis(models / "good" / ONNX_FILE, models / "good" / ONNX_FILE, images[:300], DeployConfig())
    assert same["agreement"] == 1.0 and same["decision"] == "promote"
    assert np.isclose(same["canary_confidence"], same["champion_confidence"])


def test_each_version_carries_a_triton_model_repository_that_matches_its_onnx_graph(store, models):
    """Triton's model repository layout is `<model>/<version>/model.onnx` with an optional
    `<model>/config.pbtxt` (triton-inference-server/server v2.34.0, the Triton in KServe v0.15.2's
    kserve-tritonserver runtime (nvcr.io/nvidia/tritonserver:23.05-py3), docs/user_guide/
    model_repository.md "ONNX Models"). The config's name must match the model directory,
    platform is "onnxruntime_onnx", and with max_batch_size > 0 the dims leave out the batch axis
    (docs/user_guide/model_configuration.md). The config is parsed with Triton's own ModelConfig
    protobuf (tritonclient's model_config_pb2) and compared with the ONNX graph as the onnx
    package reads it; the served file is byte-identical to the version's model.onnx, and the
    card lists every file with its sha256."""
    import hashlib

    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    record = deploy(store, models / "good", _card(models / "good", None, "r1"), DeployConfig())
    registry, version = Registry(store, "digits"), record["version"]
    prefix = f"models/digits/versions/{version}/"
    assert [k[len(prefix) :] for k in store.list(prefix + "triton/")] == [
        "triton/digits/1/model.onnx",
        "triton/digits/config.pbtxt",
    ]
    config = text_format.Parse(
        registry.read_verified(version, "triton/digits/config.pbtxt").decode(), model_config_pb2.ModelConfig()
    )
    served = registry.read_verified(version, "triton/digits/1/model.onnx")
    assert served == registry.read_verified(version, ONNX_FILE)
    assert (config.name, config.platform, config.max_batch_size) == ("digits", "onnxruntime_onnx", 1024)

    graph = onnx.load_from_string(served).graph
    dtype = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}
    meta = json.loads((models / "good" / META_FILE).read_text())
    h, w, c = meta["image_shape"]
    for declared, actual, dims in (
        (config.input, graph.input, [c, h, w]),
        (config.output, graph.output, [len(meta["classes"])]),
    ):
        assert [t.name for t in declared] == [t.name for t in actual]
        (one,), (graph_tensor,) = declared, actual
        shape = graph_tensor.type.tensor_type.shape.dim
        assert shape[0].dim_param and not shape[0].HasField("dim_value")  # the dynamic batch axis
        assert list(one.dims) == [d.dim_value for d in shape[1:]] == dims
        assert one.data_type == dtype[graph_tensor.type.tensor_type.elem_type] == model_config_pb2.TYPE_FP32
    assert [t.name for t in config.input] == ["input"] and [t.name for t in config.output] == ["logits"]

    card = registry.card(version)
    for name in ("triton/digits/1/model.onnx", "triton/digits/config.pbtxt"):
        assert card["files"][name] == hashlib.sha256(store.get_bytes(prefix + name)).hexdigest()


def test_a_model_triton_cannot_batch_is_refused_before_publishing(store, models, tmp_path):
    """Triton batches along a first axis of size -1 (model_configuration.md, "Maximum Batch
    Size"); a graph with a fixed batch axis gets MODEL_NOT_SERVABLE and no version appears."""
    import shutil

    import onnx

    from components._shared.errors import CtpError

    challenger = tmp_path / "fixed"
    shutil.copytree(models / "good", challenger)
    model = onnx.load(str(challenger / ONNX_FILE))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, str(challenger / ONNX_FILE))
    with pytest.raises(CtpError) as err:
        deploy(store, challenger, _card(challenger, None, "r1"), DeployConfig())
    assert err.value.code == "MODEL_NOT_SERVABLE" and "'input' has no dynamic batch axis" in err.value.message
    assert Registry(store, "digits").versions() == []
