"""Static scan of a pickle: list what it imports and refuse the dangerous, without loading it.

We walk the opcodes with the standard library's `pickletools.genops` and emulate the
unpickler's stack symbolically (strings, tuples and imported names; all else is opaque): nothing
is imported, no pickle code runs. Not picklescan (on PyPI) or fickling: picklescan pairs
STACK_GLOBAL with the nearest string opcodes instead of the real stack, cannot tell "not a
pickle" from "truncated" and knows nothing of dill's `_import_module`/`getattr` calls, which
reach any module without a GLOBAL opcode; fickling decompiles to an AST, more than we need.

What dill 0.4.1 emits with `recurse=True` (measured, protocol 4): a lambda ->
`dill._dill._create_function` + `_create_code` (+ `_import_module('numpy')` for modules it
uses, reported as `numpy`); a closure -> `_create_cell` and
`builtins.getattr(dill._dill, '_setattr', builtins.setattr)` (reported as
`dill._dill._setattr`); notebook classes -> `_create_type`, `_load_type`, `builtins.setattr`;
arrays -> `_create_array`; a bound method -> `_load_type('MethodType')` + `pkg.Class.method`;
`...` -> `_eval_repr('Ellipsis')`; `str.lower` -> `_getattr(str, 'lower', "<method 'lower' of
'str' objects>")`, evaluated by dill as `str.__dict__["lower"]`. sklearn and LightGBM models
add only their classes, `collections.OrderedDict`/`defaultdict` and numpy names. So getattr,
setattr and dill's helpers are allowed, but followed: `_import_module(m)` counts as importing
`m`, `getattr(x, 'a')` on an imported `x` as importing `x.a`; `_getattr` and `_eval_repr` must
carry plain literals. A helper we cannot follow (arguments computed at load time, or the
helper passed around instead of called) is refused.

This scan is a tripwire, not the boundary: a dill function's code is data here and can do
anything when called. Models load and run only in sandboxed child processes.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import pickletools
import re
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Entries ending in ".*" refuse a module and everything under it; others are exact names.
DANGEROUS: frozenset[str] = _names(
    # processes, shells, signals
    "os.* posix.* nt.* subprocess.* _posixsubprocess.* pty.* commands.* multiprocessing.* "
    "signal.* asyncio.* platform.* "
    # the interpreter, imports, text evaluated as code, native code
    "sys.* importlib.* imp.* pkgutil.* runpy.* code.* codeop.* pdb.* bdb.* timeit.* doctest.* "
    "zipimport.* logging.config.* typing.get_type_hints typing._eval_type "
    "inspect.get_annotations dataclasses._create_fn "
    "profile.* cProfile.* trace.* pydoc.* webbrowser.* marshal.* distutils.* setuptools.* "
    "pip.* ctypes.* _ctypes.* cffi.* numpy.ctypeslib.* "
    # files, and nested pickles this scan would not see
    "shutil.* shelve.* pickle.* _pickle.* cloudpickle.* _pyio.* io.open io.open_code "
    "io.FileIO _io.open _io.open_code _io.FileIO codecs.open joblib.load "
    "joblib.numpy_pickle.load numpy.load pandas.read_pickle pandas.io.pickle.* torch.load "
    "torch.serialization.* "
    # network
    "socket.* _socket.* ssl.* socketserver.* urllib.* urllib3.* http.* requests.* httpx.* "
    "aiohttp.* ftplib.* smtplib.* telnetlib.* poplib.* imaplib.* xmlrpc.* "
    # builtins that evaluate, import, open files or reach globals
    "builtins.eval builtins.exec builtins.compile builtins.__import__ builtins.open "
    "builtins.input builtins.breakpoint builtins.globals builtins.locals builtins.vars "
    "builtins.exit builtins.quit builtins.help builtins.__build_class__ builtins.memoryview "
    # attribute access or calls by a name computed at load time; raw C pointers
    "operator.attrgetter operator.methodcaller types.CapsuleType"
)

# Everything else under `dill` is refused (dill.loads, dill.source, dill.temp, ...).
_DILL_HELPERS = (
    "_create_function _create_code _create_cell _create_type _load_type _create_array "
    "_create_dtypemeta _create_namedtuple _create_ftype _create_typing_tuple _create_lock "
    "_create_rlock _create_stringi _create_stringo _create_weakref _create_weakproxy _setitems "
    "_import_module _get_attr _getattr _eval_repr _unmarshal _setattr _delattr _dictproxy_helper"
)
DILL_ALLOWED: frozenset[str] = _names(
    "dill dill._dill dill._shims dill._shims._setattr dill._shims._delattr"
) | {f"dill._dill.{name}" for name in _DILL_HELPERS.split()}

# Serialized Python code: its presence means the file carries functions (lambdas, notebook code).
_CODE = _names(
    "dill._dill._create_function dill._dill._create_code dill._dill._unmarshal "
    "types.FunctionType types.LambdaType types.CodeType"
)
# Module names that a library may expose as an attribute (`somelib.os.system`).
_ALIAS_SEGMENTS = _names(
    "os posix nt sys subprocess builtins importlib ctypes socket shutil pty runpy "
    "multiprocessing pickle marshal dill _posixsubprocess"
)
# Attributes that lead from any object to code, globals or other modules.
_RISKY_ATTRS = _names(
    "__globals__ __builtins__ __subclasses__ __getattribute__ __code__ __class__ __import__ "
    "__loader__ __spec__ __base__ __bases__ __mro__ __closure__"
)
# Helpers whose effect depends on their arguments; vetted when called directly.
_FOLLOWED = _names(
    "builtins.getattr builtins.__import__ importlib.import_module dill._dill._import_module "
    "dill._dill._get_attr dill._dill._getattr dill._dill._eval_repr dill._dill._load_type "
    "dill._dill._create_namedtuple"
)
# dill's _load_type names that matter: code (flagged) and files or capsules (refused).
_FILE_TYPES = "FileType BufferedReaderType BufferedWriterType BufferedRandomType TextWrapperType"
_LOAD_TYPES = {"CodeType": "types.CodeType", "FunctionType": "types.FunctionType",
               "LambdaType": "types.FunctionType", "PyCapsuleType": "types.CapsuleType",
               **dict.fromkeys(_FILE_TYPES.split(), "io.FileIO"),
               **{f"Py{name}": "_pyio.FileIO" for name in _FILE_TYPES.split()[1:]}}  # fmt: skip
# Names in dill._dill's globals that differ from the module they hold.
_DILL_NAMES = {"__builtin__": "builtins", "_main_module": "__main__", "_shims": "dill._shims"}
_EVAL_LITERALS = frozenset({"Ellipsis", "NotImplemented"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRINGS = _names(
    "SHORT_BINUNICODE BINUNICODE BINUNICODE8 UNICODE SHORT_BINSTRING BINSTRING STRING"
)
_SPECIAL = _STRINGS | _names("MARK EMPTY_TUPLE GET BINGET LONG_BINGET EXT1 EXT2 EXT4 GLOBAL")
_PUSH_OPAQUE = frozenset(
    op.name
    for op in pickletools.opcodes
    if not op.stack_before and len(op.stack_after) == 1 and op.name not in _SPECIAL
)
UNRESOLVED = "<unresolved>"


@dataclass(frozen=True)
class ScanResult:
    """What a pickle imports, which of that is refused, and whether it could be read."""

    globals: list[str]
    refused: list[str]
    has_functions: bool
    error: str | None
    protocol: int | None

    @property
    def ok(self) -> bool:
        """True if the pickle was read to the end and imports nothing refused."""
        return self.error is None and not self.refused


def is_dangerous(name: str) -> bool:
    """True if the dotted global `name` is refused (see DANGEROUS and DILL_ALLOWED)."""
    if name == UNRESOLVED or name in DANGEROUS:
        return True
    if name == "dill" or name.startswith("dill."):
        return name not in DILL_ALLOWED
    parts = name.split(".")
    if any(".".join(parts[:i]) + ".*" in DANGEROUS for i in range(1, len(parts) + 1)):
        return True
    return any(p in _ALIAS_SEGMENTS or p in _RISKY_ATTRS for p in parts[1:])


@dataclass(frozen=True)
class _Ref:
    """A value the scan can name: an imported global, module or attribute of one."""

    name: str


_OPAQUE, _MARK = object(), object()  # a value the scan does not follow; a MARK


class _Corrupt(ValueError):
    """The opcodes do not fit together (e.g. a pop from an empty stack)."""


class _Scanner:
    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.found: set[str] = set()
        self.forced: set[str] = set()  # allowed names refused because of how they were used
        self.protocol: int | None = None
        self.max_proto = 0
        self.done = False

    def record(self, name: str) -> _Ref:
        self.found.add(name)
        return _Ref(name)

    def unresolved(self) -> object:
        self.found.add(UNRESOLVED)
        return _OPAQUE

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise _Corrupt("the stack is empty where a value was expected")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if _MARK not in self.stack:
            raise _Corrupt("no MARK on the stack")
        at = len(self.stack) - 1 - self.stack[::-1].index(_MARK)
        items = self.stack[at + 1 :]
        del self.stack[at:]
        return items

    def consume(self, value: Any) -> None:
        """A followed helper used as data (not called directly) cannot be vetted: refuse it."""
        if isinstance(value, _Ref) and value.name in _FOLLOWED:
            self.forced.add(value.name)
        elif isinstance(value, tuple):
            for item in value:
                self.consume(item)

    def global_(self, module: str, name: str) -> _Ref:
        # What Unpickler.find_class imports: dill's special cases, then Python 2 names.
        if (module, name) == ("__builtin__", "__main__"):
            return self.record("__main__.__dict__")
        module = "dill._dill" if module == "dill.dill" else module
        module, name = NAME_MAPPING.get((module, name), (module, name))
        module = IMPORT_MAPPING.get(module, module)
        return self.record(f"{module}.{name}")

    def attribute(self, base: Any, attr: str) -> Any:
        if isinstance(base, _Ref):
            return self.record(f"{base.name}.{attr}")
        if attr in _RISKY_ATTRS:
            self.record(f"<object>.{attr}")
        return _OPAQUE

    def call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            self.consume(func)
            return _OPAQUE
        for arg in args:
            self.consume(arg)
        if not isinstance(func, _Ref) or func.name not in _FOLLOWED:
            self.consume(func)
            return _OPAQUE
        name = func.name
        first, second, third = (*args, None, None, None)[:3]
        if name in ("dill._dill._import_module", "builtins.__import__", "importlib.import_module"):
            return self.record(first) if isinstance(first, str) else self.unresolved()
        if name in ("builtins.getattr", "dill._dill._get_attr"):
            if not isinstance(second, str):
                return self.unresolved()
            if name == "dill._dill._get_attr" and is_dangerous(f"builtins.{second}"):
                self.record(f"builtins.{second}")  # _get_attr falls back to builtins
            return self.attribute(first, second)
        if name == "dill._dill._getattr":
            # dill evals <owner from the repr>.__dict__["<name>"], else does getattr(first, name).
            owner = third.split("'")[3] if isinstance(third, str) and third.count("'") >= 4 else ""
            if not (isinstance(second, str) and _IDENT.fullmatch(second)
                    and all(_IDENT.fullmatch(p) for p in owner.split("."))):  # fmt: skip
                return self.unresolved()
            self.attribute(first, second)
            # The owner is looked up in dill._dill's globals: builtins, or modules it imported.
            head, _, rest = owner.partition(".")
            head = "builtins." + head if hasattr(builtins, head) else _DILL_NAMES.get(head, head)
            return self.record(".".join(p for p in (head, rest, second) if p))
        if name == "dill._dill._eval_repr":
            if first not in _EVAL_LITERALS:
                self.forced.add(name)
            return _OPAQUE
        if name == "dill._dill._load_type":
            if isinstance(first, str):
                return self.record(_LOAD_TYPES[first]) if first in _LOAD_TYPES else _OPAQUE
            return self.unresolved()
        # _create_namedtuple(name, fields, module) may return module.name if that exists.
        if isinstance(first, str) and isinstance(third, str):
            return self.record(f"{third}.{first}")
        return self.unresolved()

    def step(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        name = op.name
        self.max_proto = max(self.max_proto, op.proto)
        push = self.stack.append
        if name in _PUSH_OPAQUE:  # numbers, bytes, None, empty containers: the bulk of a file
            push(_OPAQUE)
        elif name in _STRINGS:
            push(arg)
        elif name == "PROTO":
            self.protocol = arg
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not self.stack or self.stack[-1] is _MARK:
                raise _Corrupt("nothing on the stack to store in the memo")
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            push(self.memo.get(arg, _OPAQUE))
        elif name == "MARK":
            push(_MARK)
        elif name == "GLOBAL":
            push(self.global_(*_split(arg)))
        elif name == "INST":
            args = tuple(self.pop_mark())
            push(self.call(self.global_(*_split(arg)), args))
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise _Corrupt("OBJ without a class")
            push(self.call(items[0], tuple(items[1:])))
        elif name == "STACK_GLOBAL":
            qualname, module = self.pop(), self.pop()
            named = isinstance(module, str) and isinstance(qualname, str)
            push(self.global_(module, qualname) if named else self.unresolved())
        elif name == "REDUCE":
            args = self.pop()
            push(self.call(self.pop(), args))
        elif name in ("EXT1", "EXT2", "EXT4"):  # copyreg extension registry: not followed
            push(self.unresolved())
        elif name == "EMPTY_TUPLE":
            push(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            push(tuple(reversed([self.pop() for _ in range(int(name[-1]))])))
        elif name == "TUPLE":
            push(tuple(self.pop_mark()))
        else:
            self.generic(op)
        if name == "STOP":
            self.done = True

    def generic(self, op: pickletools.OpcodeInfo) -> None:
        """Pop and push as pickletools documents the opcode; results are opaque."""
        before = op.stack_before
        if pickletools.markobject in before or (
            op.name == "POP" and self.stack and self.stack[-1] is _MARK
        ):
            for item in self.pop_mark():
                self.consume(item)
            count = before.index(pickletools.markobject) if pickletools.markobject in before else 0
        else:
            count = len(before)
        for _ in range(count):
            self.consume(self.pop())
        self.stack.extend(_OPAQUE for _ in op.stack_after)


def _split(arg: str) -> tuple[str, str]:
    module, _, name = arg.partition(" ")
    return module, name


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


_BIG_ARG = 1 << 20  # byte/string arguments above this are skipped, not read: memory stays flat
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def _genops(f: IO[bytes]) -> Iterator[tuple[pickletools.OpcodeInfo, Any, int | None]]:
    """pickletools.genops, except that a counted argument over _BIG_ARG is seeked past.

    Large byte strings (arrays, LightGBM model text) are data to the scan; reading them would
    hold the whole model in memory. Such an argument is reported as empty.
    """
    while True:
        pos = f.tell()
        code = f.read(1)
        op = pickletools.code2op.get(code.decode("latin-1")) if code else None
        if op is None:
            if not code:
                raise ValueError("pickle exhausted before seeing STOP")
            raise ValueError(f"at position {pos}, opcode {code!r} unknown")
        arg: Any = None
        if op.arg is not None:
            prefix = _LENGTH_PREFIX.get(op.arg.n)
            if prefix is None:
                arg = op.arg.reader(f)
            else:
                width, signed = prefix
                raw = f.read(width)
                if len(raw) != width:
                    raise ValueError(f"{op.name}: the length field is cut off")
                length = int.from_bytes(raw, "little", signed=signed)
                if length < 0:
                    raise ValueError(f"{op.name}: negative length {length}")
                if length > _BIG_ARG:
                    if f.tell() + length > _size(f):
                        raise ValueError(f"{op.name}: {length} bytes promised, the file ends first")
                    f.seek(length, os.SEEK_CUR)
                    arg = "" if "unicode" in op.arg.name or "string" in op.arg.name else b""
                else:
                    f.seek(-width, os.SEEK_CUR)
                    arg = op.arg.reader(f)
        yield op, arg, pos
        if op.name == "STOP":
            return


def _size(f: IO[bytes]) -> int:
    here = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(here)
    return end


def _scan(f: IO[bytes], size: int) -> ScanResult:
    if size == 0:
        return ScanResult([], [], False, "the file is empty", None)
    head = f.read(16)
    f.seek(0)
    if head[:1] == b"\x80" and (len(head) < 2 or head[1] > pickle.HIGHEST_PROTOCOL):
        error = f"this is not a pickle file (unknown protocol {head[1] if len(head) > 1 else '?'})"
        return ScanResult([], [], False, error, None)
    scanner = _Scanner()
    error: str | None = None
    try:
        for op, arg, _pos in _genops(f):
            scanner.step(op, arg)
            if scanner.done:  # only the first pickle: dill.dump writes one
                break
    except (ValueError, EOFError, OverflowError) as exc:
        # Protocol 2+ pickles (all dill writes) start with PROTO; anything else that fails
        # to parse is most likely some other kind of file.
        if head[:1] == b"\x80":
            error = f"the pickle is truncated or corrupt: {exc}"
        else:
            error = f"this is not a pickle file ({_what_is_it(head)})"
    if error is None and not scanner.done:
        error = "the pickle is truncated or corrupt: it ends before its STOP opcode"
    found = scanner.found
    refused = sorted({n for n in found if is_dangerous(n)} | scanner.forced)
    # Protocol 0/1 pickles have no PROTO opcode: report the highest protocol their opcodes need.
    protocol = scanner.protocol if head[:1] == b"\x80" else None if error else scanner.max_proto
    return ScanResult(sorted(found | scanner.forced), refused, bool(_CODE & found), error, protocol)


def scan_pickle(path: str | os.PathLike[str]) -> ScanResult:
    """Scan the pickle in a file without loading it."""
    with open(path, "rb") as f:  # buffered reads: large arguments are seeked past
        return _scan(f, os.fstat(f.fileno()).st_size)


def scan_bytes(data: bytes) -> ScanResult:
    """Scan a pickle held in memory without loading it."""
    return _scan(io.BytesIO(data), len(data))
