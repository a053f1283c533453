"""What this kernel (and this container) lets the sandbox apply, found by trying each layer.

Each layer is tried alone in a throwaway child exactly as a model host applies it
(mldropd.sandbox.confine.enter), and then checked from inside: the file it must not open,
the socket it must not make, its own pid 1. A layer counts only when the check holds. Run in a
single-threaded process (the fork server probes itself before it serves).

`python -m mldropd.sandbox.probe` prints the result as JSON.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

from mldropd.sandbox import landlock
from mldropd.sandbox.policy import LAYERS, Limits, Policy

_STDLIB = sysconfig.get_paths()["stdlib"]  # found before a probe drops its privileges


@dataclass(frozen=True)
class LayerStatus:
    available: bool
    detail: str


def _check(layer: str) -> None:
    """Inside the confined child: raise unless `layer` is really in force."""
    if layer == "landlock":
        try:
            open("/etc/hostname").close()  # noqa: SIM115
        except PermissionError:
            return
        raise RuntimeError("a file outside the allowed paths could still be read")
    if layer == "seccomp":
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        except PermissionError:
            return
        raise RuntimeError("a socket could still be made")
    if layer == "netns":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.connect(("127.0.0.1", 9))
            except OSError as exc:
                if exc.errno == errno.ENETUNREACH:
                    return
            raise RuntimeError("127.0.0.1 could still be reached")
    if layer == "pidns" and os.getpid() != 1:
        raise RuntimeError(f"pid is {os.getpid()}, not 1")
    if layer == "mountns" and os.path.exists("/etc/hostname"):
        raise RuntimeError("the host's /etc/hostname is still visible")
    if layer == "uid" and os.getuid() == 0:
        raise RuntimeError("still uid 0")
    if layer == "uid":
        stdlib = _STDLIB
        try:
            os.listdir(stdlib)
        except PermissionError:
            raise RuntimeError(
                f"the sandbox uid cannot read the Python installation ({stdlib}: a parent "
                "folder is private); it applies only together with mountns"
            ) from None


def _try(layer: str, root_mount: str, uid: int | None) -> LayerStatus:
    layers = set(layer.split("+"))
    if "mountns" in layers:
        layers.add("pidns")  # its /proc is the new PID namespace's
    private = tempfile.mkdtemp(prefix="mldropd-probe-")
    if uid is not None:
        try:
            os.chown(private, uid, uid)
        except OSError as exc:  # e.g. root of a rootless container: the uid is not mapped
            shutil.rmtree(private, ignore_errors=True)
            return LayerStatus(
                False,
                f"uid {uid} cannot be used here ({exc.strerror}; a user namespace may not map "
                "it): set [sandbox] uid_base or [sandbox] user to a uid that exists here",
            )
    from mldropd.sandbox.policy import python_read_paths

    policy = Policy(
        layers=frozenset(layers),
        limits=Limits(memory_mb=1024, cpu_s=30, processes=64),
        read=python_read_paths(),
        private_dir=private,
        uid=uid,
        gid=uid,
    )
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the throwaway child
        os.close(r)
        code = 1
        try:
            from mldropd.sandbox import confine

            confine.enter(policy, root_mount, [w])
            for one in layer.split("+"):
                _check(one)
            code = 0
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(w, f"{type(exc).__name__}: {exc}".encode()[:500])
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(private, ignore_errors=True)
    ok = os.waitstatus_to_exitcode(status) == 0
    return LayerStatus(ok, "in force" if ok else message or f"the probe ended with {status}")


def probe(uid: int | None = None) -> dict[str, LayerStatus]:
    """Try every layer; uid is the unprivileged uid a root daemon's sandboxes run as."""
    root = privileged()
    root_mount = tempfile.mkdtemp(prefix="mldropd-probe-root-")
    os.chmod(root_mount, 0o755)
    found: dict[str, LayerStatus] = {}
    try:
        abi = landlock.abi_version()
        for layer in LAYERS:
            if layer == "landlock" and abi < 1:
                found[layer] = LayerStatus(False, "the kernel has no Landlock (or it is off)")
            elif layer == "uid" and os.getuid() != 0:
                found[layer] = LayerStatus(True, f"the daemon already runs as uid {os.getuid()}")
            elif layer == "userns" and root:
                found[layer] = LayerStatus(True, "not needed: the daemon runs as root")
            elif layer == "userns":
                found[layer] = _try_userns()
            else:
                found[layer] = _try(layer, root_mount, uid if layer == "uid" else None)
        if root and not found["uid"].available and "with mountns" in found["uid"].detail:
            # The uid works; only the installation is out of its reach without a private root.
            with_root = _try("uid+mountns", root_mount, uid)
            found["uid"] = LayerStatus(
                with_root.available and found["mountns"].available,
                "in force (with mountns: the Python installation is bound into its root)"
                if with_root.available
                else f"{found['uid'].detail}; with mountns: {with_root.detail}",
            )
        if abi and found["landlock"].available:
            found["landlock"] = LayerStatus(True, f"in force (ABI {abi})")
    finally:
        shutil.rmtree(root_mount, ignore_errors=True)
    return found


def privileged() -> bool:
    """Root with CAP_SYS_ADMIN: makes namespaces and switches uids without a user namespace.
    (Root in a container often lacks CAP_SYS_ADMIN: it is then probed as an unprivileged user.)"""
    from mldropd.sandbox.syscalls import capabilities_effective

    return os.getuid() == 0 and bool(capabilities_effective() & (1 << 21))  # CAP_SYS_ADMIN


def _try_userns() -> LayerStatus:
    pid = os.fork()
    if pid == 0:
        from mldropd.sandbox import syscalls as sc

        try:
            sc.unshare(sc.CLONE_NEWUSER)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return LayerStatus(True, "in force")
    return LayerStatus(False, "unshare(CLONE_NEWUSER) is refused (kernel setting or seccomp)")


def as_json(found: dict[str, LayerStatus]) -> dict[str, dict[str, object]]:
    return {k: {"available": v.available, "detail": v.detail} for k, v in found.items()}


if __name__ == "__main__":
    uid = int(sys.argv[1]) if len(sys.argv) > 1 else None
    print(json.dumps(as_json(probe(uid))))
