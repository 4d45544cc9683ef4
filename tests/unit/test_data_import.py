"""`ctp data import`: ImageFolder trees and manifests, local and S3, every bad input, reruns; and
--model defaulting to the dataset name."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from components._shared.dataset import list_batches
from components._shared.errors import DataValidationError
from components._shared.importer import ImportConfig, import_images, parse_resize
from components._shared.store import LocalStore, S3Store
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from pipelines.cli import main


def image_bytes(seed: int, size=(12, 10), fmt="PNG", mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode)
    sink = io.BytesIO()
    img.save(sink, format=fmt)
    return sink.getvalue()


def tree(per_class: dict[str, int], **kwargs) -> dict[str, bytes]:
    """Relative path -> bytes of an ImageFolder tree with distinct images."""
    files, seed = {}, 0
    for label, n in per_class.items():
        for i in range(n):
            files[f"{label}/img{i}.png"] = image_bytes(seed, **kwargs)
            seed += 1
    return files


def write_local(root: Path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return str(root)


def write_source(store, tmp_path: Path, files: dict[str, bytes]) -> str:
    """The tree as a local folder (local store) or under an s3:// prefix (S3 store), with MINIO_* set."""
    if isinstance(store, LocalStore):
        return write_local(tmp_path / "src", files)
    source = S3Store(store.bucket, f"{store.prefix}-src", store.settings)
    for rel, data in files.items():
        source.put_bytes(rel, data)
    return f"s3://{store.bucket}/{store.prefix}-src"


@pytest.fixture
def env_for(monkeypatch):
    def apply(store):
        if isinstance(store, S3Store):
            s = store.settings
            monkeypatch.setenv("MINIO_ENDPOINT", s.endpoint)
            monkeypatch.setenv("MINIO_ACCESS_KEY", s.access_key)
            monkeypatch.setenv("MINIO_SECRET_KEY", s.secret_key)
            monkeypatch.setenv("MINIO_SECURE", "true" if s.secure else "false")

    return apply


def config(**kwargs) -> ImportConfig:
    return ImportConfig(dataset="pets", progress=False, **kwargs)


def test_image_folder_imports_one_batch_that_ingests_and_a_rerun_imports_nothing(store, tmp_path, env_for):
    env_for(store)
    src = write_source(store, tmp_path, tree({"cat": 4, "dog": 3}))
    result = import_images(store, src, config())
    assert (result.seen, result.imported, result.skipped) == (7, 7, 0)
    assert result.per_class == {"cat": 4, "dog": 3} and result.batch == "0000"
    assert list(list_batches(store, "pets")) == ["0000"]
    assert "7 file(s) seen, 7 imported, 0 skipped" in result.summary() and "cat 4, dog 3" in result.summary()
    ingested = ingest(store, IngestConfig(dataset="pets", model_name="pets"))
    assert ingested.image_shape == [10, 12, 3] and ingested.label_names == ["cat", "dog"]
    assert sum(ingested.rows.values()) == 7

    again = import_images(store, src, config())
    assert (again.imported, again.skipped, again.batch) == (0, 7, None)
    assert "no new batch written" in again.summary()
    assert list(list_batches(store, "pets")) == ["0000"]


def test_new_files_only_go_into_the_next_batch(local_store, tmp_path):
    files = tree({"cat": 2, "dog": 2})
    src = write_local(tmp_path / "src", files)
    import_images(local_store, src, config())
    write_local(tmp_path / "src", {"dog/new.png": image_bytes(99)})
    result = import_images(local_store, src, config())
    assert (result.batch, result.imported, result.skipped, result.per_class) == ("0001", 1, 4, {"dog": 1})


def test_ids_are_content_hashes(local_store, tmp_path):
    import hashlib

    files = tree({"a": 1, "b": 1})
    import_images(local_store, write_local(tmp_path / "src", files), config())
    table = pq.read_table(local_store.root / "datasets/pets/batch=0000/part-00000.parquet")
    expected = {hashlib.sha256(data).hexdigest()[:32] for data in files.values()}
    assert set(table.column("id").to_pylist()) == expected
    assert table.column("image").to_pylist()[0] in files.values()  # PNG bytes kept as they are


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_with_and_without_ids(store, tmp_path, env_for, kind):
    env_for(store)
    files = tree({"x": 2, "y": 2})
    src_root = write_source(store, tmp_path, files)
    rows = sorted(files)
    manifest = pa.table(
        {
            "path": rows,
            "label": [r.split("/")[0] for r in rows],
            "id": [f"m{i}" for i in range(len(rows))],
        }
    )
    sink = io.BytesIO()
    if kind == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(manifest, sink)
    else:
        pq.write_table(manifest, sink)
    if src_root.startswith("s3://"):
        S3Store(store.bucket, f"{store.prefix}-src", store.settings).put_bytes(f"list.{kind}", sink.getvalue())
    else:
        Path(src_root, f"list.{kind}").write_bytes(sink.getvalue())
    result = import_images(store, f"{src_root}/list.{kind}", config())
    assert (result.imported, result.per_class) == (4, {"x": 2, "y": 2})
    key = list_batches(store, "pets")["0000"][0]
    with store.arrow_filesystem().open_input_file(key) as handle:
        assert sorted(pq.read_table(handle).column("id").to_pylist()) == ["m0", "m1", "m2", "m3"]
    assert import_images(store, f"{src_root}/list.{kind}", config()).batch is None


def test_csv_manifest_without_ids_and_absolute_paths(local_store, tmp_path):
    files = tree({"a": 2, "b": 1})
    root = Path(write_local(tmp_path / "src", files))
    lines = ["path,label"] + [f"{root / rel},{rel.split('/')[0]}" for rel in files]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    result = import_images(local_store, str(tmp_path / "m.csv"), config())
    assert result.per_class == {"a": 2, "b": 1}


def bad_tree(tmp_path: Path) -> str:
    files = tree({"cat": 3, "dog": 2})
    files["cat/notes.txt"] = b"not an image"  # unsupported format
    files["dog/broken.png"] = image_bytes(50)[:40]  # truncated: unreadable
    files["dog/big.png"] = image_bytes(51, size=(20, 20))  # another size
    root = write_local(tmp_path / "src", files)
    (tmp_path / "src" / "empty").mkdir()  # an empty class
    return root


def test_every_bad_input_is_one_report_and_nothing_is_written(store, tmp_path, env_for):
    env_for(store)
    src = bad_tree(tmp_path)
    with pytest.raises(DataValidationError) as caught:
        import_images(store, src, config())
    text = caught.value.message
    for code in ("IMPORT_FORMAT_UNSUPPORTED", "IMPORT_UNREADABLE", "IMPORT_SIZE_MIXED", "IMPORT_CLASS_EMPTY"):
        assert code in text
    assert "cat/notes.txt" in text and "dog/broken.png" in text and "dog/big.png" in text and "empty" in text
    assert store.list("datasets/") == []


def test_mixed_sizes_import_with_resize(local_store, tmp_path):
    files = tree({"a": 2}, size=(12, 10))
    files.update({"b/wide.jpg": image_bytes(7, size=(30, 16), fmt="JPEG")})
    src = write_local(tmp_path / "src", files)
    with pytest.raises(DataValidationError) as caught:
        import_images(local_store, src, config())
    assert caught.value.code == "IMPORT_SIZE_MIXED"
    result = import_images(local_store, src, config(resize=parse_resize("16x16")))
    assert result.image_shape == (16, 16, 3)
    assert ingest(local_store, IngestConfig(dataset="pets", model_name="pets")).image_shape == [16, 16, 3]


def test_grayscale_and_other_formats_are_reencoded(local_store, tmp_path):
    files = {f"g/{i}.bmp": image_bytes(i, fmt="BMP", mode="L") for i in range(3)}
    files["h/0.bmp"] = image_bytes(9, fmt="BMP", mode="L")
    result = import_images(local_store, write_local(tmp_path / "src", files), config())
    assert result.image_shape == (10, 12, 1)
    assert ingest(local_store, IngestConfig(dataset="pets", model_name="pets")).image_shape == [10, 12, 1]


def test_bad_manifests(local_store, tmp_path):
    (tmp_path / "m.csv").write_text("file,label\nx.png,a\n")
    with pytest.raises(DataValidationError) as caught:
        import_images(local_store, str(tmp_path / "m.csv"), config())
    assert caught.value.code == "IMPORT_MANIFEST_INVALID"
    (tmp_path / "n.csv").write_text("path,label\nmissing.png,a\n")
    with pytest.raises(DataValidationError) as caught:
        import_images(local_store, str(tmp_path / "n.csv"), config())
    assert caught.value.code == "IMPORT_UNREADABLE" and "missing.png" in caught.value.message


def test_large_tree_streams_into_several_parts(local_store, tmp_path):
    src = write_local(tmp_path / "src", tree({"a": 7, "b": 6}, size=(4, 4)))
    result = import_images(local_store, src, config(rows_per_part=5))
    assert len(result.keys) == 3
    counts = [pq.ParquetFile(local_store.root / k).metadata.num_rows for k in result.keys]
    assert counts == [5, 5, 3]
    assert sum(ingest(local_store, IngestConfig(dataset="pets", model_name="pets")).rows.values()) == 13


def test_cli_import_prints_the_summary_and_bad_input_exits_2(tmp_path):
    src = write_local(tmp_path / "src", tree({"a": 2, "b": 1}))
    store = str(tmp_path / "store")
    runner = CliRunner()
    out = runner.invoke(main, ["data", "import", src, "--dataset", "pets", "--store", store, "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "3 imported" in out.output and "batch=0000" in out.output
    again = runner.invoke(main, ["data", "import", src, "--dataset", "pets", "--store", store, "--no-progress"])
    assert "0 imported, 3 skipped" in again.output and "no new batch written" in again.output
    bad = runner.invoke(main, ["data", "import", bad_tree(tmp_path / "x"), "--dataset", "q", "--store", store])
    assert bad.exit_code == 2


def test_parse_resize():
    assert parse_resize("none") is None and parse_resize("64x32") == (64, 32)
    with pytest.raises(Exception, match="WxH"):
        parse_resize("64")


# -- --model defaults to the dataset name ------------------------------------------------------


def captured_run(monkeypatch, args: list[str], env: dict | None = None):
    import pipelines.local_run as local_run

    seen = {}

    def fake(options):
        seen["options"] = options
        return "ok"

    monkeypatch.setattr(local_run, "run_locally", fake)
    out = CliRunner().invoke(main, ["run", *args], env=env or {})
    assert out.exit_code == 0, out.output
    return seen["options"]


def test_run_registers_the_dataset_name_without_model(monkeypatch):
    assert captured_run(monkeypatch, ["--dataset", "pets"]).model_name == "pets"
    assert captured_run(monkeypatch, ["--dataset", "pets", "--model", "m"]).model_name == "m"
    assert captured_run(monkeypatch, []).model_name == "digits"


def test_kfp_commands_default_model_to_dataset_and_keep_ctp_model(monkeypatch):
    import pipelines.cli.kfp as kfp_cli

    seen = {}

    def fake_schedule(*args, **kwargs):
        raise SystemExit(0)

    monkeypatch.setattr(kfp_cli, "connect", lambda kfp: None)
    monkeypatch.setattr(kfp_cli, "pipeline_ref", lambda *a: None)
    import pipelines.kfp_api as kfp_api

    def capture(client, name, cron, ref, parameters):
        seen.update(parameters)
        raise SystemExit(0)

    monkeypatch.setattr(kfp_api, "schedule", capture)
    base = ["schedule", "n", "--cron", "0 3 * * *", "--store", "s3://b/p"]
    CliRunner().invoke(main, [*base, "--dataset", "pets"], env={"CTP_MODEL": None})
    assert seen["model_name"] == "pets"
    CliRunner().invoke(main, [*base, "--dataset", "pets"], env={"CTP_MODEL": "prod"})
    assert seen["model_name"] == "prod"
    CliRunner().invoke(main, base, env={"CTP_DATASET": "flowers", "CTP_MODEL": None})
    assert seen["model_name"] == "flowers"


def test_models_commands_keep_their_model_default():
    out = CliRunner().invoke(main, ["models", "list", "--help"])
    assert "[default: digits]" in out.output
    monitor = CliRunner().invoke(main, ["monitor", "--help"])
    assert "the --dataset name" in " ".join(monitor.output.split())  # however --help wraps it


def test_a_failed_upload_leaves_no_part_behind(local_store, tmp_path, monkeypatch):
    src = write_local(tmp_path / "src", tree({"a": 4, "b": 2}, size=(4, 4)))
    original, calls = local_store.put_file, []

    def failing(key, path):
        calls.append(key)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(key, path)

    monkeypatch.setattr(local_store, "put_file", failing)
    with pytest.raises(OSError):
        import_images(local_store, src, config(rows_per_part=3))
    assert local_store.list("datasets/") == []


def test_the_batch_id_is_claimed_create_only(local_store, tmp_path):
    """A concurrent import that claimed the next id first: this one takes the one after."""
    from components._shared.importer import import_record_key

    local_store.put_json(import_record_key("pets", "0000"), {"state": "writing"}, create_only=True)
    result = import_images(local_store, write_local(tmp_path / "src", tree({"a": 1})), config())
    assert result.batch == "0001"
    record = local_store.get_json(import_record_key("pets", "0001"))
    assert record["state"] == "done" and record["keys"] == result.keys and record["per_class"] == {"a": 1}
