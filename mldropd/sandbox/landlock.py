"""Landlock through its three system calls (ctypes): file system, TCP and scope rules.

Not the `landlock` package on PyPI: its 1.0.0.dev5 knows file-system rules only, and the
sandbox needs TCP bind/connect rules (ABI 4) and signal/abstract-socket scoping (ABI 6).
The calls are the same numbers on every Linux architecture (444-446).

A process restricts itself (restrict_self) and everything it starts afterwards inherits the
restriction; it can never be lifted. Rules name what stays allowed; an access right that the
ruleset "handles" and that no rule grants is denied.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2

# File-system access rights, with the ABI that introduced them.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
FS_READ = FS_READ_FILE | FS_READ_DIR
# Everything a private scratch folder needs: create, write, truncate, delete, rename inside.
FS_WRITE = (
    FS_READ
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SYM
    | FS_REFER
    | FS_TRUNCATE
)


class LandlockError(OSError):
    """Landlock is missing, or a rule could not be added."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, os.strerror(err))
    return int(result)


def abi_version() -> int:
    """The kernel's Landlock ABI (0 when Landlock is not there or is disabled)."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    except LandlockError:
        return 0


def fs_rights(abi: int) -> int:
    """Every file-system right this ABI knows (the ruleset handles all of them)."""
    return next(
        mask for version, mask in sorted(_FS_BY_ABI.items(), reverse=True) if abi >= version
    )


@dataclass
class Ruleset:
    """What stays allowed once restrict() has run: paths (with rights) and nothing else."""

    read: list[Path] = field(default_factory=list)
    write: list[Path] = field(default_factory=list)
    deny_tcp: bool = True
    scope: bool = True

    def restrict(self, abi: int | None = None) -> int:
        """Apply to this process (and every process it starts); return the ABI used."""
        abi = abi_version() if abi is None else abi
        if abi < 1:
            raise LandlockError(0, "Landlock is not available in this kernel")
        handled_fs = fs_rights(abi)
        attr = _RulesetAttr(
            handled_access_fs=handled_fs,
            handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP)
            if abi >= 4 and self.deny_tcp
            else 0,
            scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 and self.scope else 0,
        )
        size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
        ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
        try:
            for path in self.read:
                self._allow(ruleset, path, FS_READ, handled_fs)
            for path in self.write:
                self._allow(ruleset, path, FS_WRITE, handled_fs)
            _prctl_no_new_privs()
            _syscall(_SYS_RESTRICT_SELF, ruleset, 0)
        finally:
            os.close(ruleset)
        return abi

    @staticmethod
    def _allow(ruleset: int, path: Path, rights: int, handled: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # e.g. /lib64 on a distribution without it
        try:
            is_dir = os.path.isdir(path)
            # Directory-only rights on a file are refused by the kernel (EINVAL).
            allowed = rights & handled if is_dir else rights & handled & _FILE_RIGHTS
            rule = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
            _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        finally:
            os.close(fd)


_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


def _prctl_no_new_privs() -> None:
    PR_SET_NO_NEW_PRIVS = 38
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def existing(paths: Iterable[str | Path]) -> list[Path]:
    """The given paths that exist, resolved, without duplicates."""
    seen: dict[Path, None] = {}
    for p in paths:
        path = Path(p)
        if path.exists():
            seen.setdefault(path.resolve(), None)
    return list(seen)
