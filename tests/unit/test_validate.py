"""Drift tests (KS decision, MMD second opinion, Chi-square on labels) on seeded digits, and the
validation report as JSON, Markdown and a PNG plot."""

import dataclasses

import numpy as np
import pytest

from components._shared.dataset import Finding
from components._shared.errors import DataValidationError
from components._shared.sampledata import SeedConfig, apply_shift, load_digits_uint8, seed_digits
from components.ingest.core import IngestConfig, ingest
from components.validate_data import drift
from components.validate_data.core import ValidateConfig, publish, raise_on_errors, report_markdown, validate
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
    reference, window = drift.features(images[halves[0]]), drift.features(images[halves[1]])
    ks = drift.ks_drift(reference, window)
    assert ks["decision"] == "no_drift" and ks["features_drifted"] == 0 and len(ks["p_vals"]) == 64
    assert drift.mmd_drift(reference, window)["decision"] == "no_drift"


@pytest.mark.parametrize("shift", ["rotation", "noise"])
def test_shifted_window_is_flagged_by_ks_and_mmd(halves, shift):
    images, _ = load_digits_uint8()
    reference, window = drift.features(images[halves[0]]), drift.features(_shifted(halves[1], shift)[0])
    ks = drift.ks_drift(reference, window)
    assert ks["decision"] == "drift" and ks["min_p_val"] < ks["threshold"]
    mmd = drift.mmd_drift(reference, window)
    assert mmd["decision"] == "drift" and mmd["mmd2"] > mmd["mmd2_threshold"] and mmd["n_window"] == drift.MMD_ROWS


def test_mmd_is_reproducible_with_its_seed(halves):
    images, _ = load_digits_uint8()
    reference, window = drift.features(images[halves[0]]), drift.features(_shifted(halves[1], "noise")[0])
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
    reference, few = drift.features(images[halves[0]]), drift.features(images[halves[1]][:5])
    for result in (drift.ks_drift(reference, few), drift.mmd_drift(reference, few),
                   drift.label_drift({0: 500, 1: 400}, {0: 3, 1: 2})):
        assert result["decision"] == "insufficient_data" and result["is_drift"] is False


def test_features_of_large_rgb_images_are_pooled_to_64():
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
    assert drift.features(images).shape == (4, 64)


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
    assert report["window_batches"] == ["0002", "0003"] and report["features"]["decision"] == "drift"
    assert report["mmd_agrees"] is True and report["labels"]["decision"] == "no_drift"
    assert result.plot_png.startswith(PNG_MAGIC)
    keys = publish(store, "r-drift", result)
    assert store.get_json(keys["drift.json"]) == store.get_json(keys["validation.json"])["drift"]
    assert store.get_bytes(keys["drift.png"]) == result.plot_png


def test_markdown_names_every_finding_and_the_drift_tests(rotated_run):
    _, _, result = rotated_run
    report = {**result.report, "status": "fail", "findings": [
        dataclasses.asdict(Finding("LABEL_NAN", "error", "0003", "2 label(s) are NaN or Inf", 2, ["x-1", "x|2"])),
        dataclasses.asdict(Finding("DUPLICATE_ID", "warning", "0002", "1 example id(s) appeared before", 1, ["a"]))]}
    text = report_markdown(report)
    assert text.startswith("# Data validation: FAIL")
    assert "| LABEL_NAN | error | 0003 | 2 | x-1, x\\|2 | 2 label(s) are NaN or Inf |" in text
    assert "| DUPLICATE_ID | warning | 0002 | 1 | a |" in text
    assert "## Drift: drift" in text and "| KS, 64 features, Bonferroni |" in text
    assert "MMD (second opinion" in text and "Chi-square on labels" in text


def test_errors_raise_one_line_naming_every_batch():
    findings = [Finding("LABEL_NEW_CLASS", "error", "0007", "label(s) [11] are not among the champion's classes"),
                Finding("DUPLICATE_ID", "warning", "0007", "1 example id(s) appeared before"),
                Finding("ROW_COUNT", "error", "*", "5 training rows; need at least 20")]
    with pytest.raises(DataValidationError) as err:
        raise_on_errors({"findings": [dataclasses.asdict(f) for f in findings]})
    line = err.value.one_line()
    assert err.value.code == "LABEL_NEW_CLASS" and "batch=0007" in line and "+1 more: ROW_COUNT batch=*" in line
    raise_on_errors({"findings": [dataclasses.asdict(findings[1])]})  # warnings alone do not stop the run
