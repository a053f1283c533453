"""A seccomp filter for model processes, built with libseccomp (the `pyseccomp` binding).

Default: allow. Denied (EPERM): making sockets of any family (a pair of connected sockets,
socketpair, stays allowed: it reaches nothing), tracing or reading other processes' memory,
namespaces and mounts, kernel modules and keys, BPF, perf, io_uring (it bypasses seccomp
for the operations it queues), and new user namespaces through clone. clone3 answers ENOSYS:
its flags live in memory a filter cannot read, and the C library then falls back to clone,
whose flags can be checked.
"""

from __future__ import annotations

import errno
from typing import Any

try:  # loaded before any confinement: finding libseccomp runs ldconfig
    import pyseccomp as _sc
except (ImportError, OSError, RuntimeError):  # no binding or no libseccomp2
    _sc = None

# Syscalls a model has no business with; names unknown on an architecture are skipped.
DENIED = (
    "socket",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsmount",
    "fspick",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "iopl",
    "ioperm",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "syslog",
    "quotactl",
    "fanotify_init",
    "lookup_dcookie",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
    "uselib",
    "vhangup",
)
# clone flags that would start a new namespace (user, net, pid, mount, ipc, uts, cgroup).
_NAMESPACE_FLAGS = 0x10000000 | 0x40000000 | 0x20000000 | 0x00020000 | 0x08000000 | 0x04000000
_NAMESPACE_FLAGS |= 0x02000000


def available() -> bool:
    """True when libseccomp can be loaded here."""
    return _sc is not None


def build_filter() -> Any:
    """The filter, not yet loaded (tests export it to check its rules)."""
    sc = _require()
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, OSError):  # not a syscall on this architecture
            continue
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # clone(flags, ...): deny when any namespace flag is set. MASKED_EQ(mask, value) matches
    # (flags & mask) == value, so each flag gets its own rule.
    bit = 1
    while bit <= _NAMESPACE_FLAGS:
        if _NAMESPACE_FLAGS & bit:
            flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
        bit <<= 1
    return flt


def install() -> None:
    """Load the filter into this thread's process (needs no_new_privs or CAP_SYS_ADMIN)."""
    sc = _require()
    flt = build_filter()
    flt.set_attr(sc.Attr.CTL_NNP, 1)  # set no_new_privs as part of loading
    flt.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread of the process, not only this one
    flt.load()


def _require() -> Any:
    if _sc is None:
        raise OSError(0, "libseccomp is not available (install libseccomp2 and pyseccomp)")
    return _sc
