"""Static scan of a pickle: list what it imports and refuse the dangerous, without loading it.

We read the opcodes straight from the file (mapped, never read whole) and emulate the
unpickler's stack symbolically (strings, tuples, imported names and objects built from them;
all else is opaque): nothing is imported, no pickle code runs. Not picklescan (on PyPI) or
fickling: picklescan pairs STACK_GLOBAL with the nearest string opcodes instead of the real
stack, cannot tell "not a pickle" from "truncated" and knows nothing of dill's
`_import_module`/`getattr` calls, which reach any module without a GLOBAL opcode; fickling
decompiles to an AST, more than we need. The rules (what is refused, why) are in pickle_rules.

Linear in the file size: each opcode does constant work (a MARK is an index into the stack,
as the unpickler's metastack; a tuple carries the few followed helpers it holds, so using it
never walks it again; names are capped at MAX_NAME characters). It never raises: a pickle
that nests deeper than MAX_DEPTH, runs past its time budget or exhausts memory gives an error.

What dill 0.4.1 emits with `recurse=True` (measured, protocol 4): a lambda ->
`dill._dill._create_function` + `_create_code` (+ `_import_module('numpy')` for modules it
uses, reported as `numpy`); a closure -> `_create_cell` and
`builtins.getattr(dill._dill, '_setattr', builtins.setattr)` (reported as
`dill._dill._setattr`); notebook classes -> `_create_type`, `_load_type`, `builtins.setattr`;
arrays -> `_create_array`; a bound method -> `_load_type('MethodType')` + `pkg.Class.method`;
`...` -> `_eval_repr('Ellipsis')`; `str.lower` -> `_getattr(str, 'lower', "<method 'lower' of
'str' objects>")`, evaluated by dill as `str.__dict__["lower"]`. sklearn, LightGBM, XGBoost,
CatBoost and statsmodels models add only their classes, `collections` and numpy/pandas names.
So getattr, setattr and dill's helpers are allowed, but followed: `_import_module(m)` counts
as importing `m`, `getattr(x, 'a')` (and `operator.getitem(x, 'a')`) on a named `x` as `x.a`,
on an object built by calling `T` as `T(...).a`; `_getattr` and `_eval_repr` must carry plain
literals. A helper we cannot follow (arguments computed at load time, or the helper passed
around instead of called) is refused.

This scan is a tripwire, not the boundary: a dill function's code is data here and can do
anything when called. Models load and run only in sandboxed child processes.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import pickletools
import time
from dataclasses import dataclass, field
from typing import Any

from mldropd.pickle_rules import UNRESOLVED, is_dangerous, refusal
from mldropd.pickle_stack import (
    EMPTY,
    MAX_DEPTH,
    OPAQUE,
    Corrupt,
    Scanner,
    Stopped,
    make_tuple,
    too_deep,
)

__all__ = [
    "MAX_DEPTH", "UNRESOLVED", "ScanResult", "is_dangerous", "refusal", "scan_bytes", "scan_pickle"
]  # fmt: skip

_BIG_ARG = 1 << 20  # byte/string arguments above this are skipped, not copied
_CHECK_EVERY = 1 << 15  # opcodes between two looks at the clock
# Serialized Python code: its presence means the file carries functions (lambdas, notebook code).
_CODE = frozenset({"dill._dill._create_function", "dill._dill._create_code"})


@dataclass(frozen=True)
class ScanResult:
    """What a pickle imports, which of that is refused (and why), and whether it could be read."""

    globals: list[str]
    refused: list[str]
    has_functions: bool
    error: str | None
    protocol: int | None
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True if the pickle was read to the end and imports nothing refused."""
        return self.error is None and not self.refused


# ---- reading opcodes ---------------------------------------------------------------------------

# How each opcode's argument is laid out (kind, width), and what the scan does with it (action).
_FIXED, _LINE, _LINE_PAIR, _COUNTED = range(4)
_COUNT_WIDTH = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_TEXT = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE",
                   "BINUNICODE", "BINUNICODE8"})  # fmt: skip
_INT_ARG = frozenset({"PROTO", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET"})
# Actions: 0 push one opaque value (numbers, bytes, None, empty containers: the bulk of a file);
# 1 pop and push as pickletools documents the opcode; the rest are named below.
_PUSH, _GENERIC = 0, 1
_ACTIONS = {
    name: i
    for i, name in enumerate(
        (
            "TEXT",
            "PUT",
            "GET",
            "MARK",
            "EMPTY_TUPLE",
            "TUPLE_N",
            "TUPLE",
            "GLOBAL",
            "STACK_GLOBAL",
            "REDUCE",
            "NEWOBJ",
            "NEWOBJ_EX",
            "INST",
            "OBJ",
            "EXT",
            "POP",
            "DUP",
            "PROTO",
            "STOP",
            "FRAME",
        ),  # fmt: skip
        start=2,
    )
}
_ALIASES = {"BINPUT": "PUT", "LONG_BINPUT": "PUT", "MEMOIZE": "PUT", "BINGET": "GET",
            "LONG_BINGET": "GET", "TUPLE1": "TUPLE_N", "TUPLE2": "TUPLE_N", "TUPLE3": "TUPLE_N",
            "EXT1": "EXT", "EXT2": "EXT", "EXT4": "EXT"}  # fmt: skip
_Entry = tuple[str, int, int, int, bool, int, bool, int, int]


def _entry(op: pickletools.OpcodeInfo) -> _Entry:
    """(name, protocol, arg kind, arg width, signed length, action, uses MARK, pops, pushes)."""
    if op.arg is None:
        kind, width, signed = _FIXED, 0, False
    elif op.arg.name == "stringnl_noescape_pair":
        kind, width, signed = _LINE_PAIR, 0, False
    elif op.arg.n == pickletools.UP_TO_NEWLINE:
        kind, width, signed = _LINE, 0, False
    elif op.arg.n >= 0:
        kind, width, signed = _FIXED, op.arg.n, False
    else:
        kind, (width, signed) = _COUNTED, _COUNT_WIDTH[op.arg.n]
    before = op.stack_before
    uses_mark = pickletools.markobject in before
    pops = before.index(pickletools.markobject) if uses_mark else len(before)
    special = "TEXT" if op.name in _TEXT else _ALIASES.get(op.name, op.name)
    action = _ACTIONS.get(special, _PUSH if not before and len(op.stack_after) == 1 else _GENERIC)
    return (op.name, op.proto, kind, width, signed, action, uses_mark, pops, len(op.stack_after))


_TABLE: list[_Entry | None] = [None] * 256
for _op in pickletools.opcodes:
    _TABLE[ord(_op.code)] = _entry(_op)
(_A_TEXT, _A_PUT, _A_GET, _A_MARK, _AEMPTY_TUPLE, _A_TUPLE_N, _A_TUPLE, _A_GLOBAL,
 _A_STACK_GLOBAL, _A_REDUCE, _A_NEWOBJ, _A_NEWOBJ_EX, _A_INST, _A_OBJ, _A_EXT, _A_POP, _A_DUP,
 _A_PROTO, _A_STOP, _A_FRAME) = range(2, 22)  # fmt: skip


def _text(name: str, raw: bytes) -> str:
    """The str an unpickler makes of a text opcode's argument."""
    if name == "STRING":
        value = pickletools.read_stringnl(io.BytesIO(raw + b"\n"))
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if name == "UNICODE":
        return raw.decode("raw-unicode-escape")
    if name in ("BINSTRING", "SHORT_BINSTRING"):
        return raw.decode("latin-1")
    return raw.decode("utf-8", "surrogatepass")


def _read_arg(buf: Any, size: int, pos: int, entry: _Entry) -> tuple[Any, int]:
    """The argument of the opcode whose argument starts at pos, and where the next opcode is."""
    name, _, kind, width, signed, action = entry[:6]
    if kind == _FIXED:
        end = pos + width
        if end > size:
            raise ValueError(f"{name}: the argument is cut off")
        return (int.from_bytes(buf[pos:end], "little") if name in _INT_ARG else None), end
    if kind == _COUNTED:
        end = pos + width
        if end > size:
            raise ValueError(f"{name}: the length field is cut off")
        length = int.from_bytes(buf[pos:end], "little", signed=signed)
        if length < 0:
            raise ValueError(f"{name}: negative length {length}")
        if end + length > size:
            raise ValueError(f"{name}: {length} bytes promised, the file ends first")
        # Large byte strings (arrays, model text) are data: skipped, never copied.
        text = action == _A_TEXT and length <= _BIG_ARG
        return (_text(name, bytes(buf[end : end + length])) if text else None), end + length
    end = buf.find(b"\n", pos, size)
    if end < 0:
        raise ValueError(f"{name}: no newline ends the argument")
    if kind == _LINE_PAIR:
        second = buf.find(b"\n", end + 1, size)
        if second < 0:
            raise ValueError(f"{name}: no newline ends the argument")
        module, qualname = bytes(buf[pos:end]), bytes(buf[end + 1 : second])
        return (module.decode("utf-8"), qualname.decode("utf-8")), second + 1
    if name in ("PUT", "GET"):
        return int(bytes(buf[pos:end])), end + 1
    if action == _A_TEXT and end - pos <= _BIG_ARG:
        return _text(name, bytes(buf[pos:end])), end + 1
    return None, end + 1


def _walk(buf: Any, size: int, s: Scanner, deadline: float, budget_s: float) -> None:
    """Run the scanner over buf[0:size] until the first STOP; raise on malformed input."""
    stack, marks, memo = s.stack, s.marks, s.memo
    push, table, opaque = stack.append, _TABLE, OPAQUE
    pos, count, check_at = 0, 0, _CHECK_EVERY
    while not s.done:
        count += 1
        if count >= check_at:
            check_at += _CHECK_EVERY
            if time.monotonic() > deadline:
                raise Stopped(
                    f"the scan stopped after its time budget of {budget_s:g} s at byte "
                    f"{pos:,} of {size:,}: the file holds more pickle opcodes than a model "
                    "needs ([limits] scan_timeout_s)"
                )
        if pos >= size:
            raise ValueError("pickle exhausted before seeing STOP")
        entry = table[buf[pos]]
        if entry is None:
            raise ValueError(f"at position {pos}, opcode {bytes([buf[pos]])!r} unknown")
        name, proto, kind, width, _, action, uses_mark, pops, pushes = entry
        pos += 1
        arg: Any = None
        if kind != _FIXED or width:
            arg, pos = _read_arg(buf, size, pos, entry)
        if proto > s.max_proto:
            s.max_proto = proto
        if action == _PUSH:
            push(opaque)
        elif action == _A_PUT:
            if len(stack) <= (marks[-1] if marks else 0):
                raise Corrupt("nothing on the stack to store in the memo")
            memo[len(memo) if arg is None else arg] = stack[-1]
        elif action == _A_GET:
            push(memo.get(arg, opaque))
        elif action == _A_TEXT:
            push(opaque if arg is None else arg)
        elif action == _A_MARK:
            if len(marks) >= MAX_DEPTH:
                raise Stopped(too_deep())
            marks.append(len(stack))
        elif action == _GENERIC:
            if uses_mark:
                for item in s.pop_mark():
                    s.consume(item)
            for _ in range(pops):
                s.consume(s.pop())
            for _ in range(pushes):
                push(opaque)
        else:
            _special(s, action, name, arg)


def _special(s: Scanner, action: int, name: str, arg: Any) -> None:
    """The opcodes that build tuples, import names, call, or end the pickle."""
    stack, push = s.stack, s.stack.append
    if action == _AEMPTY_TUPLE:
        push(EMPTY)
    elif action == _A_TUPLE_N:
        items = [s.pop() for _ in range(int(name[-1]))][::-1]
        push(make_tuple(items))
    elif action == _A_TUPLE:
        push(make_tuple(s.pop_mark()))
    elif action == _A_GLOBAL:
        push(s.global_(*arg))
    elif action == _A_STACK_GLOBAL:
        qualname, module = s.pop(), s.pop()
        named = isinstance(module, str) and isinstance(qualname, str)
        push(s.global_(module, qualname) if named else s.unresolved())
    elif action == _A_REDUCE:
        args = s.pop()
        push(s.call(s.pop(), args))
    elif action == _A_NEWOBJ:
        args = s.pop()
        push(s.new_object(s.pop(), args))
    elif action == _A_NEWOBJ_EX:
        kwargs, args = s.pop(), s.pop()
        push(s.new_object(s.pop(), args, kwargs))
    elif action == _A_INST:
        args = make_tuple(s.pop_mark())
        push(s.call(s.global_(*arg), args))
    elif action == _A_OBJ:
        items = s.pop_mark()
        if not items:
            raise Corrupt("OBJ without a class")
        push(s.call(items[0], make_tuple(items[1:])))
    elif action == _A_EXT:  # copyreg extension registry: not followed
        push(s.unresolved())
    elif action == _A_POP:
        if s.marks and len(stack) == s.marks[-1]:
            s.marks.pop()  # POP of a MARK, as the unpickler allows
        else:
            s.consume(s.pop())
    elif action == _A_DUP:
        push(s.pop())
        push(stack[-1])
    elif action == _A_PROTO:
        s.protocol = arg
    elif action == _A_STOP:
        s.consume(s.pop())
        s.done = True
    # FRAME: only a length hint for buffered readers.


# ---- entry points ------------------------------------------------------------------------------

_MAGIC = ((b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "gzip-compressed data"),
          (b"BZh", "bzip2-compressed data"), (b"\xfd7zXZ", "xz-compressed data"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed data"), (b"\x89HDF", "an HDF5 file"),
          (b"PAR1", "a Parquet file"), (b"\x93NUMPY", "a NumPy .npy file"))  # fmt: skip


def _what_is_it(head: bytes) -> str:
    kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return "its first bytes are not a pickle header"
        kind = "a text file"
    return f"it looks like {kind}"


def _scan(buf: Any, size: int, budget_s: float) -> ScanResult:
    if size == 0:
        return ScanResult([], [], False, "the file is empty", None)
    head = bytes(buf[:16])
    if head[:1] == b"\x80" and (len(head) < 2 or head[1] > pickle.HIGHEST_PROTOCOL):
        unknown = head[1] if len(head) > 1 else "?"
        return ScanResult(
            [], [], False, f"this is not a pickle file (unknown protocol {unknown})", None
        )
    scanner = Scanner()
    error: str | None = None
    try:
        _walk(buf, size, scanner, time.monotonic() + budget_s, budget_s)
    except Stopped as exc:
        error = str(exc)
    except MemoryError:
        scanner.stack.clear()
        scanner.memo.clear()
        error = "the scan ran out of memory: the file holds more pickle opcodes than a model needs"
    except (ValueError, EOFError, OverflowError, UnicodeDecodeError) as exc:
        # Protocol 2+ pickles (all dill writes) start with PROTO; anything else that fails
        # to parse is most likely some other kind of file.
        if head[:1] == b"\x80":
            error = f"the pickle is truncated or corrupt: {exc}"
        else:
            error = f"this is not a pickle file ({_what_is_it(head)})"
    except Exception as exc:  # a bug here must still answer, not crash the upload
        error = f"the scan could not read the file ({type(exc).__name__}: {exc})"
    found = scanner.found
    reasons = {n: why for n in found if (why := refusal(n))}
    reasons |= dict.fromkeys(scanner.forced, "is used where the scan cannot see its arguments")
    # Protocol 0/1 pickles have no PROTO opcode: report the highest protocol their opcodes need.
    protocol = scanner.protocol if head[:1] == b"\x80" else None if error else scanner.max_proto
    names = sorted(found | scanner.forced)
    return ScanResult(names, sorted(reasons), bool(_CODE & found), error, protocol, reasons)


DEFAULT_BUDGET_S = 60.0


def scan_pickle(path: str | os.PathLike[str], budget_s: float = DEFAULT_BUDGET_S) -> ScanResult:
    """Scan the pickle in a file without loading it (the file is mapped, not read whole)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return _scan(b"", 0, budget_s)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _scan(buf, size, budget_s)


def scan_bytes(data: bytes, budget_s: float = DEFAULT_BUDGET_S) -> ScanResult:
    """Scan a pickle held in memory without loading it."""
    return _scan(data, len(data), budget_s)
