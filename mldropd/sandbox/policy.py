"""What a sandboxed process may reach: the layers to apply, the paths it may read, its limits.

A Policy is plain data: the fork server builds one per child from the settings and the probe,
and the child applies it to itself (mldropd.sandbox.confine) before it reads a model byte.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every layer, in the order a child applies them (rlimits and no_new_privs always apply).
LAYERS = ("uid", "userns", "mountns", "pidns", "netns", "landlock", "seccomp")

LAYER_HELP = {
    "uid": "a dedicated unprivileged uid/gid per sandbox (when the daemon runs as root)",
    "userns": "a user namespace (lets an unprivileged daemon make the namespaces below)",
    "mountns": "a private mount namespace: a minimal read-only root, private /tmp and /proc",
    "pidns": "a PID namespace: the sandbox sees only its own processes, and they all die with it",
    "netns": "a network namespace without interfaces: no network at all",
    "landlock": "Landlock: read-only Python installation, write only its /tmp, no TCP, "
    "no signals or abstract sockets outside the sandbox",
    "seccomp": "seccomp: no sockets, no ptrace, no namespaces, mounts, BPF, io_uring or keys",
}

# System files a Python process and its native libraries read; nothing user-owned.
SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/sys/devices/system/cpu",
)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


@dataclass
class Limits:
    """Resource limits of one sandboxed process (rlimits)."""

    memory_mb: int = 8192  # RLIMIT_AS
    cpu_s: int = 3600  # RLIMIT_CPU, all threads together
    processes: int = 64  # RLIMIT_NPROC, threads included
    file_mb: int = 256  # RLIMIT_FSIZE: the largest file it may write
    tmp_mb: int = 256  # size of its private /tmp when it is a tmpfs (mountns)
    open_files: int = 1024  # RLIMIT_NOFILE


@dataclass
class Policy:
    """How one child is confined."""

    layers: frozenset[str]
    limits: Limits = field(default_factory=Limits)
    read: list[str] = field(default_factory=list)  # host paths readable (read-only)
    private_dir: str = ""  # host folder it may write when there is no private /tmp
    uid: int | None = None  # drop to this uid/gid (the daemon runs as root)
    gid: int | None = None
    threads: int = 0  # OMP/OpenBLAS/MKL threads (0: the core count)
    nice: int = 10

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers": sorted(self.layers),
            "limits": self.limits.__dict__,
            "read": self.read,
            "private_dir": self.private_dir,
            "uid": self.uid,
            "gid": self.gid,
            "threads": self.threads,
            "nice": self.nice,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """The policy as_dict() made (it crossed the fork server's socket as JSON)."""
        return cls(
            layers=frozenset(data["layers"]),
            limits=Limits(**data["limits"]),
            read=list(data["read"]),
            private_dir=str(data["private_dir"]),
            uid=data["uid"],
            gid=data["gid"],
            threads=int(data["threads"]),
            nice=int(data["nice"]),
        )


def python_read_paths() -> list[str]:
    """What the interpreter needs to import modules: its installation, the virtual environment,
    site-packages and mldropd's own package folders (an editable install lives elsewhere).

    Never the working directory or a repository root: a demo home may live there."""
    import mldropd
    import mldropd.jobs

    paths = {sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths |= {p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    paths |= {str(Path(mldropd.__file__).parent), *mldropd.jobs.__path__}
    real = {str(Path(p).resolve()) for p in paths if Path(p).exists()}
    # The interpreter binary of a venv is a symlink into the base installation.
    real.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    return sorted(_outermost(real))


def _outermost(paths: set[str]) -> set[str]:
    """Drop paths inside another path of the set."""
    ordered = sorted(paths, key=len)
    kept: list[str] = []
    for p in ordered:
        if not any(p == k or p.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(p)
    return set(kept)


def inside(path: str | Path, roots: list[str]) -> str | None:
    """The root of `roots` that contains path, if any."""
    target = str(Path(path).resolve())
    for root in roots:
        r = root.rstrip("/")
        if target == r or target.startswith(r + "/"):
            return root
    return None
