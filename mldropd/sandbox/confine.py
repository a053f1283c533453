"""The child confines itself: called right after the fork server forks it, before any model
byte is read. Layers come from the Policy (what the probe found and the settings require);
rlimits, no_new_privs, a scrubbed environment and closed descriptors always apply.

Order matters: namespaces need privileges that the later steps give up; seccomp comes last
because it forbids the calls (unshare, mount) the earlier steps make.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from pathlib import Path

from mldropd.sandbox import landlock, seccomp
from mldropd.sandbox import syscalls as sc
from mldropd.sandbox.policy import DEVICES, SYSTEM_READ, Policy

SANDBOX_TMP = "/tmp"  # the private scratch folder as the child sees it (mountns)

_STATVFS_TO_MS = {
    os.ST_RDONLY: sc.MS_RDONLY,
    os.ST_NOSUID: sc.MS_NOSUID,
    os.ST_NODEV: sc.MS_NODEV,
    os.ST_NOEXEC: sc.MS_NOEXEC,
    os.ST_NOATIME: 1024,
    os.ST_NODIRATIME: 2048,
    os.ST_RELATIME: 1 << 21,
}


def enter(policy: Policy, root_mount: str, keep_fds: list[int]) -> str:
    """Confine this (just forked) process; return the folder it may write.

    With a PID namespace this process becomes a supervisor that never returns: its child,
    the first process of the new namespace, returns here and runs the model code."""
    os.setsid()
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the fork server
    _close_fds_except(keep_fds)
    from mldropd.sandbox.probe import privileged

    root = privileged()
    if os.getuid() == 0 and not root:
        # Root without CAP_SYS_ADMIN (root in a container): become the sandbox's uid first,
        # then make the namespaces as an unprivileged user does, in a user namespace.
        _drop_root(policy)
    flags = _namespace_flags(policy.layers, root)
    if flags:
        uid, gid = os.getuid(), os.getgid()
        sc.unshare(flags)
        if flags & sc.CLONE_NEWUSER:
            _map_ids(uid, gid)
    if "pidns" in policy.layers:
        _fork_into_pid_namespace()
    writable = policy.private_dir
    if "mountns" in policy.layers:
        _build_root(policy, root_mount, root)
        writable = SANDBOX_TMP
    _set_limits(policy)
    if root:
        _drop_root(policy)
    else:
        with contextlib.suppress(OSError):  # keeps no capability of a user namespace
            sc.drop_capabilities()
    _scrub_environment(writable, policy.threads)
    os.chdir(writable)
    with contextlib.suppress(OSError):
        os.nice(policy.nice)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    sc.prctl(sc.PR_SET_DUMPABLE, 0)  # no core dumps, no /proc/<pid>/mem for same-uid peers
    if "landlock" in policy.layers:
        _landlock(policy, writable, "mountns" in policy.layers)
    if "seccomp" in policy.layers:
        seccomp.install()
    return writable


def _namespace_flags(layers: frozenset[str], root: bool) -> int:
    flags = 0
    if "mountns" in layers:
        flags |= sc.CLONE_NEWNS
    if "pidns" in layers:
        flags |= sc.CLONE_NEWPID
    if "netns" in layers:
        flags |= sc.CLONE_NEWNET
    if flags:
        flags |= sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
    if flags and not root:
        flags |= sc.CLONE_NEWUSER  # an unprivileged process needs it for the others
    return flags


def _map_ids(uid: int, gid: int) -> None:
    """Inside the new user namespace the child keeps its own uid and gid (not root)."""
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _fork_into_pid_namespace() -> None:
    """Fork the namespace's first process; this process waits for it and dies as it died.

    When the first process of a PID namespace ends, the kernel kills every process left in
    it: a model's double-forked, setsid'd descendants end with it."""
    pid = os.fork()
    if pid == 0:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # the supervisor killed: end too
        return
    os.closerange(0, 1 << 16)  # the supervisor holds nothing the model could use
    status = 0
    with contextlib.suppress(ChildProcessError):
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _build_root(policy: Policy, mnt: str, root: bool) -> None:
    """A minimal root file system: read-only binds of what Python needs, a private tmpfs /tmp,
    the devices of DEVICES, a /proc of the new PID namespace; then pivot into it."""
    os.umask(0o022)  # the skeleton's folders must be traversable by the sandbox's own uid
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", mnt, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755,size=4m")
    # The private /tmp first: a read path under /tmp (a virtualenv in /tmp/ci/.venv) is then
    # bound inside it, where the model sees it, instead of being hidden by it.
    os.makedirs(mnt + SANDBOX_TMP, exist_ok=True)
    owner = f",uid={policy.uid},gid={policy.gid}" if root and policy.uid is not None else ""
    sc.mount(
        "tmpfs",
        mnt + SANDBOX_TMP,
        "tmpfs",
        sc.MS_NOSUID | sc.MS_NODEV,
        f"mode=0700,size={policy.limits.tmp_mb}m{owner}",
    )
    for src in sorted(set(policy.read) | set(SYSTEM_READ), key=len):
        _bind(src, mnt, read_only=True)
    for dev in DEVICES:
        _bind(dev, mnt, read_only=False)
    if "pidns" in policy.layers:
        os.makedirs(mnt + "/proc", exist_ok=True)
        sc.mount("proc", mnt + "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    old = mnt + "/.old-root"
    os.mkdir(old)
    sc.pivot_root(mnt, old)
    os.chdir("/")
    sc.umount2("/.old-root", sc.MNT_DETACH)
    os.rmdir("/.old-root")
    flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
    sc.mount(None, "/", None, flags)
    os.umask(0o077)


def _bind(src: str, mnt: str, *, read_only: bool) -> None:
    if not os.path.lexists(src):
        return
    dst = mnt + src
    if os.path.lexists(dst):
        return  # inside a folder bound already (or the same symlink)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src) and os.path.dirname(src) == "/":
        os.symlink(os.readlink(src), dst)  # /lib -> usr/lib on merged-/usr systems
        return
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        Path(dst).touch()
    sc.mount(src, dst, None, sc.MS_BIND | sc.MS_REC)
    if read_only:
        # Keep the flags the source mount has (a user namespace may not clear locked ones).
        current = os.statvfs(dst).f_flag
        kept = 0
        for st, ms in _STATVFS_TO_MS.items():
            if current & st:
                kept |= ms
        sc.mount(None, dst, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | kept)


def _drop_root(policy: Policy) -> None:
    """Root daemon: become the sandbox's own unprivileged uid/gid, keeping no capability."""
    if "uid" in policy.layers and policy.uid is not None and policy.gid is not None:
        os.setgroups([])
        os.setgid(policy.gid)
        os.setuid(policy.uid)
    else:
        sc.drop_capabilities()  # still uid 0, but without any capability


def _set_limits(policy: Policy) -> None:
    lim = policy.limits
    mb = 1024 * 1024
    for kind, value in (
        (resource.RLIMIT_AS, lim.memory_mb * mb),
        (resource.RLIMIT_NPROC, lim.processes),
        (resource.RLIMIT_FSIZE, lim.file_mb * mb),
        (resource.RLIMIT_NOFILE, lim.open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        _limit(kind, value, value)
    _limit(resource.RLIMIT_CPU, lim.cpu_s, lim.cpu_s + 5)


def _limit(kind: int, soft: int, hard: int) -> None:
    """Set a limit, never above the inherited hard limit (raising it needs CAP_SYS_RESOURCE,
    which even a root daemon in a container often lacks)."""
    _, current = resource.getrlimit(kind)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(kind, (soft, hard))


def _scrub_environment(home: str, threads: int) -> None:
    n = str(threads or os.cpu_count() or 1)
    os.environ.clear()
    os.environ.update(
        PATH="/usr/bin:/bin",
        HOME=home,
        TMPDIR=home,
        LANG="C.UTF-8",
        MPLCONFIGDIR=home,
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS=n,
        OPENBLAS_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
    )


def _landlock(policy: Policy, writable: str, private_root: bool) -> None:
    read = [*policy.read, *SYSTEM_READ]
    if private_root:
        read.append("/proc")  # the new PID namespace's own /proc
    else:
        read += [f"/proc/{os.getpid()}", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat"]
    rules = landlock.Ruleset(read=landlock.existing(read), write=landlock.existing([writable]))
    rules.write += landlock.existing(["/dev/null", "/dev/full"])
    rules.read += landlock.existing(DEVICES)
    rules.restrict()


def _close_fds_except(keep: list[int]) -> None:
    keep_set = set(keep) | {0, 1, 2}
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(1024))
    for fd in open_fds:
        if fd not in keep_set:
            with contextlib.suppress(OSError):
                os.close(fd)
