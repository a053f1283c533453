"""The fork server: one pre-imported Python process that forks sandboxed model hosts (and the
daemon's trusted batch jobs), so neither pays an interpreter start or library import.

It starts from a clean interpreter with a scrubbed environment and imports libraries only: it
never reads the database, the secret key, the artifact store or a credential, so nothing a
forked model host inherits is worth stealing. It is single-threaded when it forks (it runs no
model and no query itself) and a child subreaper: a process whose parent dies is re-parented
to it, and any such orphan that is not one of the children it forked is killed on sight — a
model's setsid'd, double-forked descendants cannot outlive their host, namespaces or not.

Clients talk to it over a Unix socket in a private (0700) folder: one connection per child,
which lives as long as the child. The request names the kind of child and passes its file
descriptors (SCM_RIGHTS); the answer is the child's pid and a pidfd (signalling a pidfd never
reaches a recycled pid); when the child ends the server sends its exit status, and when the
client's connection closes first the server kills the child.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import json
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mldropd.sandbox.policy import Policy

log = logging.getLogger(__name__)

# Where fork servers on one host agree on sandbox uids (a tmpfs: the claims end with the boot).
UID_LOCK_DIRS = ("/run/lock/mldropd-sandbox-uids", "/tmp/mldropd-sandbox-uids")
MAX_UID_SLOTS = 65536
_LEN = struct.Struct("!I")
_MAX_REQUEST = 1 << 20
_MAX_FDS = 4
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class ForkServerError(Exception):
    """The fork server could not be started or reached; the message says what to do."""


def import_modules(names: list[str], between: Callable[[], None] | None = None) -> list[str]:
    """Import what is installed of names (in the fork server: what its children inherit);
    return what was imported. A broken optional library must not stop the server. `between`
    is called after each module (the server reports its probe as soon as it is done)."""
    done = []
    for name in names:
        if between is not None:
            between()
        if not _MODULE_NAME.fullmatch(name):
            print(f"fork server: {name!r} is not a module name", file=sys.stderr)
            continue
        try:
            if importlib.util.find_spec(name.split(".")[0]) is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except Exception as exc:
            print(f"fork server: importing {name} failed: {exc}", file=sys.stderr)
            continue
        done.append(name)
    return done


# -- messages (length-prefixed JSON, with descriptors on the first chunk) ----------------------
def send_msg(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    payload = _LEN.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.sendall(payload)


def recv_msg(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors that came with it (raises EOFError at end of stream)."""
    head, fds, _flags, _addr = socket.recv_fds(sock, _LEN.size, _MAX_FDS)
    if not head:
        raise EOFError
    while len(head) < _LEN.size:
        more = sock.recv(_LEN.size - len(head))
        if not more:
            raise EOFError
        head += more
    (n,) = _LEN.unpack(head)
    if n > _MAX_REQUEST:
        raise ValueError(f"a message of {n} bytes")
    body = b""
    while len(body) < n:
        more = sock.recv(n - len(body))
        if not more:
            raise EOFError
        body += more
    return json.loads(body), list(fds)


# -- the server --------------------------------------------------------------------------------
@dataclass
class _Child:
    pid: int
    conn: socket.socket | None = None
    cleanup: list[str] = field(default_factory=list)
    uid_slot: int | None = None
    uid_lock: int | None = None  # the flock'ed file that holds uid_slot for this host


class Server:
    """The server loop; runs in the fork server process (mldropd.jobs.forkserver)."""

    def __init__(self, socket_path: str, config: dict[str, Any]) -> None:
        self.socket_path = socket_path
        self.config = config
        self.children: dict[int, _Child] = {}
        self.by_conn: dict[socket.socket, _Child] = {}
        self.selector = selectors.DefaultSelector()
        self.root_mount = tempfile.mkdtemp(prefix="mldropd-sandbox-root-")
        os.chmod(self.root_mount, 0o755)
        self.uid_slots: set[int] = set()
        self.running = True

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        listener.listen(64)
        self.selector.register(listener, selectors.EVENT_READ, None)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "lifeline")
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        try:
            while self.running:
                for key, _ in self.selector.select(timeout=0.5):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                    elif key.data == "lifeline":
                        if not os.read(sys.stdin.fileno(), 4096):
                            self.running = False  # whoever started us is gone: so are we
                    elif key.data is None:
                        conn, _ = listener.accept()
                        self.selector.register(conn, selectors.EVENT_READ, "conn")
                    else:
                        self._on_conn(key.fileobj)  # type: ignore[arg-type]
                self._reap()
                self._kill_orphans()
        finally:
            self._end_all(block_s=5.0)
            shutil.rmtree(self.root_mount, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)

    def _stop(self, *_: object) -> None:
        self.running = False

    def _end_all(self, block_s: float) -> None:
        """Kill and reap every child, and every process that comes to us as they die (a
        sandbox's inner process, which its death signal is still ending): whoever waits for
        the server then finds nothing it started running."""
        deadline = time.monotonic() + block_s
        while (left := set(self.children) | set(_my_children())) and (time.monotonic() < deadline):
            for pid in left:
                _kill(pid)
            self._reap()
            time.sleep(0.01)

    def _on_conn(self, conn: socket.socket) -> None:
        child = self.by_conn.get(conn)
        if child is not None:  # a client connection closing (or talking) after its fork
            with contextlib.suppress(OSError):
                if conn.recv(1, socket.MSG_PEEK):
                    conn.recv(4096)  # nothing more is expected; ignore
                    return
            _kill(child.pid)  # the client is gone: its child goes too
            self._forget_conn(conn)
            return
        try:
            request, fds = recv_msg(conn)
        except (EOFError, OSError, ValueError):
            self._forget_conn(conn)
            return
        try:
            self._fork(conn, request, fds)
        except Exception as exc:  # report to the client; the server keeps serving
            with contextlib.suppress(OSError):
                send_msg(conn, {"error": f"{type(exc).__name__}: {exc}"})
            self._forget_conn(conn)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _forget_conn(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        self.by_conn.pop(conn, None)
        conn.close()

    def _fork(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        kind = request.get("kind")
        if kind == "ping":
            info = {k: self.config.get(k) for k in ("preloaded", "probe")}
            send_msg(conn, {"pong": os.getpid(), **info})
            return
        if kind == "import":  # a job's models need a library the server has not imported yet
            # Only a server started for one command or job: a long-lived one keeps to its
            # preload list (an unknown library might start threads and spoil later forks).
            wanted = [str(m) for m in request.get("modules") or []]
            done = import_modules(wanted) if self.config.get("import_on_request") else []
            preloaded = self.config.setdefault("preloaded", [])
            preloaded += [m for m in done if m not in preloaded]
            send_msg(conn, {"imported": done})
            return
        if kind == "sandbox":
            child = self._fork_sandbox(Policy.from_dict(request["policy"]), fds)
        elif kind == "batch":
            child = self._fork_batch(request, fds)
        else:
            raise ValueError(f"unknown request kind {kind!r}")
        child.conn = conn
        self.children[child.pid] = child
        self.by_conn[conn] = child
        pidfd = os.pidfd_open(child.pid)
        try:
            send_msg(conn, {"pid": child.pid}, [pidfd])
        finally:
            os.close(pidfd)

    def _fork_sandbox(self, policy: Policy, fds: list[int]) -> _Child:
        channel, stderr = fds[0], fds[1]
        cleanup: list[str] = []
        slot = None
        if os.getuid() == 0 and "uid" in policy.layers and policy.uid is None:
            if self.config.get("user_uid") is not None:  # [sandbox] user: one named user
                policy.uid, policy.gid = self.config["user_uid"], self.config["user_gid"]
            else:  # each live sandbox its own uid, on the whole host
                base = int(self.config.get("uid_base", 900000))
                slot, uid_lock = self._claim_uid(base)
                policy.uid = policy.gid = base + slot
        if "mountns" not in policy.layers:
            private = tempfile.mkdtemp(prefix="mldropd-sandbox-")
            if os.getuid() == 0 and policy.uid is not None:
                with contextlib.suppress(OSError):  # unmapped uid: the probe said "uid" missing
                    os.chown(private, policy.uid, policy.gid or policy.uid)
            policy.private_dir = private
            cleanup.append(private)
        try:
            pid = os.fork()
        except OSError:
            if slot is not None:
                os.close(uid_lock)
            raise
        if pid == 0:
            _run_child(lambda: _sandbox_main(policy, self.root_mount, channel, stderr))
        if slot is not None:
            self.uid_slots.add(slot)
            return _Child(pid, None, cleanup, slot, uid_lock)
        return _Child(pid, None, cleanup)

    def _claim_uid(self, base: int) -> tuple[int, int]:
        """The lowest uid slot no live sandbox of ANY fork server on this host holds (a
        daemon's and a CLI run's servers, two daemons): a uid shared across servers would share
        RLIMIT_NPROC and file ownership between owners. The claim is a flock on a file named
        after the uid, released when the server closes it after the sandbox ends (or dies)."""
        folder = _uid_lock_dir()
        for slot in range(MAX_UID_SLOTS):
            if slot in self.uid_slots:
                continue
            fd = os.open(f"{folder}/{base + slot}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return slot, fd
        raise OSError(f"all {MAX_UID_SLOTS} sandbox uids from {base} are in use on this host")

    def _fork_batch(self, request: dict[str, Any], fds: list[int]) -> _Child:
        log_fd, channel = fds[0], (fds[1] if len(fds) > 1 else None)
        pid = os.fork()
        if pid == 0:
            _run_child(lambda: _batch_main(request, log_fd, channel))
        return _Child(pid)

    def _reap(self, block_s: float = 0.0) -> None:
        deadline = time.monotonic() + block_s
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if time.monotonic() >= deadline or not self.children:
                    return
                time.sleep(0.05)
                continue
            child = self.children.pop(pid, None)
            if child is None:
                continue  # an orphan killed by _kill_orphans
            for path in child.cleanup:
                shutil.rmtree(path, ignore_errors=True)
            if child.uid_slot is not None:
                self.uid_slots.discard(child.uid_slot)
            if child.uid_lock is not None:
                os.close(child.uid_lock)
            if child.conn is not None:
                with contextlib.suppress(OSError):
                    send_msg(child.conn, {"exit": status, "maxrss_kb": usage.ru_maxrss})
                if child.conn in self.by_conn:
                    self._forget_conn(child.conn)

    def _kill_orphans(self) -> None:
        """Kill processes re-parented to us that we did not fork (a model's escapees)."""
        for pid in _my_children():
            if pid not in self.children:
                _kill(pid)


def _my_children() -> list[int]:
    me = os.getpid()
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{me}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{me}/task/{task}/children").read_text()
                found += [int(p) for p in text.split()]
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _uid_lock_dir() -> str:
    for folder in UID_LOCK_DIRS:
        with contextlib.suppress(OSError):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            st = os.lstat(folder)  # in a world-writable parent: someone else's folder is not ours
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return folder
    raise OSError(f"cannot create a folder for sandbox uid claims: tried {UID_LOCK_DIRS}")


def _run_child(main: Callable[[], int]) -> None:
    """In a forked child: run main and leave with its exit code, never returning to the loop."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        code = main()
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stdin_from_devnull() -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _sandbox_main(policy: Policy, root_mount: str, channel: int, stderr: int) -> int:
    from mldropd.jobs import model_host
    from mldropd.sandbox import confine

    os.dup2(stderr, 2)
    os.dup2(stderr, 1)  # what a model prints goes to the stderr pipe, never the channel
    _stdin_from_devnull()  # not the server's lifeline pipe
    keep = [channel]
    confine.enter(policy, root_mount, keep)
    return model_host.serve(socket.socket(fileno=channel))


def _batch_main(request: dict[str, Any], log_fd: int, channel: int | None) -> int:
    """A trusted batch job: its own environment (it may hold credentials) and log pipe; the
    Spark batch driver also gets its request channel, as descriptor 3."""
    from mldropd.sandbox import syscalls

    os.setpgid(0, 0)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    _stdin_from_devnull()
    if channel is not None:
        os.dup2(channel, 3, inheritable=False)  # the JVM it starts does not get it
    os.closerange(4 if channel is not None else 3, 1 << 16)  # the listener, other clients
    os.environ.clear()
    os.environ.update(request.get("env") or {})
    with contextlib.suppress(OSError):
        os.chdir(request.get("cwd") or "/")
    from mldropd.jobs import score_batch

    return int(score_batch.main(list(request["argv"])) or 0)


# -- the client --------------------------------------------------------------------------------
@dataclass
class Forked:
    """A child of the fork server, seen from the process that asked for it."""

    pid: int
    pidfd: int
    conn: socket.socket
    status: int | None = None
    maxrss_kb: int = 0  # its peak resident memory, as the kernel counted it (once ended)

    def kill(self) -> None:
        """SIGKILL the child (its namespace or process group dies with it)."""
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        """Its wait status once it has ended (None if still running after timeout)."""
        if self.status is not None:
            return self.status
        self.conn.settimeout(timeout)
        try:
            message, _ = recv_msg(self.conn)
        except (TimeoutError, BlockingIOError):
            return None
        except (EOFError, OSError):
            self.status = -1  # the fork server went away
            return self.status
        finally:
            with contextlib.suppress(OSError):
                self.conn.settimeout(None)
        self.status = int(message.get("exit", -1))
        self.maxrss_kb = int(message.get("maxrss_kb") or 0)
        return self.status

    @property
    def exit_code(self) -> int | None:
        """Its exit code once it has exited (None: running, killed, or the server went away)."""
        if self.status is None or self.status == -1 or not os.WIFEXITED(self.status):
            return None
        return os.WEXITSTATUS(self.status)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.conn.close()


class ForkServer:
    """Starts (or connects to) a fork server and asks it for children."""

    def __init__(self, socket_path: str, proc: Any = None, folder: str | None = None) -> None:
        self.socket_path = socket_path
        self.proc = proc
        self.folder = folder
        self._ready = proc is None
        self.probe: dict[str, dict[str, Any]] = {}
        self._start_lock = threading.Lock()  # one reader of the start-up lines at a time

    @classmethod
    def start(
        cls, work_dir: str | Path, config: dict[str, Any], *, wait: bool = True
    ) -> ForkServer:
        """A new fork server under work_dir; wait=False returns while it still imports."""
        from mldropd.sandbox.environment import clean_environment

        base = Path(work_dir)
        base.mkdir(parents=True, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="forkserver-", dir=base)
        os.chmod(folder, 0o700)
        path = os.path.join(folder, "socket")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mldropd.jobs.forkserver", path, json.dumps(config)],
            env=clean_environment(config.get("threads", 0)),
            stdin=subprocess.PIPE,  # the lifeline: closed when this process ends, ending the server
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: select() must see every line that readline() has not read
            cwd="/",
        )
        server = cls(path, proc, folder)
        if wait:
            server.wait_ready()
        return server

    @classmethod
    def connect(cls, socket_path: str) -> ForkServer:
        """A fork server another process started (the daemon's, for its batch jobs)."""
        server = cls(socket_path)
        server.probe = server.ping().get("probe") or {}
        return server

    def wait_probed(self, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        """The probe's findings (the server sends them before it imports the libraries)."""
        with self._start_lock:
            if not self.probe:
                self.probe = json.loads(self._line(b"probe", timeout) or b"{}")
        return self.probe

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until the server has imported its libraries and serves."""
        if self._ready:
            return
        self.wait_probed()
        with self._start_lock:
            if not self._ready:
                self._line(b"ready", timeout)
                self._ready = True

    def _line(self, word: bytes, timeout: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        line = self.proc.stdout.readline() if ready else b""
        got, _, rest = line.strip().partition(b" ")
        if got != word:
            code = self.proc.poll()
            raise ForkServerError(
                "the sandbox fork server did not start"
                + (f" (exit code {code})" if code is not None else f" within {timeout:.0f} s")
                + "; its error is in the log above"
            )
        return rest

    def _request(self, message: dict[str, Any], fds: list[int]) -> Forked:
        self.wait_ready()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.socket_path)
            send_msg(conn, message, fds)
            reply, got = recv_msg(conn)
        except (OSError, EOFError) as exc:
            conn.close()
            raise ForkServerError(f"the sandbox fork server cannot be reached: {exc}") from exc
        if "error" in reply:
            conn.close()
            raise ForkServerError(f"the fork server could not start the process: {reply['error']}")
        return Forked(int(reply["pid"]), got[0], conn)

    def sandbox(self, policy: Policy, channel_fd: int, stderr_fd: int) -> Forked:
        """A confined model host on the given channel socket and stderr pipe."""
        return self._request(
            {"kind": "sandbox", "policy": policy.as_dict()}, [channel_fd, stderr_fd]
        )

    def batch(
        self,
        argv: list[str],
        env: dict[str, str],
        log_fd: int,
        cwd: str,
        channel_fd: int | None = None,
    ) -> Forked:
        """A trusted batch job (mldropd.jobs.score_batch main(argv)) in its own process group;
        channel_fd: a socket it gets as descriptor 3 (the Spark batch driver's requests)."""
        fds = [log_fd] if channel_fd is None else [log_fd, channel_fd]
        return self._request({"kind": "batch", "argv": argv, "env": env, "cwd": cwd}, fds)

    def preload(self, modules: list[str]) -> list[str]:
        """Have the server import modules (those already imported cost nothing), so the
        children it forks from now on inherit them; returns what it imported. Other requests
        wait meanwhile: the server is single-threaded."""
        self.wait_ready()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.socket_path)
            send_msg(conn, {"kind": "import", "modules": list(modules)})
            reply, _ = recv_msg(conn)
        return [str(m) for m in reply.get("imported") or []]

    def ping(self) -> dict[str, Any]:
        """The server's pid and what it preloaded (a health check)."""
        self.wait_ready()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.socket_path)
            send_msg(conn, {"kind": "ping"})
            reply, _ = recv_msg(conn)
        return reply

    def stop(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """End the server (it kills what it forked); wait=False does not wait for it to go."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout if wait else 0.05)
        except subprocess.TimeoutExpired:
            if wait:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None:
                stream.close()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.proc = None


def describe_status(status: int | None, memory_mb: int = 0) -> str:
    """Plain words for a wait status (memory_mb: the limit, named when it may be the cause)."""
    if status is None:
        return "the process did not end"
    if status == -1:
        return "the sandbox fork server went away"
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        limit = f", limit {memory_mb} MB" if memory_mb else ""
        hint = {
            "SIGSEGV": f" (a crash in native code, or the memory limit{limit})",
            "SIGABRT": f" (a crash in native code, or the memory limit{limit})",
            "SIGBUS": " (a crash in native code)",
            "SIGXCPU": " (the CPU time limit)",
            "SIGXFSZ": " (it wrote a file larger than the sandbox allows)",
        }.get(name, "")
        return f"the process was killed by {name}{hint}"
    code = os.waitstatus_to_exitcode(status)
    return "the process exited" if code == 0 else f"the process exited with code {code}"
