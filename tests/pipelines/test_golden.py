"""The compiled pipeline against a checked-in copy: a change to the IR shows up in review as a
diff of tests/pipelines/golden/continuous_training.yaml. After a deliberate change, rewrite it
with `make compile-golden` (which runs this module as a script)."""

import re
import sys
from pathlib import Path

from pipelines.continuous_training import compile_pipeline

GOLDEN = Path(__file__).parent / "golden" / "continuous_training.yaml"
SDK_LINE = re.compile(r"^sdkVersion: kfp-.*$", re.M)


def normalised(text: str) -> str:
    """The YAML without what changes with the environment, not with ctp: the SDK version line."""
    return SDK_LINE.sub("sdkVersion: kfp-<version>", text)


def compiled(tmp: Path) -> str:
    return normalised(Path(compile_pipeline(str(tmp / "continuous_training.yaml"))).read_text())


def test_compiled_pipeline_matches_the_golden_copy(tmp_path):
    expected = GOLDEN.read_text()
    actual = compiled(tmp_path)
    assert actual == expected, "the compiled IR changed; review the diff and run `make compile-golden`"


def test_normalising_removes_only_the_sdk_version():
    text = "a: 1\nsdkVersion: kfp-2.17.3\nb: kfp-2.17.3\n"
    assert normalised(text) == "a: 1\nsdkVersion: kfp-<version>\nb: kfp-2.17.3\n"


def test_the_image_tag_is_the_package_version():
    from importlib.metadata import version

    from components._shared.images import BASE_IMAGE, TRAINER_IMAGE

    text = GOLDEN.read_text()
    assert BASE_IMAGE.endswith(f":{version('ctp')}") and TRAINER_IMAGE.endswith(f":{version('ctp')}")
    assert f"image: {BASE_IMAGE}" in text and f"image: {TRAINER_IMAGE}" in text


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(compiled(Path(tmp)))
    print(f"wrote {GOLDEN}", file=sys.stderr)
