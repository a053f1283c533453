"""The sandbox fork server's program: import the libraries models use, then serve forks.

Started by mldropd.sandbox.forkserver.ForkServer.start, never by hand:
python -m mldropd.jobs.forkserver SOCKET_PATH CONFIG_JSON
"""

from __future__ import annotations

import json
import os
import select
import sys
import traceback

from mldropd.sandbox import probe, syscalls
from mldropd.sandbox.forkserver import Server, import_modules

# Always: what a model host and the trusted side of a batch run import.
_HOST_MODULES = ("mldropd.jobs.model_host", "mldropd.sandbox.confine", "mldropd.sandbox.seccomp")


def main(argv: list[str]) -> int:
    socket_path, config = argv[0], json.loads(argv[1])
    # No PR_SET_PDEATHSIG here: it fires when the starting *thread* ends, and a daemon may
    # start us from a short-lived worker thread. Our stdin is a pipe from the process that
    # started us; its end of file (that process gone) stops the server (Server.serve).
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, to be killed
    # What this kernel lets a sandbox apply, tried in a child forked before the libraries load
    # (faster forks) while this process imports them: the two share the cores.
    uid = config.get("user_uid", config.get("uid_base"))
    found = _start_probe(uid if uid is not None else None)

    def report_probe(wait: bool = False) -> None:
        if "probe" not in config and (wait or found.poll()):
            config["probe"] = json.loads(found.result())
            sys.stdout.write("probe " + json.dumps(config["probe"]) + "\n")
            sys.stdout.flush()

    modules = [*_HOST_MODULES, *config.get("preload", [])]
    config["preloaded"] = import_modules(modules, between=report_probe)
    report_probe(wait=True)
    Server(socket_path, config).serve()
    # Leave at once: serve() has ended every child and removed its files; the interpreter's
    # tear-down of the data libraries (seconds) would only keep our stderr, which we share
    # with whoever started us (a script reading `mldropd run`'s output), open.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _Probe:
    """The probe running in a child process; its JSON comes back through a pipe."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd, self.data = pid, fd, b""

    def poll(self) -> bool:
        """True once the child has sent everything (never blocks)."""
        ready, _, _ = select.select([self.fd], [], [], 0)
        while ready:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return True
            self.data += chunk
            ready, _, _ = select.select([self.fd], [], [], 0)
        return False

    def result(self) -> bytes:
        while not self.poll():
            select.select([self.fd], [], [])
        os.close(self.fd)
        os.waitpid(self.pid, 0)
        return self.data or b"{}"


def _start_probe(uid: int | None) -> _Probe:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # single-threaded, as the probe needs: nothing has been imported yet
        code = 1
        try:
            os.close(read_fd)
            with open(write_fd, "wb") as pipe:
                pipe.write(json.dumps(probe.as_json(probe.probe(uid))).encode())
            code = 0
        except BaseException:
            traceback.print_exc()  # the server then reports no layer in force
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    return _Probe(pid, read_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
