"""Continual-learning policies: shrink-and-perturb, validation carved by stable hash, early stopping,
and what the run records about them (meta feeds the model card)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from components._shared.cluster import ClusterSettings
from components._shared.errors import ConfigError
from components._shared.model.network import build_model
from components._shared.snapshot import Split
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.train.config import TrainConfig
from components.train.core import PERTURB, SHRINK, carve_validation, initial_weights, shrink_perturb
from tests.helpers import train_in_process


def test_shrink_perturb_scales_the_weights_and_adds_fresh_init_noise():
    torch.manual_seed(0)
    model = build_model("small_cnn", [8, 8, 1], 10)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    shrink_perturb(model)
    torch.manual_seed(1)
    fresh = build_model("small_cnn", [8, 8, 1], 10)  # the same draws reset_parameters makes
    for old, new, noise in zip(before, model.parameters(), fresh.parameters()):
        assert torch.allclose(new, SHRINK * old + PERTURB * noise, atol=1e-6)


def test_warm_start_with_shrink_perturb_is_recorded_for_the_card(tmp_path):
    champion = build_model("small_cnn", [8, 8, 1], 10)
    save_file(champion.state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "meta.json").write_text(json.dumps({"arch": "small_cnn", "image_shape": [8, 8, 1]}))
    config = TrainConfig(store_uri="s", fingerprint="f", out_dir="o", shrink_perturb=True, checkpoint_every=0)
    model = build_model("small_cnn", [8, 8, 1], 10)
    applied = initial_weights(
        model, config, "small_cnn", [8, 8, 1], str(tmp_path / "w.safetensors"), str(tmp_path / "meta.json")
    )
    assert applied == {
        "policy": "auto",
        "applied": "warm",
        "grown_classes": 0,
        "shrink_perturb": {"shrink": SHRINK, "perturb": PERTURB},
    }
    weight = model.classifier.weight
    assert not torch.allclose(weight, champion.classifier.weight)
    assert weight.norm() < champion.classifier.weight.norm()


def test_validation_is_carved_from_train_by_a_stable_hash():
    ids = [f"digits-0000-{i:05d}" for i in range(2000)]
    split = Split(np.zeros((2000, 8, 8, 1), np.uint8), np.arange(2000) % 10, ids, ["0000"] * 2000)
    train, val = carve_validation(split, 0.1)
    assert set(train.ids).isdisjoint(val.ids) and len(train) + len(val) == 2000
    assert 150 < len(val) < 250
    _, again = carve_validation(Split(split.images[::-1], split.labels[::-1], ids[::-1], split.batches), 0.1)
    assert sorted(again.ids) == sorted(val.ids)  # membership depends on the id only


def test_early_stopping_keeps_the_best_epoch_and_records_it(seeded_store, tmp_path):
    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    meta = train_in_process(seeded_store, fingerprint, tmp_path / "m", epochs=12, patience=1, lr=0.01)
    stopping, history = meta["early_stopping"], meta["history"]
    val = [h["val_accuracy"] for h in history]
    assert stopping["best_epoch"] == 1 + int(np.argmax(val))
    assert stopping["best_val_accuracy"] == max(val)
    assert stopping["stopped_early"] and len(history) == stopping["best_epoch"] + 1 < 12
    assert 0 < meta["init"]["val_accuracy_before"] < stopping["best_val_accuracy"]
    assert meta["train_rows"] + stopping["val_rows"] == ingest(seeded_store, IngestConfig()).rows["train"]


def test_multi_node_without_a_cluster_fails_with_one_clear_line(seeded_store, tmp_path, monkeypatch):
    from components.train.ddp import train_from_champion
    from components.train.trainjob import TrainJobError

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(TrainJobError) as err:
        train_from_champion(
            seeded_store,
            seeded_store.uri,
            "digits",
            "f",
            str(tmp_path / "out"),
            run_id="r1",
            nproc_per_node=1,
            num_nodes=2,
            cluster=ClusterSettings(nodes=2),
        )
    assert err.value.code == "NO_CLUSTER" and "num_nodes=1" in err.value.hint
    assert seeded_store.get_json("runs/r1/train/config.json")["output_prefix"] == "runs/r1/train/output/"


@pytest.mark.parametrize("compiled, run", [(1, 2), (4, 1)])
def test_a_run_whose_node_count_does_not_match_the_compiled_train_task_is_refused(compiled, run):
    """A single training pod holds the GPUs; a multi-node launcher holds none and must not train."""
    with pytest.raises(ConfigError, match=f"compiled for {compiled} training node") as err:
        ClusterSettings(nodes=compiled).check_nodes(run)
    assert "ctp compile --nodes" in err.value.hint
    ClusterSettings(nodes=compiled).check_nodes(compiled)  # a matching run passes


def test_distillation_is_kl_to_the_teacher_on_the_rows_it_gets_right_only():
    from components.train.core import distillation_loss

    torch.manual_seed(0)
    teacher = torch.randn(6, 4)
    y = teacher.argmax(1).clone()
    y[3:] = (y[3:] + 1) % 4  # the teacher is wrong on rows 3..5
    assert distillation_loss(teacher.clone(), teacher, y, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = teacher.clone()
    student[3:] = torch.randn(3, 4) * 5  # where the teacher is wrong, the student is free
    assert distillation_loss(student, teacher, y, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student[0] = torch.tensor([5.0, -5.0, 5.0, -5.0])
    assert distillation_loss(student, teacher, y, 2.0).item() > 0.01
    assert distillation_loss(student, teacher, (teacher.argmax(1) + 1) % 4, 2.0).item() == 0.0  # all wrong


@pytest.mark.parametrize(
    "settings", [{"distill": -0.1}, {"distill_temperature": 0.0}, {"distill": 0.1, "shrink_perturb": True}]
)
def test_distill_settings_are_checked(settings):
    from components._shared.errors import ConfigError

    with pytest.raises(ConfigError):
        TrainConfig(store_uri="s", fingerprint="f", out_dir="o", checkpoint_every=0, **settings)


def test_distillation_applies_to_warm_starts_and_is_recorded(seeded_store, tmp_path):
    from components._shared.model.files import META_FILE, WEIGHTS_FILE

    fingerprint = ingest(seeded_store, IngestConfig()).fingerprint
    train_in_process(seeded_store, fingerprint, tmp_path / "champion", epochs=1)
    warm = {
        "init_weights": str(tmp_path / "champion" / WEIGHTS_FILE),
        "init_meta": str(tmp_path / "champion" / META_FILE),
    }
    distilled = train_in_process(seeded_store, fingerprint, tmp_path / "warm", epochs=1, distill=0.5, **warm)
    plain = train_in_process(seeded_store, fingerprint, tmp_path / "plain", epochs=1, **warm)
    scratch = train_in_process(seeded_store, fingerprint, tmp_path / "scratch", epochs=1, distill=0.5, init="scratch")
    assert distilled["init"]["distill"] == {"weight": 0.5, "temperature": 2.0}
    assert "distill" not in plain["init"] and "distill" not in scratch["init"]  # no champion to distil from
    assert distilled["history"][-1]["loss"] != plain["history"][-1]["loss"]  # the term is in the loss
