"""The sandbox fork server's program: import the libraries models use, then serve forks.

Started by mldropd.sandbox.forkserver.ForkServer.start, never by hand:
python -m mldropd.jobs.forkserver SOCKET_PATH CONFIG_JSON
"""

from __future__ import annotations

import json
import sys

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
    # What this kernel lets a sandbox apply, tried before the libraries load (faster forks).
    uid = config.get("user_uid", config.get("uid_base"))
    config["probe"] = probe.as_json(probe.probe(uid if uid is not None else None))
    sys.stdout.write("probe " + json.dumps(config["probe"]) + "\n")
    sys.stdout.flush()
    config["preloaded"] = import_modules([*_HOST_MODULES, *config.get("preload", [])])
    Server(socket_path, config).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
