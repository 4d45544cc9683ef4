"""Drift tests (KS decision, MMD second opinion, Chi-square on labels) on seeded digits, and the
validation report as JSON, Markdown and a PNG plot."""

import dataclasses

import numpy as np
import pytest

from components._shared.dataset import Finding
from components._shared.errors import DataValidationError
from components._shared.model.inputs import pixel_features
from components._shared.sampledata import SeedConfig, apply_shift, batch_table, load_digits_uint8, seed_digits
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.validate_data import drift
from components.validate_data.config import ValidateConfig
from components.validate_data.core import publish, raise_on_errors, report_markdown, validate
from tests.helpers import train_in_process, write_batch
from tests.unit.test_data_checks import publish_champion

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def halves():
    order = np.random.default_rng(7).permutation(1797)
    return order[:900], order[900:]


def _shifted(indices, shift):
    images, labels = load_digits_uint8()
    return apply_shift(images[indices], labels[indices], shift, 1.0, np.random.default_rng(0))


def test_same_distribution_is_not_drift(halves):
    images, _ = load_digits_uint8()
    reference, window = pixel_features(images[halves[0]]), pixel_features(images[halves[1]])
    ks = drift.ks_drift(reference, window)
    assert ks["decision"] == "no_drift" and ks["features_drifted"] == 0 and len(ks["p_vals"]) == 64
    assert drift.mmd_drift(reference, window)["decision"] == "no_drift"


@pytest.mark.parametrize("shift", ["rotation", "noise"])
def test_shifted_window_is_flagged_by_ks_and_mmd(halves, shift):
    images, _ = load_digits_uint8()
    reference, window = pixel_features(images[halves[0]]), pixel_features(_shifted(halves[1], shift)[0])
    ks = drift.ks_drift(reference, window)
    assert ks["decision"] == "drift" and ks["min_p_val"] < ks["threshold"]
    mmd = drift.mmd_drift(reference, window)
    assert mmd["decision"] == "drift" and mmd["mmd2"] > mmd["mmd2_threshold"] and mmd["n_window"] == drift.MMD_ROWS


def test_mmd_is_reproducible_with_its_seed(halves):
    images, _ = load_digits_uint8()
    reference, window = pixel_features(images[halves[0]]), pixel_features(_shifted(halves[1], "noise")[0])
    assert drift.mmd_drift(reference, window, seed=3) == drift.mmd_drift(reference, window, seed=3)


def test_label_drift_flags_a_prior_shift_only():
    # A random split of the same labels is a false alarm 5% of the time at p_val=0.05 (seed 7's
    # split is one: p=0.013); this split's chi-square p-value is 0.61.
    halves = np.split(np.random.default_rng(0).permutation(1797), [900])
    _, labels = load_digits_uint8()
    counts = lambda y: dict(zip(*np.unique(y, return_counts=True)))  # noqa: E731
    same = drift.label_drift(counts(labels[halves[0]]), counts(labels[halves[1]]))
    shifted = drift.label_drift(counts(labels[halves[0]]), counts(_shifted(halves[1], "prior")[1]))
    assert same["decision"] == "no_drift" and same["p_value"] > 0.05
    assert shifted["decision"] == "drift" and shifted["p_value"] < 0.05
    assert sum(shifted["window_share"][:5]) < 0.2 < sum(same["window_share"][:5])


def test_too_few_rows_is_insufficient_data_not_drift(halves):
    images, _ = load_digits_uint8()
    reference, few = pixel_features(images[halves[0]]), pixel_features(images[halves[1]][:5])
    for result in (
        drift.ks_drift(reference, few),
        drift.mmd_drift(reference, few),
        drift.label_drift({0: 500, 1: 400}, {0: 3, 1: 2}),
    ):
        assert result["decision"] == "insufficient_data" and result["is_drift"] is False


def test_features_of_large_rgb_images_are_pooled_to_64():
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
    assert pixel_features(images).shape == (4, 64)


@pytest.fixture(scope="module")
def rotated_run(tmp_path_factory):
    """A champion on two clean batches, then two rotated batches arrive: the whole validate step."""
    from components._shared.store import LocalStore

    tmp_path = tmp_path_factory.mktemp("drift")
    store = LocalStore(tmp_path / "store")
    seed_digits(store, SeedConfig(batches=2))
    champion = publish_champion(store, tmp_path, ingest(store, IngestConfig()).fingerprint)
    seed_digits(store, SeedConfig(batches=2, append=True, shift="rotation", seed=1))
    fingerprint = ingest(store, IngestConfig()).fingerprint
    return store, champion, validate(store, fingerprint, ValidateConfig())


def test_validate_reports_drift_of_the_new_batches_with_evidence(rotated_run):
    store, champion, result = rotated_run
    report = result.report["drift"]
    assert report["decision"] == "drift" and report["reference_version"] == champion
    assert report["representation"] == "pooled_pixels"  # a champion without weights: pixels decide
    assert report["window_batches"] == ["0002", "0003"] and report["features"]["decision"] == "drift"
    assert report["mmd_agrees"] is True and report["labels"]["decision"] == "no_drift"
    assert result.plot_png.startswith(PNG_MAGIC)
    keys = publish(store, "r-drift", result)
    assert store.get_json(keys["drift.json"]) == store.get_json(keys["validation.json"])["drift"]
    assert store.get_bytes(keys["drift.png"]) == result.plot_png


def test_markdown_names_every_finding_and_the_drift_tests(rotated_run):
    _, _, result = rotated_run
    report = {
        **result.report,
        "status": "fail",
        "findings": [
            dataclasses.asdict(Finding("LABEL_NAN", "error", "0003", "2 label(s) are NaN or Inf", 2, ["x-1", "x|2"])),
            dataclasses.asdict(Finding("DUPLICATE_ID", "warning", "0002", "1 example id(s) appeared before", 1, ["a"])),
        ],
    }
    text = report_markdown(report)
    assert text.startswith("# Data validation: FAIL")
    assert "| LABEL_NAN | error | 0003 | 2 | x-1, x\\|2 | 2 label(s) are NaN or Inf |" in text
    assert "| DUPLICATE_ID | warning | 0002 | 1 | a |" in text
    assert "## Drift: drift" in text and "| KS, 64 pooled pixels features, Bonferroni |" in text
    assert "MMD (second opinion" in text and "Chi-square on labels" in text


def test_errors_raise_one_line_naming_every_batch():
    findings = [
        Finding("LABEL_NEW_CLASS", "error", "0007", "label(s) [11] are not among the champion's classes"),
        Finding("DUPLICATE_ID", "warning", "0007", "1 example id(s) appeared before"),
        Finding("ROW_COUNT", "error", "*", "5 training rows; need at least 20"),
    ]
    with pytest.raises(DataValidationError) as err:
        raise_on_errors({"findings": [dataclasses.asdict(f) for f in findings]})
    line = err.value.one_line()
    assert err.value.code == "LABEL_NEW_CLASS" and "batch=0007" in line and "+1 more: ROW_COUNT batch=*" in line
    raise_on_errors({"findings": [dataclasses.asdict(findings[1])]})  # warnings alone do not stop the run


@pytest.fixture(scope="module")
def embedding_champion(tmp_path_factory):
    """A champion trained on half the digits and registered with its weights and its embeddings of
    held-out digits, as deploy publishes it; the other half is unseen data of the same distribution."""
    from components._shared.model.files import MODEL_FILES
    from components._shared.registry import CHAMPION, Registry
    from components._shared.snapshot import read_manifest
    from components._shared.store import LocalStore

    root = tmp_path_factory.mktemp("embedding")
    images, labels = load_digits_uint8()
    order = np.random.default_rng(7).permutation(len(labels))
    seen, unseen = order[:900], order[900:]
    store = LocalStore(root / "store")
    write_batch(store, batch_table(images[seen], labels[seen], [f"seen-{i}" for i in seen]), "0000")
    fingerprint = ingest(store, IngestConfig()).fingerprint
    train_in_process(store, fingerprint, root / "model", epochs=4)
    manifest = read_manifest(store, fingerprint)
    registry = Registry(store, "digits")
    registry.publish(
        "champion-1",
        {name: root / "model" / name for name in MODEL_FILES},
        {"data": {"batches": ["0000"], "image_shape": manifest["image_shape"], "classes": manifest["classes"]}},
    )
    registry.move_alias(CHAMPION, "champion-1", None, run_id="seed")
    return store, images[unseen], labels[unseen], unseen


@pytest.mark.parametrize(
    "shift, strength, expected", [("none", 0, "no_drift"), ("rotation", 1.0, "drift"), ("noise", 2.0, "drift")]
)
def test_drift_is_decided_on_the_champions_embedding(embedding_champion, tmp_path, shift, strength, expected):
    """Unseen digits of the training distribution are not drift (smallest p 0.017 against a
    threshold of 0.0004); rotated digits are. The embedding measures what the model sees: noise
    of std 40/255, which pooled pixels flag, moves 1 of its 128 features, so the noise case uses 80."""
    import shutil

    from components._shared.store import LocalStore

    source, images, labels, ids = embedding_champion
    store = LocalStore(tmp_path / "store")
    shutil.copytree(source.root, store.root, dirs_exist_ok=True)
    images, labels = apply_shift(images, labels, shift, strength, np.random.default_rng(0))
    write_batch(store, batch_table(images, labels, [f"new-{i}" for i in ids]), "0001")
    report = validate(store, ingest(store, IngestConfig()).fingerprint, ValidateConfig()).report["drift"]
    ks = report["features"]
    assert report["representation"] == "champion_embedding" and ks["n_features"] == 128
    assert report["window_batches"] == ["0001"] and ks["decision"] == expected
    assert "champion embedding features" in report_markdown({**_report_shell(), "drift": report})


def _report_shell() -> dict:
    return {
        "status": "pass",
        "fingerprint": "f",
        "champion": "champion-1",
        "rows": {"train": 1, "test": 1},
        "findings": [],
    }
