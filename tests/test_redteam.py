"""Red team, layer by layer: each attack a hostile model makes, run in a model host confined
by ONE sandbox layer, must be stopped by that layer alone; the same payload in a host with no
layer at all must succeed (the control proves the payload is real, so each test fails when its
guard is removed). Attacks on the trusted side (the protocol, the clock, another owner's
process) are tested through the local engine and the validation, as a batch runs them.

The targets are made as mldropd makes its home: a 0700 folder, a 0600 SQLite database with a
user in it, a sessions folder, other users' model files and scores.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import stat
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldropd.engines.base import ModelTask, ScoringRequest
from mldropd.engines.local import LocalEngine
from mldropd.engines.local_io import PART_FILE
from mldropd.sandbox.policy import Limits
from mldropd.settings import FeatureSettings, Settings
from tests.support import redteam as rt
from tests.support.wait import wait_for

pytestmark = pytest.mark.redteam

ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="the uid layer applies to a root daemon")


@pytest.fixture(scope="module")
def victim() -> Any:
    """A process of the daemon's uid holding a secret in its environment. It drops its
    capabilities, as a model host does, so an unconfined host could read it (the control)."""
    import subprocess

    code = (
        "from mldropd.sandbox.syscalls import drop_capabilities; drop_capabilities(); "
        "import sys, time; sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(3600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "VICTIM_SECRET": "s3cr3t-" + os.urandom(4).hex()},
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def target(tmp_path: Path, victim: Any) -> dict[str, Path]:
    """A home as the daemon leaves it (umask 077): private folder, database, sessions, files."""
    old = os.umask(0o077)
    try:
        home = tmp_path / "home"
        (home / "work" / "sessions").mkdir(parents=True)
        (home / "artifacts" / "users" / "2" / "models" / "7" / "v1").mkdir(parents=True)
        (home / "scores" / "dt=2026-11-29" / "model=7").mkdir(parents=True)
        db = home / "mldropd.db"
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE user (email TEXT, is_admin INTEGER)")
            con.execute("INSERT INTO user VALUES ('mallory@example.com', 0)")
        (home / "secret.key").write_bytes(os.urandom(32))
        other = home / "artifacts" / "users" / "2" / "models" / "7" / "v1" / "model.dill"
        other.write_bytes(b"another user's model")
        pq.write_table(pa.table({"score": [0.5]}), home / "scores/dt=2026-11-29/model=7/p.parquet")
    finally:
        os.umask(old)
    return {
        "home": home,
        "db": db,
        "sessions": home / "work" / "sessions",
        "key": home / "secret.key",
        "other_model": other,
        "other_scores": home / "scores" / "dt=2026-11-29" / "model=7" / "p.parquet",
        "victim": Path(f"/proc/{victim.pid}"),
    }


def _admin(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT is_admin FROM user").fetchone()[0])


def _site_packages() -> Path:
    return next(Path(p) for p in sys.path if p.endswith("site-packages"))


# attack name -> (payload factory, layers each of which must stop it alone)
FILE_GUARDS = {"mountns", "landlock", "uid"}
ATTACKS: dict[str, tuple[Callable[[dict[str, Path]], rt.Pipeline], set[str]]] = {
    "write the database file": (lambda t: rt.write_file(str(t["db"])), FILE_GUARDS),
    "forge a web session": (
        lambda t: rt.write_file(str(t["sessions"] / "forged"), '{"uid": 1}'),
        FILE_GUARDS,
    ),
    "drop a .pth into the virtual environment": (
        lambda t: rt.write_file(str(_site_packages() / "zz_redteam.pth"), "# redteam\n"),
        FILE_GUARDS,
    ),
    "read the session key": (lambda t: rt.read_file(str(t["key"])), FILE_GUARDS),
    "read another user's model file": (
        lambda t: rt.read_file(str(t["other_model"])),
        FILE_GUARDS,
    ),
    "write into another user's scores": (
        lambda t: rt.write_file(str(t["other_scores"])),
        FILE_GUARDS,
    ),
    "read the daemon's environment": (
        lambda t: rt.read_file(str(t["victim"] / "environ")),
        FILE_GUARDS,
    ),
    "signal the daemon": (
        lambda t: rt.signal_process(int(t["victim"].name)),
        {"pidns", "landlock", "uid"},
    ),
}


def _layers(layer: str) -> set[str]:
    return {layer, "pidns"} if layer == "mountns" else {layer}


def _undo(name: str, t: dict[str, Path]) -> None:
    """Remove what a successful control run left behind (never a live .pth file)."""
    (_site_packages() / "zz_redteam.pth").unlink(missing_ok=True)
    (t["sessions"] / "forged").unlink(missing_ok=True)


@pytest.mark.parametrize(
    "attack, layer",
    [(a, layer) for a, (_, guards) in ATTACKS.items() for layer in sorted(guards)],
)
def test_each_layer_alone_stops_the_attack(
    attack: str, layer: str, target: dict[str, Path], sandboxes: Any
) -> None:
    if layer == "uid" and os.getuid() != 0:
        pytest.skip("the uid layer applies to a root daemon")
    assert layer in sandboxes.layers, f"{layer} is not available on this machine"
    factory, _ = ATTACKS[attack]
    before = (target["db"].read_bytes(), sorted(os.listdir(target["sessions"])))
    try:
        reply = rt.run_in_host(sandboxes, factory(target), _layers(layer))
        assert not rt.succeeded(reply), f"{attack}: not stopped by {layer} alone"
        assert (target["db"].read_bytes(), sorted(os.listdir(target["sessions"]))) == before
        assert not (_site_packages() / "zz_redteam.pth").exists()
    finally:
        _undo(attack, target)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_attack_works_without_the_sandbox(
    attack: str, target: dict[str, Path], sandboxes: Any
) -> None:
    """The control: the same payload in a host without any layer does what it says."""
    factory, _ = ATTACKS[attack]
    try:
        reply = rt.run_in_host(sandboxes, factory(target), set())
        assert rt.succeeded(reply), f"{attack}: the payload did not work even unconfined"
    finally:
        _undo(attack, target)


@pytest.mark.parametrize("layer", ["netns", "landlock", "seccomp"])
def test_network_connect_is_stopped_by_each_layer(layer: str, sandboxes: Any) -> None:
    listener, port = rt.free_port_listening()  # stands for the daemon's own port
    with listener:
        assert not rt.succeeded(rt.run_in_host(sandboxes, rt.connect(port), {layer}))
        assert rt.succeeded(rt.run_in_host(sandboxes, rt.connect(port), set()))


def test_the_whole_sandbox_stops_every_attack(target: dict[str, Path], sandboxes: Any) -> None:
    listener, port = rt.free_port_listening()
    with listener:
        payloads = [f(target) for f, _ in ATTACKS.values()] + [
            rt.connect(port),
            rt.make_admin(str(target["db"]), "mallory@example.com"),
        ]
        for payload in payloads:
            assert not rt.succeeded(rt.run_in_host(sandboxes, payload, set(sandboxes.layers)))
    assert _admin(target["db"]) == 0 and not os.listdir(target["sessions"])
    control = rt.run_in_host(sandboxes, rt.make_admin(str(target["db"]), "mallory@example.com"),
                             set())  # fmt: skip
    assert rt.succeeded(control) and _admin(target["db"]) == 1


# -- processes: survivors, fork bombs, files ---------------------------------------------------


def test_a_setsid_double_fork_dies_with_its_host(sandboxes: Any) -> None:
    """Control first: outside mldropd the survivor outlives its parent. In a host it never
    does: with a PID namespace it dies with the host; without any layer the fork server
    (a child subreaper) kills it as soon as it is orphaned."""
    name = f"rt-{os.getpid() % 10000}-ctl"
    survivor = rt.setsid_survivor(name, 20)
    child = os.fork()
    if child == 0:  # the control runs in a throwaway process, as a model would without us
        survivor(np.zeros(1))
        os._exit(0)
    os.waitpid(child, 0)
    try:
        assert rt.processes_named(name), "control: the double-forked process should survive"
    finally:
        for pid in rt.processes_named(name):
            os.kill(pid, 9)
    for layers, tag in ((set(), "none"), ({"pidns"}, "pidns"), (set(sandboxes.layers), "all")):
        name = f"rt-{os.getpid() % 10000}-{tag}"
        rt.run_in_host(sandboxes, rt.setsid_survivor(name, 20), layers)
        deadline = time.monotonic() + 5
        while rt.processes_named(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not rt.processes_named(name), f"a setsid survivor outlived its host ({tag})"


def test_a_hosts_child_dies_with_the_fork_server(tmp_path: Path) -> None:
    """A model's child process, still its host's child when the fork server stops (the daemon
    stops, or a job's own server ends): it comes back to the server, a subreaper, as the host
    is killed, and the server ends it before it exits itself. Without a PID namespace (a
    container that lacks one) nothing else would: it would outlive the daemon."""
    from mldropd.sandbox.setup import Sandboxes

    settings = Settings()
    settings.server.work_dir = str(tmp_path)
    settings.sandbox.preload = []  # its own server (this one is stopped), quick to start
    own = Sandboxes.start(settings)
    name = f"rt-{os.getpid() % 10000}-left"
    try:
        host, reply = rt.scored_host(own, rt.stays_behind(name, 30), set())
        assert rt.succeeded(reply)
        wait_for(lambda: rt.processes_named(name), timeout=10, interval=0.05, what="the child")
    finally:
        own.stop()
    try:
        assert not rt.processes_named(name), "a host's child outlived its fork server"
    finally:
        for pid in rt.processes_named(name):
            os.kill(pid, 9)
        host.close()


def test_process_limit(sandboxes: Any) -> None:
    limited = rt.run_in_host(sandboxes, rt.fork_many(100), set(sandboxes.layers))
    assert float(limited.value[0]) < 1.0, "a model started 100 processes"
    free = rt.run_in_host(
        sandboxes, rt.fork_many(100), set(), limits=Limits(memory_mb=2048, processes=100_000)
    )
    assert float(free.value[0]) == 1.0


def test_file_size_limit(sandboxes: Any, tmp_path: Path) -> None:
    """Its own /tmp takes files up to [sandbox] max_file_mb, and no more."""
    small = Limits(memory_mb=2048, file_mb=8, tmp_mb=64)
    reply = rt.run_in_host(sandboxes, rt.big_file("/tmp/big", 16), set(sandboxes.layers),
                           limits=small)  # fmt: skip
    assert not rt.succeeded(reply)
    roomy = Limits(memory_mb=2048, file_mb=64, tmp_mb=64)
    reply = rt.run_in_host(sandboxes, rt.big_file("/tmp/big", 16), set(sandboxes.layers),
                           limits=roomy)  # fmt: skip
    assert rt.succeeded(reply)


def test_writing_outside_its_folder_is_refused(sandboxes: Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    reply = rt.run_in_host(sandboxes, rt.big_file(str(outside), 100), set(sandboxes.layers))
    assert not rt.succeeded(reply) and not outside.exists()
    os.chmod(tmp_path, 0o777)  # control: reachable for any uid, and written without a sandbox
    reply = rt.run_in_host(sandboxes, rt.big_file(str(outside), 1), set())
    assert rt.succeeded(reply) and outside.stat().st_size == 1 << 20


# -- the trusted side: other owners, the protocol, the clock -----------------------------------

DAY = dt.date(2026, 11, 29)


def _feature_store(root: Path, n: int = 2500) -> FeatureSettings:
    folder = root / f"dt={DAY.isoformat()}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    pq.write_table(
        pa.table({"entity_id": np.arange(n), "x": rng.standard_normal(n)}), folder / "p.parquet"
    )
    return FeatureSettings(kind="parquet", path=str(root), entity_key="entity_id")


def _task(tmp: Path, run_id: int, owner: int, pipeline: rt.Pipeline, timeout_s: float) -> ModelTask:
    path = tmp / f"m{run_id}.dill"
    path.write_bytes(rt.model_bytes(pipeline))
    return ModelTask(run_id, run_id, 1, owner, path, ("x",), "pandas", "callable", "predict",
                     "entity_id", tmp / f"out-{run_id}", timeout_s)  # fmt: skip


def _score(sandboxes: Any, features: FeatureSettings, tasks: list[ModelTask]) -> dict[int, Any]:
    request = ScoringRequest(features, DAY, 1000, dt.datetime.now(dt.UTC), tuple(tasks))
    return LocalEngine(sandboxes, 2048).score(request, heartbeat=lambda: None)


def _honest_scores_ok(task: ModelTask, features: FeatureSettings) -> bool:
    got = pq.read_table(task.out_dir / PART_FILE).column("score").to_numpy()
    day = pq.read_table(Path(features.path) / f"dt={DAY.isoformat()}")
    return bool(np.array_equal(got, day.column("x").to_numpy() * 3.0))


def _make_honest() -> rt.Pipeline:
    def honest(frame: Any) -> Any:
        return frame["x"].to_numpy() * 3.0

    return honest


def test_another_owners_model_cannot_forge_your_scores(tmp_path: Path, sandboxes: Any) -> None:
    """Owner 1's model patches mldropd's predict in its process; owner 2's scores stay exact.
    Control: in one owner's shared process the patch does reach the other model."""
    features = _feature_store(tmp_path / "features")
    evil = _task(tmp_path, 1, 1, rt.replace_predict(0.4242), 60)
    honest = _task(tmp_path, 2, 2, _make_honest(), 60)
    outcomes = _score(sandboxes, features, [evil, honest])
    assert outcomes[2].ok and _honest_scores_ok(honest, features)
    (tmp_path / "shared").mkdir()
    shared = _task(tmp_path / "shared", 3, 1, _make_honest(), 60)
    evil2 = _task(tmp_path / "shared", 4, 1, rt.replace_predict(0.4242), 60)
    _score(sandboxes, features, [evil2, shared])
    got = pq.read_table(shared.out_dir / PART_FILE).column("score").to_numpy()
    assert set(np.unique(got)) == {0.4242}, "control: the patch works inside one process"


@pytest.mark.parametrize(
    "payload, expect",
    [
        (rt.channel_write(b"this is not a frame\n"), "broke the protocol"),
        (
            rt.channel_write(struct.pack("!BIQ", 18, 0, 1 << 40)),  # 1 TB of "scores"
            "broke the protocol",
        ),
        (
            # a forged reply for its own batch, then hang past every time limit
            rt.channel_write(struct.pack("!BIQ", 18, 0, 8 * 1000) + b"\0" * 8000, 600),
            "time limit of 3 s",
        ),
    ],
    ids=["garbage", "huge", "forged-then-hang"],
)
def test_a_lying_host_fails_alone(
    payload: rt.Pipeline, expect: str, tmp_path: Path, sandboxes: Any
) -> None:
    features = _feature_store(tmp_path / "features")
    liar = _task(tmp_path, 1, 1, payload, 3)
    honest = _task(tmp_path, 2, 2, _make_honest(), 60)
    started = time.monotonic()
    outcomes = _score(sandboxes, features, [liar, honest])
    assert not outcomes[1].ok and expect in str(outcomes[1].error), outcomes[1].error
    assert outcomes[2].ok and _honest_scores_ok(honest, features)
    assert not (liar.out_dir / PART_FILE).exists()
    assert time.monotonic() - started < 60


def test_the_parent_keeps_the_clock_and_caps_timeouts(tmp_path: Path, sandboxes: Any) -> None:
    """params.timeout_s = 10**12 is capped by [engine] max_model_timeout_s."""
    from mldropd.engines.base import timeout_of

    engine = Settings().engine
    engine.max_model_timeout_s = 2
    limit = timeout_of({"timeout_s": 10**12}, engine)
    assert limit == 2.0
    features = _feature_store(tmp_path / "features")
    slow = _task(tmp_path, 1, 1, rt.sleeps(3600), limit)
    honest = _task(tmp_path, 2, 2, _make_honest(), 60)
    started = time.monotonic()
    outcomes = _score(sandboxes, features, [slow, honest])
    assert "time limit of 2 s" in str(outcomes[1].error)
    assert outcomes[2].ok and time.monotonic() - started < 30


# -- validation: the contract is checked again on the trusted side -----------------------------


def _validate(tmp_path: Path, blob: bytes, sandboxes: Any) -> Any:
    from mldropd.demo import write_features
    from mldropd.validation import validate_in_sandbox

    settings = Settings()
    settings.features.path = str(tmp_path / "features")
    write_features(Path(settings.features.path), [DAY], 200, 2)
    path = tmp_path / "model.dill"
    path.write_bytes(blob)
    return validate_in_sandbox(path, settings, sandboxes)


def _loaded_frame(summary: dict[str, Any]) -> bytes:
    import json

    body = json.dumps({"ok": True, "summary": summary, "warnings": []}).encode()
    return struct.pack("!BIQ", 17, 0, len(body)) + body


def _at_load(action: rt.Pipeline) -> Any:
    """An object whose unpickling calls action (model code at load time)."""

    class AtLoad:
        def __reduce__(self) -> Any:
            return (action, (np.zeros(1),))

    return AtLoad()


def test_a_forged_contract_is_refused(tmp_path: Path, sandboxes: Any) -> None:
    forged = {
        "features": ["f00"],
        "output": "predict",
        "input": "pandas",
        "call": "callable",
        "pipeline_type": "<script>alert(1)</script>",
        "params": {"timeout_s": 999999999},
        "contract_version": 1,
    }
    blob = rt.model_bytes(_make_honest(), meta={"x": _at_load(rt.channel_write(
        _loaded_frame(forged)))})  # fmt: skip
    result = _validate(tmp_path, blob, sandboxes)
    assert result.summary is None
    assert any("invalid pipeline type" in e.message for e in result.errors), result.errors


def test_a_huge_validation_report_is_refused_unread(tmp_path: Path, sandboxes: Any) -> None:
    huge = struct.pack("!BIQ", 17, 0, 400 * 1024 * 1024)
    blob = rt.model_bytes(_make_honest(), meta={"x": _at_load(rt.channel_write(huge))})
    result = _validate(tmp_path, blob, sandboxes)
    assert result.summary is None
    assert "a load report of 419430400 bytes" in result.errors[0].message


@pytest.mark.slow  # the CLI in a real process
def test_home_files_are_private(tmp_path: Path) -> None:
    """What the daemon creates is 0700/0600 (umask 077 from the command line)."""
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[server]\nport = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "mldropd", "users", "add", "ann@example.com", "--config",
         str(home / "config.toml")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    db = home / "mldropd.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for folder in [p for p in home.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


@ROOT_ONLY
def test_sandboxes_of_two_fork_servers_never_share_a_uid(sandboxes: Any, tmp_path: Path) -> None:
    """A daemon's fork server and a CLI run's (or two daemons') claim sandbox uids on the whole
    host: two owners' hosts with one uid would share RLIMIT_NPROC (one could fork-bomb the
    other out of processes) and the files each one creates."""
    from mldropd.sandbox.hosts import ModelHost
    from mldropd.sandbox.policy import Policy, python_read_paths
    from mldropd.sandbox.setup import Sandboxes

    settings = Settings()
    settings.server.work_dir = str(tmp_path)
    other = Sandboxes.start(settings)
    hosts: list[ModelHost] = []
    uids = []
    try:
        for server in (sandboxes, other, sandboxes, other):
            policy = Policy(
                layers=server.layers,
                limits=Limits(memory_mb=2048, cpu_s=60),
                read=python_read_paths(),
            )
            assert "uid" in policy.layers
            host = ModelHost(server.server, policy, "uid-probe")
            hosts.append(host)  # stays alive while the next ones start
            host.start()
            assert host.load(0, rt.SPEC, rt.model_bytes(rt.reports_uid()), 60).kind == "loaded"
            batch = pa.record_batch({"x": pa.array([0.0])})
            assert host.send_batch([0], batch) is None
            reply = host.reply(0, 1, time.monotonic(), 60)
            assert reply.kind == "scores", reply
            uids.append(int(np.asarray(reply.value)[0]))
    finally:
        for host in hosts:
            host.kill()
            host.close()
        other.stop()
    assert len(set(uids)) == 4 and all(uid >= 900000 for uid in uids), uids


def test_a_read_path_under_tmp_is_seen_through_the_private_tmp(
    sandboxes: Any, tmp_path: Path
) -> None:
    """Python installed under /tmp (a CI clone's /tmp/ci/.venv) stays readable to the host:
    the private /tmp is mounted first and the read paths inside it, not hidden under it."""
    from mldropd.sandbox.hosts import ModelHost
    from mldropd.sandbox.policy import Policy, python_read_paths

    shared = tmp_path / "site"
    shared.mkdir()
    (shared / "data.txt").write_text("a library file\n")
    for folder in (tmp_path, shared):
        folder.chmod(0o755)
    assert str(shared).startswith("/tmp/")
    policy = Policy(
        layers=sandboxes.layers,
        limits=Limits(memory_mb=2048, cpu_s=60),
        read=[*python_read_paths(), str(shared)],
    )
    assert "mountns" in policy.layers
    host = ModelHost(sandboxes.server, policy, "tmp-read")
    host.start()
    try:
        pipeline = rt.read_file(str(shared / "data.txt"))
        assert host.load(0, rt.SPEC, rt.model_bytes(pipeline), 60).kind == "loaded"
        batch = pa.record_batch({"x": pa.array([0.0])})
        assert host.send_batch([0], batch) is None
        assert rt.succeeded(host.reply(0, 1, time.monotonic(), 60))
    finally:
        host.kill()
        host.close()
