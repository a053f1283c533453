"""The unpickler's stack, emulated symbolically for the static scan (mldropd.pickle_scan).

Values the scan follows: strings, tuples, names (`Ref`: an imported global, module, or an
attribute of one) and objects built by calling a name (`Made`); all else is one opaque
token. Calls to getattr-style helpers are followed so that the names they reach are judged.
"""

from __future__ import annotations

import builtins
import re
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from dataclasses import dataclass
from typing import Any

from mldropd.pickle_rules import MADE, OBJECT, TOO_LONG, UNRESOLVED, names, refusal

MAX_DEPTH = 1000  # Python's recursion limit: pickle and dill cannot write deeper nesting
MAX_NAME = 512  # longer dotted names are refused, not built (attribute chains stay linear)

# Helpers whose effect depends on their arguments; vetted when called directly.
_FOLLOWED = names(
    "builtins.getattr builtins.__import__ importlib.import_module dill._dill._import_module "
    "dill._dill._get_attr dill._dill._getattr dill._dill._eval_repr dill._dill._load_type "
    "dill._dill._create_namedtuple operator.getitem _operator.getitem"
)
# Calls that build an instance of their first argument (protocols 0-3 spell NEWOBJ this way).
_CONSTRUCTORS = frozenset({"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"})
# dill's _load_type names that matter: code (refused) and files or capsules (refused).
_FILE_TYPES = "FileType BufferedReaderType BufferedWriterType BufferedRandomType TextWrapperType"
_LOAD_TYPES = {"CodeType": "types.CodeType", "FunctionType": "types.FunctionType",
               "LambdaType": "types.FunctionType", "PyCapsuleType": "types.CapsuleType",
               **dict.fromkeys(_FILE_TYPES.split(), "io.FileIO"),
               **{f"Py{name}": "_pyio.FileIO" for name in _FILE_TYPES.split()[1:]}}  # fmt: skip
# Names in dill._dill's globals that differ from the module they hold.
_DILL_NAMES = {"__builtin__": "builtins", "_main_module": "__main__", "_shims": "dill._shims"}
_EVAL_LITERALS = frozenset({"Ellipsis", "NotImplemented"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Ref:
    """A value the scan can name: an imported global, module or attribute of one."""

    name: str


@dataclass(frozen=True)
class Made:
    """An object built by calling a named type or function: `T(...)`."""

    type: str


@dataclass(frozen=True)
class Tuple:
    """A tuple, with its nesting depth and the followed helpers anywhere inside it."""

    items: tuple[Any, ...]
    depth: int
    followed: frozenset[str]


OPAQUE = object()  # a value the scan does not follow
EMPTY = Tuple((), 1, frozenset())


class Corrupt(ValueError):
    """The opcodes do not fit together (e.g. a pop from an empty stack)."""


class Stopped(Exception):
    """The scan gave up on purpose: too deep, or over its time budget."""


def _followed_in(value: Any) -> frozenset[str]:
    if isinstance(value, Ref) and value.name in _FOLLOWED:
        return frozenset({value.name})
    if isinstance(value, Tuple):
        return value.followed
    return frozenset()


def make_tuple(items: list[Any]) -> Tuple:
    if not items:
        return EMPTY
    depth, followed = 0, frozenset[str]()
    for item in items:
        if isinstance(item, Tuple):
            depth = max(depth, item.depth)
            followed |= item.followed
        elif isinstance(item, Ref) and item.name in _FOLLOWED:
            followed |= {item.name}
    if depth >= MAX_DEPTH:
        raise Stopped(too_deep())
    return Tuple(tuple(items), depth + 1, followed)


def too_deep() -> str:
    return (
        f"the pickle nests containers more than {MAX_DEPTH} levels deep; pickle and dill "
        "cannot write that (Python's recursion limit), so the file was made by hand"
    )


class Scanner:
    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[int] = []  # where each open MARK starts in the stack
        self.memo: dict[int, Any] = {}
        self.found: set[str] = set()
        self.forced: set[str] = set()  # allowed names refused because of how they were used
        self.protocol: int | None = None
        self.max_proto = 0
        self.done = False

    # ---- the stack -----------------------------------------------------------------------

    def pop(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise Corrupt("the stack is empty where a value was expected")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise Corrupt("no MARK on the stack")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def consume(self, value: Any) -> None:
        """A followed helper used as data (not called directly) cannot be vetted: refuse it."""
        self.forced |= _followed_in(value)

    # ---- names ---------------------------------------------------------------------------

    def record(self, name: str) -> Ref:
        if len(name) > MAX_NAME:
            name = TOO_LONG
        self.found.add(name)
        return Ref(name)

    def unresolved(self) -> object:
        self.found.add(UNRESOLVED)
        return OPAQUE

    def global_(self, module: str, name: str) -> Ref:
        # What Unpickler.find_class imports: dill's special cases, then Python 2 names.
        if (module, name) == ("__builtin__", "__main__"):
            return self.record("__main__.__dict__")
        module = "dill._dill" if module == "dill.dill" else module
        module, name = NAME_MAPPING.get((module, name), (module, name))
        module = IMPORT_MAPPING.get(module, module)
        return self.record(f"{module}.{name}")

    def attribute(self, base: Any, attr: str) -> Any:
        """getattr(base, attr): a name when base has one; otherwise judged by attr alone."""
        if isinstance(base, Ref):  # X.__dict__["a"] (getitem) is X.a
            return self.record(f"{base.name.removesuffix('.__dict__')}.{attr}")
        if isinstance(base, Made):
            self.record(f"{base.type}{MADE}.{attr}")
            return OPAQUE
        if refusal(f"{OBJECT}.{attr}"):
            self.record(f"{OBJECT}.{attr}")
        return OPAQUE

    # ---- calls ---------------------------------------------------------------------------

    def call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, Tuple):
            self.consume(func)
            self.consume(args)
            return OPAQUE
        self.forced |= args.followed
        if not isinstance(func, Ref):
            self.consume(func)
            return OPAQUE
        name = func.name
        first, second, third = (*args.items, None, None, None)[:3]
        if name not in _FOLLOWED:
            if name in _CONSTRUCTORS:
                return Made(first.name) if isinstance(first, Ref) else OPAQUE
            return Made(name)
        if name in ("dill._dill._import_module", "builtins.__import__", "importlib.import_module"):
            return self.record(first) if isinstance(first, str) else self.unresolved()
        if name in ("builtins.getattr", "dill._dill._get_attr"):
            if not isinstance(second, str):
                return self.unresolved()
            if name == "dill._dill._get_attr" and refusal(f"builtins.{second}"):
                self.record(f"builtins.{second}")  # _get_attr falls back to builtins
            return self.attribute(first, second)
        if name in ("operator.getitem", "_operator.getitem"):
            if isinstance(second, str) and isinstance(first, Ref | Made):
                return self.attribute(first, second)  # a module's __dict__["_os"] is _os
            return OPAQUE
        if name == "dill._dill._getattr":
            return self.dill_getattr(first, second, third)
        if name == "dill._dill._eval_repr":
            if first not in _EVAL_LITERALS:
                self.forced.add(name)
            return OPAQUE
        if name == "dill._dill._load_type":
            if isinstance(first, str):
                return self.record(_LOAD_TYPES[first]) if first in _LOAD_TYPES else OPAQUE
            return self.unresolved()
        # _create_namedtuple(name, fields, module) may return module.name if that exists.
        if isinstance(first, str) and isinstance(third, str):
            return self.record(f"{third}.{first}")
        return self.unresolved()

    def dill_getattr(self, first: Any, second: Any, third: Any) -> Any:
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

    def new_object(self, cls: Any, *rest: Any) -> Any:
        """NEWOBJ / NEWOBJ_EX: cls.__new__(cls, *args)."""
        for value in rest:
            self.consume(value)
        self.consume(cls)
        return Made(cls.name) if isinstance(cls, Ref) else OPAQUE
