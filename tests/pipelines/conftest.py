"""Fixtures the monitor tests share: the compiled pipeline, a fake KFP API with it uploaded, and
a seeded S3 store (test_triggers.py keeps its own package and fake_kfp)."""

import uuid

import pytest

from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import S3Store
from pipelines.continuous_training import compile_pipeline
from pipelines.kfp_api import KfpSettings, connect, upload
from tests.pipelines.fake_kfp import FakeKfpApi


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(str(tmp_path_factory.mktemp("pkg") / "ct.yaml"))


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path, package):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with FakeKfpApi() as fake:
        upload(connect(KfpSettings(fake.url, "ctp-continuous-training")), package)
        yield fake


@pytest.fixture
def store(s3_env):
    """Here the store is S3 only (tests/conftest.py's `store` is local and S3): the monitor runs
    on the cluster's store."""
    store = S3Store("ctp-test", f"mon-{uuid.uuid4().hex[:8]}", s3_env)
    seed_digits(store, SeedConfig(batches=2))
    return store
