"""Concurrent publishers of `champion` (issue 5's race test, issue 8's 16 x 20 trials).

Every publisher is a separate Store object (its own S3 client, or its own lock-file handles on a
local directory), released together by a barrier after reading the same expected AliasRef. On the
local store the same trials also run in separate processes (spawn), since its compare-and-swap is
an fcntl.flock on a lock file and must exclude other processes as well as other threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import tempfile
import threading
import traceback
from pathlib import Path

import pytest

from components._shared.registry import CHAMPION, PREVIOUS, Registry
from components._shared.store import LocalStore, S3Store, Store

MODEL = "digits"
BARRIER_TIMEOUT = 60  # a broken run fails instead of hanging; never used to order events


# --- helpers shared by threads and processes ------------------------------------------------------


def _spec(store: Store) -> tuple:
    """What a thread or a child process needs to open its own handle on the same store."""
    if isinstance(store, LocalStore):
        return ("local", str(store.root))
    assert isinstance(store, S3Store)
    return ("s3", store.bucket, store.prefix, store.settings)


def _open(spec: tuple) -> Store:
    if spec[0] == "local":
        return LocalStore(spec[1])
    return S3Store(spec[1], spec[2], spec[3])


def _blob(version: str) -> bytes:
    return f"weights of {version}\n".encode() * 16


def _publish(registry: Registry, version: str, workdir: Path) -> None:
    path = workdir / f"{version}.bin"
    path.write_bytes(_blob(version))
    registry.publish(version, {"model.safetensors": path}, {"metrics": {"accuracy": 0.5}, "run_id": version})


def _version(trial: int, worker: int) -> str:
    return f"t{trial:02d}-p{worker:02d}"


def _race_worker(spec: tuple, worker: int, trials: int, barrier, report) -> None:
    """One publisher: per trial publish its own version, read champion, wait for all, promote.

    ``report(message)`` hands results to the test (a list append for threads, a queue for
    processes). Worker 0 also records the aliases once every promote of the trial has finished.
    """
    try:
        registry = Registry(_open(spec), MODEL)
        with tempfile.TemporaryDirectory() as tmp:
            for trial in range(trials):
                version = _version(trial, worker)
                _publish(registry, version, Path(tmp))
                ref = registry.alias(CHAMPION)
                barrier.wait()  # everyone has read the same champion before anyone moves it
                won = registry.promote(version, ref, run_id=f"run-{version}", reason="race")
                report(("attempt", trial, worker, ref.version if ref else None, ref.etag if ref else None, won))
                barrier.wait()  # the trial is over: every promote (and its previous move) is done
                if worker == 0:
                    champion, previous = registry.alias(CHAMPION), registry.alias(PREVIOUS)
                    report(
                        ("after", trial, champion.version if champion else None, previous.version if previous else None)
                    )
    except BaseException:
        report(("error", worker, traceback.format_exc()))
        barrier.abort()


def _process_worker(spec, workers, trials, barrier, queue) -> None:
    """Several publishers (threads) in one child process, all on one cross-process barrier."""
    threads = [threading.Thread(target=_race_worker, args=(spec, w, trials, barrier, queue.put)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(("done", tuple(workers)))


def _run_in_threads(spec: tuple, publishers: int, trials: int) -> list[tuple]:
    messages: list[tuple] = []
    lock = threading.Lock()

    def report(message):
        with lock:
            messages.append(message)

    barrier = threading.Barrier(publishers, timeout=BARRIER_TIMEOUT)
    threads = [
        threading.Thread(target=_race_worker, args=(spec, i, trials, barrier, report)) for i in range(publishers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return messages


def _run_in_processes(spec: tuple, publishers: int, trials: int, processes: int) -> list[tuple]:
    """``publishers`` spread over ``processes`` spawned children (threads inside each)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(publishers, timeout=BARRIER_TIMEOUT)
    queue = ctx.Queue()
    groups = [list(range(publishers))[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_process_worker, args=(spec, group, trials, barrier, queue)) for group in groups]
    for p in procs:
        p.start()
    messages, done = [], 0
    try:
        while done < processes:
            message = queue.get(timeout=BARRIER_TIMEOUT * 2)
            if message[0] == "done":
                done += 1
            else:
                messages.append(message)
    finally:
        for p in procs:
            p.join(timeout=BARRIER_TIMEOUT)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * processes
    return messages


def _check_trials(store: Store, messages: list[tuple], publishers: int, trials: int, first_champion: str) -> None:
    errors = [m for m in messages if m[0] == "error"]
    assert not errors, errors[0][2]
    attempts = {(m[1], m[2]): m for m in messages if m[0] == "attempt"}
    after = {m[1]: m for m in messages if m[0] == "after"}
    assert len(attempts) == publishers * trials and len(after) == trials

    registry = Registry(store, MODEL)
    champion = first_champion
    for trial in range(trials):
        rows = [attempts[(trial, w)] for w in range(publishers)]
        # Everyone raced from the same view of the champion ...
        assert {(r[3], r[4]) for r in rows} == {(champion, rows[0][4])}, f"trial {trial}"
        # ... and exactly one of them won.
        winners = [r[2] for r in rows if r[5]]
        assert len(winners) == 1, f"trial {trial}: winners {winners}"
        winner = _version(trial, winners[0])
        assert after[trial][2:] == (winner, champion), f"trial {trial}: champion/previous"
        champion = winner

    # No version is lost: every publisher's version is listed, with its card and intact blob.
    expected_versions = sorted([first_champion] + [_version(t, w) for t in range(trials) for w in range(publishers)])
    assert registry.versions() == expected_versions
    for version in expected_versions[1:]:
        card = registry.card(version)
        assert card["files"] == {"model.safetensors": hashlib.sha256(_blob(version)).hexdigest()}
    assert registry.alias(CHAMPION).version == champion
    assert registry.alias(PREVIOUS).version == after[trials - 1][3]

    # The audit log holds every attempt, won or lost.
    log = registry.audit_log()
    moves = [e for e in log if e["alias"] == CHAMPION and e["run_id"].startswith("run-t")]
    assert len(moves) == publishers * trials
    for trial in range(trials):
        mine = [e for e in moves if e["run_id"].startswith(f"run-t{trial:02d}-")]
        assert sorted(e["run_id"] for e in mine) == sorted(f"run-{_version(trial, w)}" for w in range(publishers))
        assert sum(e["won"] for e in mine) == 1
        assert [e["version"] for e in mine if e["won"]] == [after[trial][2]]


def _seed_champion(store: Store, tmp_path: Path) -> str:
    registry = Registry(store, MODEL)
    _publish(registry, "v0-seed", tmp_path)
    assert registry.promote("v0-seed", None, run_id="seed", reason="first model")
    return "v0-seed"


# --- issue 5: two publishers ----------------------------------------------------------------------


@pytest.mark.parametrize("with_champion", [True, False], ids=["champion-exists", "first-champion"])
def test_two_publishers_move_champion_at_once(store: Store, tmp_path: Path, with_champion: bool):
    spec = _spec(store)
    registry = Registry(store, MODEL)
    first = _seed_champion(store, tmp_path) if with_champion else None
    rounds = 5
    for round_ in range(rounds):
        barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT)
        results: dict[str, tuple] = {}
        failures: list[str] = []

        def publisher(version: str, barrier=barrier, results=results, failures=failures):
            try:
                mine = Registry(_open(spec), MODEL)
                with tempfile.TemporaryDirectory() as tmp:
                    _publish(mine, version, Path(tmp))
                ref = mine.alias(CHAMPION)
                barrier.wait()
                results[version] = (ref, mine.promote(version, ref, run_id=f"run-{version}", reason="race"))
            except BaseException:
                failures.append(traceback.format_exc())
                barrier.abort()

        pair = [f"r{round_}-a", f"r{round_}-b"]
        threads = [threading.Thread(target=publisher, args=(v,)) for v in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[0]

        (ref_a, won_a), (ref_b, won_b) = results[pair[0]], results[pair[1]]
        assert ref_a == ref_b  # the same expected AliasRef (version and ETag)
        assert (ref_a.version if ref_a else None) == first
        assert won_a != won_b  # exactly one wins
        winner = pair[0] if won_a else pair[1]
        assert registry.alias(CHAMPION).version == winner
        previous = registry.alias(PREVIOUS)
        assert (previous.version if previous else None) == first
        assert set(pair) <= set(registry.versions())  # the loser's version is still published
        for v in pair:
            assert registry.card(v)["files"]["model.safetensors"] == hashlib.sha256(_blob(v)).hexdigest()
        attempts = [e for e in registry.audit_log() if e["alias"] == CHAMPION and e["version"] in pair]
        assert sorted((e["version"], e["won"], e["from"]) for e in attempts) == sorted(
            [(winner, True, first), (next(v for v in pair if v != winner), False, first)]
        )
        first = winner
    assert len(registry.versions()) == 2 * rounds + (1 if with_champion else 0)


# --- issue 8: 16 publishers x 20 trials ----------------------------------------------------------

PUBLISHERS, TRIALS = 16, 20


def test_sixteen_publishers_twenty_trials_threads(store: Store, tmp_path: Path):
    first = _seed_champion(store, tmp_path)
    messages = _run_in_threads(_spec(store), PUBLISHERS, TRIALS)
    _check_trials(store, messages, PUBLISHERS, TRIALS, first)


@pytest.mark.slow
def test_sixteen_publishers_twenty_trials_processes(local_store: LocalStore, tmp_path: Path):
    """The local store's lock must exclude other processes as well as other threads: 16
    publishers as 4 spawned processes x 4 threads, all released by one cross-process barrier."""
    first = _seed_champion(local_store, tmp_path)
    messages = _run_in_processes(_spec(local_store), PUBLISHERS, TRIALS, processes=4)
    _check_trials(local_store, messages, PUBLISHERS, TRIALS, first)


# --- overlapping promotions: `previous` stays the champion's true predecessor --------------------


def _retrying_promoter(spec: tuple, version: str, barrier, failures: list) -> None:
    """A run that keeps trying until its version is champion (each try from a fresh read)."""
    try:
        registry = Registry(_open(spec), MODEL)
        with tempfile.TemporaryDirectory() as tmp:
            _publish(registry, version, Path(tmp))
        barrier.wait()
        while not registry.promote(version, registry.alias(CHAMPION), run_id=f"run-{version}", reason="retry"):
            pass
    except BaseException:
        failures.append(traceback.format_exc())
        barrier.abort()


def test_overlapping_promotions_keep_previous_consistent(store: Store, tmp_path: Path):
    """Promotions that follow each other closely: each winner displaces the one before it, and
    `previous` ends as the version the final champion displaced (never an older one)."""
    spec = _spec(store)
    registry = Registry(store, MODEL)
    first = _seed_champion(store, tmp_path)
    workers, rounds = 6, 4
    for round_ in range(rounds):
        barrier = threading.Barrier(workers, timeout=BARRIER_TIMEOUT)
        failures: list[str] = []
        versions = [f"o{round_}-{i}" for i in range(workers)]
        threads = [threading.Thread(target=_retrying_promoter, args=(spec, v, barrier, failures)) for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[0]

        wins = [e for e in registry.audit_log() if e["alias"] == CHAMPION and e["won"] and e["version"] in versions]
        # Every version won exactly once, and the wins form one chain from the old champion.
        assert sorted(e["version"] for e in wins) == sorted(versions)
        displaced = {e["from"]: e["version"] for e in wins}
        assert len(displaced) == workers, "two promotions displaced the same champion"
        chain, at = [], first
        while at in displaced:
            at = displaced[at]
            chain.append(at)
        assert sorted(chain) == sorted(versions)
        assert registry.alias(CHAMPION).version == chain[-1]
        assert registry.alias(PREVIOUS).version == (chain[-2] if workers > 1 else first), (
            f"round {round_}: previous is not the final champion's predecessor"
        )
        first = chain[-1]


def _stalling_store(spec: tuple, won: threading.Event, resume: threading.Event) -> Store:
    """A real store handle whose owner stalls (as a slow or preempted run would) right after it
    wins `champion`: the write of that audit entry waits until ``resume`` is set."""
    base = LocalStore if spec[0] == "local" else S3Store

    class Stalling(base):  # type: ignore[misc, valid-type]
        def put_bytes(self, key, data, *, create_only=False):
            if "/audit/" in key and b'"alias": "champion"' in data and b'"won": true' in data and not won.is_set():
                won.set()
                assert resume.wait(BARRIER_TIMEOUT), "the other run never finished"
            return super().put_bytes(key, data, create_only=create_only)

    return Stalling(*spec[1:])


@contextlib.contextmanager
def _stalled(spec: tuple, operation):
    """Run A: ``operation(registry)`` in a thread, over a store that stalls right after A wins
    `champion`. The with-body (run B) runs while A is stalled; A resumes when the body ends.
    Yields a dict whose "result" is A's return value once the block is left."""
    won, resume = threading.Event(), threading.Event()
    failures: list[str] = []
    outcome: dict = {}

    def run_a():
        try:
            outcome["result"] = operation(Registry(_stalling_store(spec, won, resume), MODEL))
        except BaseException:
            failures.append(traceback.format_exc())
            won.set()

    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        assert won.wait(BARRIER_TIMEOUT)
        assert not failures, failures[0]
        yield outcome
    finally:
        resume.set()
        thread.join()
    assert not failures, failures[0]


def test_stalled_winner_does_not_overwrite_newer_previous(store: Store, tmp_path: Path):
    """Run A wins champion (v0 -> A) and stalls; run B then promotes B over A (previous <- A);
    when A resumes it must not set previous back to v0: previous is the champion's predecessor."""
    spec = _spec(store)
    registry = Registry(store, MODEL)
    first = _seed_champion(store, tmp_path)
    _publish(registry, "run-a", tmp_path)
    _publish(registry, "run-b", tmp_path)
    with _stalled(spec, lambda r: r.promote("run-a", r.alias(CHAMPION), run_id="a", reason="a")) as a:
        assert registry.alias(CHAMPION).version == "run-a"
        b_won = registry.promote("run-b", registry.alias(CHAMPION), run_id="b", reason="b")
        assert registry.aliases() == {CHAMPION: "run-b", PREVIOUS: "run-a"}
    assert a["result"] is True and b_won is True
    assert registry.aliases() == {CHAMPION: "run-b", PREVIOUS: "run-a"}
    # Rolling back now restores A (the champion B displaced), not the older seed.
    assert registry.rollback(run_id="rb", reason="check") == "run-a"
    assert registry.aliases() == {CHAMPION: "run-a", PREVIOUS: "run-b"}
    assert first in registry.versions()


def test_stalled_rollback_does_not_overwrite_newer_previous(store: Store, tmp_path: Path):
    """The same interleaving for rollback: A rolls back (champion <- previous) and stalls, B then
    promotes over the restored champion; A must not clobber B's `previous` when it resumes."""
    spec = _spec(store)
    registry = Registry(store, MODEL)
    _seed_champion(store, tmp_path)  # v0-seed
    _publish(registry, "v1", tmp_path)
    _publish(registry, "v2", tmp_path)
    assert registry.promote("v1", registry.alias(CHAMPION), run_id="p1", reason="p1")  # champion v1, previous v0
    with _stalled(spec, lambda r: r.rollback(run_id="a", reason="rollback")) as a:
        assert registry.alias(CHAMPION).version == "v0-seed"
        assert registry.promote("v2", registry.alias(CHAMPION), run_id="b", reason="b")
    assert a["result"] == "v0-seed"
    assert registry.aliases() == {CHAMPION: "v2", PREVIOUS: "v0-seed"}


# --- the local lock itself ----------------------------------------------------------------------


def _locked_increments(root: str, n: int, threads: int, failures) -> None:
    """Non-atomic read-modify-write of a counter file inside the store's per-key lock, from
    several threads, each opening the lock file itself (a fresh open file description)."""

    def work():
        try:
            store = LocalStore(root)
            counter = Path(root) / "counter.txt"
            for _ in range(n):
                with store._lock("counters/c"):
                    value = int(counter.read_text())
                    counter.write_text(str(value + 1))
        except BaseException:
            failures.append(traceback.format_exc())

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def _locked_increments_process(root: str, n: int, threads: int, queue) -> None:
    failures: list[str] = []
    _locked_increments(root, n, threads, failures)
    queue.put(failures)


@pytest.mark.slow
def test_local_lock_excludes_threads_and_processes(tmp_path: Path):
    root = tmp_path / "store"
    LocalStore(root)
    (root / "counter.txt").write_text("0")
    procs_n, threads_n, n = 4, 4, 60
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_locked_increments_process, args=(str(root), n, threads_n, queue)) for _ in range(procs_n)
    ]
    for p in procs:
        p.start()
    local_failures: list[str] = []
    _locked_increments(str(root), n, threads_n, local_failures)  # this process joins in as well
    child_failures = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * procs_n
    assert local_failures == [] and child_failures == [[]] * procs_n
    assert int((root / "counter.txt").read_text()) == (procs_n + 1) * threads_n * n


def _cas_increments(spec: tuple, n: int, barrier, failures: list) -> None:
    try:
        store = _open(spec)
        barrier.wait()
        done = 0
        while done < n:
            data, etag = store.get_with_etag("counters/cas")
            if store.compare_and_swap("counters/cas", str(int(data) + 1).encode(), etag) is not None:
                done += 1
    except BaseException:
        failures.append(traceback.format_exc())
        barrier.abort()


def test_compare_and_swap_loses_no_update(store: Store):
    """Increment a counter by CAS from 6 threads: every successful swap is counted exactly once."""
    store.put_bytes("counters/cas", b"0")
    workers, n = 6, 12
    barrier = threading.Barrier(workers, timeout=BARRIER_TIMEOUT)
    failures: list[str] = []
    threads = [
        threading.Thread(target=_cas_increments, args=(_spec(store), n, barrier, failures)) for _ in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert store.get_bytes("counters/cas") == str(workers * n).encode()
