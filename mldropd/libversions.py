"""Library versions a model was saved with, compared with the ones where it runs.

save_model() records, in the object's `meta["library_versions"]`, the version of every
installed distribution whose classes or functions the pipeline is built from, and Python's.
Where the model is loaded (the validation sandbox), compare() turns differences into warnings
in plain words, and unpickling_warnings() catches what the libraries themselves say while
unpickling (scikit-learn's InconsistentVersionWarning). A mismatch is a warning, never a
refusal: models often work across versions, and the owner decides.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

META_KEY = "library_versions"
_MAX_OBJECTS = 20_000  # a pipeline's object graph is walked this far at most


def _top_modules(obj: Any) -> set[str]:
    """Top-level module names of the classes and functions reachable from obj."""
    seen: set[int] = set()
    modules: set[str] = set()
    stack = [obj]
    while stack and len(seen) < _MAX_OBJECTS:
        item = stack.pop()
        if id(item) in seen or isinstance(item, str | bytes | int | float | bool | type(None)):
            continue
        seen.add(id(item))
        if isinstance(item, types.ModuleType):
            continue
        if isinstance(item, types.FunctionType):
            modules.add((item.__module__ or "").partition(".")[0])
            stack.extend(c.cell_contents for c in item.__closure__ or () if _filled(c))
            modules.update(
                v.__name__.partition(".")[0]
                for v in item.__globals__.values()
                if isinstance(v, types.ModuleType)
            )
            continue
        modules.add(type(item).__module__.partition(".")[0])
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        else:
            stack.extend(getattr(item, "__dict__", {}).values())
    return modules


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


def versions_of(obj: Any) -> dict[str, str]:
    """{distribution: version} for the libraries obj is built from, plus "python"."""
    by_module = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for module in _top_modules(obj):
        if not module or module in sys.stdlib_module_names or module in ("builtins", "__main__"):
            continue
        for dist in by_module.get(module, []):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[dist] = importlib.metadata.version(dist)
    return {"python": platform.python_version(), **dict(sorted(found.items()))}


def installed(names: list[str]) -> dict[str, str | None]:
    """The versions installed here of the named distributions (None: not installed)."""
    here: dict[str, str | None] = {}
    for name in names:
        if name == "python":
            here[name] = platform.python_version()
            continue
        try:
            here[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            here[name] = None
    return here


def compare(recorded: dict[str, Any] | None, here: dict[str, str | None]) -> list[str]:
    """Warnings for every library whose version here differs from the recorded one."""
    problems = []
    for name, saved in sorted((recorded or {}).items()):
        now = here.get(name)
        if name == "python":
            if now and str(saved).split(".")[:2] != now.split(".")[:2]:
                problems.append(
                    f"the model was saved with Python {saved}; models run with Python {now}"
                )
            continue
        if now is None:
            problems.append(
                f"the model was saved with {name} {saved}, which is not installed where models "
                "run: loading or scoring may fail; ask an admin to install it"
            )
        elif str(saved) != now:
            problems.append(
                f"the model was saved with {name} {saved}; models run with {name} {now}: scores "
                f"may differ. Re-save it with {name} {now} (or ask an admin for {saved})"
            )
    return problems


@contextlib.contextmanager
def unpickling_warnings() -> Iterator[list[str]]:
    """Collect, as plain words, the warnings libraries raise while a model is unpickled."""
    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield said
    for w in caught:
        name = w.category.__name__
        if "Version" in name or "version" in str(w.message).lower():
            said.append(f"while loading the model: {name}: {' '.join(str(w.message).split())}")


def check(obj: Any, caught: list[str]) -> list[str]:
    """Every version warning of a loaded model object: recorded vs here, and what was caught."""
    meta = obj.get("meta") if isinstance(obj, dict) else None
    recorded = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(recorded, dict):
        recorded = {}
    return compare(recorded, installed(list(recorded))) + list(dict.fromkeys(caught))
