"""Two `ctp run` on one store at once: one trains, the other skips (or waits) by lease_policy;
a killed run's lease expires and the next run proceeds. Real CLI processes, kfp.local inside."""

import os
import signal
import subprocess
import sys
import time

import pytest

from components._shared import lease
from components._shared.registry import CHAMPION, Registry
from components._shared.sampledata import SeedConfig, seed_digits
from components._shared.store import LocalStore

pytestmark = pytest.mark.slow


def ctp_run(store, tmp_path, run_id, *params, name=None):
    args = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "run",
        "--store",
        store.uri,
        "--epochs",
        "1",
        "--min-accuracy",
        "0.5",
    ]
    args += ["--nproc-per-node", "1", "--pipeline-root", str(tmp_path / (name or run_id))]
    args += ["--param", f"run_id={run_id}"]
    for p in params:
        args += ["--param", p]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_lease(store, run_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = lease.read(store, "digits")
        if found is not None and found.run_id == run_id and found.active():
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never took the lease")


@pytest.fixture
def seeded(tmp_path):
    store = LocalStore(tmp_path / "store")
    seed_digits(store, SeedConfig(batches=2))
    return store


def test_second_run_skips_while_the_first_trains(seeded, tmp_path):
    first = ctp_run(seeded, tmp_path, "run-a")
    wait_for_lease(seeded, "run-a")
    second = ctp_run(seeded, tmp_path, "run-b")
    out_b, _ = second.communicate(timeout=600)
    out_a, _ = first.communicate(timeout=900)
    assert second.returncode == 0, out_b
    assert first.returncode == 0, out_a
    assert "decision  skip: another run is active (run run-a)" in out_b
    skip = seeded.get_json("runs/run-b/decision.json")
    assert skip["decision"] == "skip" and skip["active_run"] == "run-a"
    assert not seeded.list("checkpoints/run-b/") and not seeded.exists("runs/run-b/evaluation.json")  # no training
    assert seeded.get_json("runs/run-a/decision.json")["decision"] == "promote"  # the guarded deploy ran
    assert lease.read(seeded, "digits").state == lease.RELEASED  # deploy released it at the end


def test_second_run_waits_then_trains(seeded, tmp_path):
    first = ctp_run(seeded, tmp_path, "run-a")
    wait_for_lease(seeded, "run-a")
    # force: after the wait the data is what run-a trained on (no new batch), and the point is the wait
    second = ctp_run(seeded, tmp_path, "run-b", "lease_policy=wait", "lease_wait_seconds=900", "force=true")
    out_a, _ = first.communicate(timeout=900)
    out_b, _ = second.communicate(timeout=900)
    assert first.returncode == 0 and second.returncode == 0, out_a + out_b
    a = seeded.get_json("runs/run-a/decision.json")
    b = seeded.get_json("runs/run-b/decision.json")
    assert a["decision"] == "promote" and b["decision"] in ("promote", "rollback")
    assert Registry(seeded, "digits").card(b["version"])["parent_version"] == a["version"]  # it waited for a's


def test_a_killed_runs_lease_expires_and_the_next_run_proceeds(seeded, tmp_path):
    killed = ctp_run(seeded, tmp_path, "run-k", "lease_ttl_seconds=45")  # longer than a run's start
    wait_for_lease(seeded, "run-k")
    os.killpg(killed.pid, signal.SIGKILL)  # the whole run: kfp.local and its step processes
    killed.wait()
    skipped = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--store", seeded.uri, "--epochs", "1", "--nproc-per-node",
         "1", "--pipeline-root", str(tmp_path / "early"), "--param", "run_id=run-early"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert skipped.returncode == 0 and "run is active (run run-k)" in skipped.stdout, skipped.stdout + skipped.stderr
    time.sleep(max(0.0, lease.read(seeded, "digits").expires_epoch - time.time()) + 0.5)  # nobody renews it
    after = ctp_run(seeded, tmp_path, "run-n")
    out, _ = after.communicate(timeout=900)
    assert after.returncode == 0, out
    assert seeded.get_json("runs/run-n/decision.json")["decision"] == "promote"
    assert seeded.get_json("runs/run-n/run.json")["fingerprint"]
    assert Registry(seeded, "digits").alias(CHAMPION).version == seeded.get_json("runs/run-n/decision.json")["version"]
    audit = [e for e in Registry(seeded, "digits").audit_log() if e["alias"] == "canary"]
    assert {e["run_id"] for e in audit} <= {"run-k", "run-n"}
