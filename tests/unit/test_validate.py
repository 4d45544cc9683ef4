import numpy as np
import pytest

from components._shared.errors import DataValidationError
from components._shared.sampledata import apply_shift, load_digits_uint8
from components.validate_data import drift
from components.validate_data.core import Champion, ValidateConfig, check_snapshot, raise_on_errors
from components._shared.snapshot import Split


def _digits_split(indices, images=None, labels=None, batch="0001"):
    all_images, all_labels = load_digits_uint8()
    images = all_images[indices] if images is None else images
    labels = all_labels[indices] if labels is None else labels
    return Split(images, labels, [f"id-{i}" for i in range(len(labels))], [batch] * len(labels))


@pytest.fixture(scope="module")
def halves():
    order = np.random.default_rng(7).permutation(1797)
    return order[:900], order[900:]


def test_same_distribution_is_not_drift(halves):
    images, _ = load_digits_uint8()
    result = drift.ks_drift(drift.features(images[halves[0]]), drift.features(images[halves[1]]))
    assert result["decision"] == "no_drift" and result["features_drifted"] == 0


@pytest.mark.parametrize("shift", ["rotation", "noise"])
def test_shifted_window_is_flagged(halves, shift):
    images, labels = load_digits_uint8()
    shifted, _ = apply_shift(images[halves[1]], labels[halves[1]], shift, 1.0, np.random.default_rng(0))
    result = drift.ks_drift(drift.features(images[halves[0]]), drift.features(shifted))
    assert result["decision"] == "drift" and result["min_p_val"] < result["threshold"]


def test_too_few_rows_is_insufficient_data_not_drift(halves):
    images, _ = load_digits_uint8()
    result = drift.ks_drift(drift.features(images[halves[0]]), drift.features(images[halves[1]][:5]))
    assert result["decision"] == "insufficient_data" and result["is_drift"] is False


def test_features_of_large_rgb_images_are_pooled_to_64():
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
    assert drift.features(images).shape == (4, 64)


def _champion(classes=range(10), shape=(8, 8, 1)):
    return Champion("v1", {"data": {"classes": list(classes), "image_shape": list(shape), "batches": ["0000"]}}, None)


def test_new_class_is_an_error_unless_allowed(halves):
    split = _digits_split(halves[0])
    findings = check_snapshot(split, _champion(classes=range(8)), ValidateConfig())
    new_class = [f for f in findings if f.code == "LABEL_NEW_CLASS"]
    assert new_class and new_class[0].severity == "error" and new_class[0].examples == [8, 9]
    allowed = check_snapshot(split, _champion(classes=range(8)), ValidateConfig(allow_new_classes=True))
    assert [f.severity for f in allowed if f.code == "LABEL_NEW_CLASS"] == ["warning"]


def test_image_shape_must_match_the_champion(halves):
    findings = check_snapshot(_digits_split(halves[0]), _champion(shape=(28, 28, 1)), ValidateConfig())
    assert [f.code for f in findings] == ["IMAGE_SHAPE"]


def test_duplicates_warn_and_too_few_rows_stop():
    split = _digits_split(np.arange(10))
    split.ids = ["same"] * 10
    codes = {f.code: f.severity for f in check_snapshot(split, None, ValidateConfig(min_train_rows=20))}
    assert codes == {"DUPLICATE_ID": "warning", "ROW_COUNT": "error"}


def test_errors_raise_one_line_naming_the_batch(halves):
    import dataclasses

    findings = check_snapshot(_digits_split(halves[0], batch="0007"), _champion(classes=range(8)), ValidateConfig())
    with pytest.raises(DataValidationError) as err:
        raise_on_errors({"findings": [dataclasses.asdict(f) for f in findings]})
    assert err.value.code == "LABEL_NEW_CLASS" and "batch=0007" in err.value.one_line()
