"""The adversarial corpus of the static scan, as generators (no binary blobs in the repository).

REFUSED: hostile pickles, each with the names the scan must refuse; `command` payloads run a
shell command when loaded (tests load them in a throwaway process to prove they are live).
ACCEPTED: real models of every library the daemon supports, as users save them.
Nothing here unpickles anything.
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


# ---- a tiny assembler for hand-made pickles ----------------------------------------------------
def s(text: str) -> bytes:
    """SHORT_BINUNICODE."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def b(data: bytes) -> bytes:
    """SHORT_BINBYTES."""
    return b"C" + bytes([len(data)]) + data


def g(module: str, name: str) -> bytes:
    """STACK_GLOBAL module.name."""
    return s(module) + s(name) + SG


SG, MEMO, REDUCE, MARK, POP_MARK, BUILD = b"\x93", b"\x94", b"R", b"(", b"1", b"b"
EMPTY, T1, T2, T3, TUPLE, TRUE = b")", b"\x85", b"\x86", b"\x87", b"t", b"\x88"
EMPTY_DICT, NEWOBJ = b"}", b"\x81"


def well_formed(data: bytes) -> bytes:
    """pickletools.dis checks the stack and memo without loading anything."""
    pickletools.dis(data, out=io.StringIO())
    return data


def p4(*parts: bytes) -> bytes:
    return well_formed(b"\x80\x04" + b"".join(parts) + b".")


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) with REDUCE."""
    return func + MARK + b"".join(args) + TUPLE + REDUCE


@dataclass(frozen=True)
class Hostile:
    make: Callable[[str], bytes]  # the shell command (or file path) -> the pickle
    refused: frozenset[str]  # names the scan must report as refused (at least these)
    command: bool = True  # loading it runs the command (the tests prove it once)


def _system(module: str, name: str) -> Callable[[str], bytes]:
    return lambda cmd: p4(call(g(module, name), s(cmd)))


def _inst_protocol0(cmd: str) -> bytes:
    # Protocol 0 opcodes after a PROTO 4 header: the unpickler then resolves dotted names.
    return well_formed(f"\x80\x04(S'{cmd}'\nitempfile\n_os.system\n.".encode("latin-1"))


def _getattr_alias(cmd: str) -> bytes:
    system = call(g("builtins", "getattr"), g("tempfile", "_os"), s("system"))
    return p4(call(system, s(cmd)))


def _getitem_dict(cmd: str) -> bytes:
    os_module = call(g("operator", "getitem"), g("tempfile", "__dict__"), s("_os"))
    system = call(g("builtins", "getattr"), os_module, s("system"))
    return p4(call(system, s(cmd)))


def _partial(cmd: str) -> bytes:
    partial = call(g("functools", "partial"), g("tempfile", "_os.system"))
    return p4(call(partial, s(cmd)))


def _print_self_exec(cmd: str) -> bytes:
    code = f"import os; os.system({cmd!r})"
    return p4(call(g("builtins", "print.__self__.exec"), s(code)))


def _globals_of_a_function(cmd: str) -> bytes:
    # A function's __globals__ is its module's namespace: collections imports sys as _sys.
    glob = call(g("builtins", "getattr"), g("collections", "namedtuple"), s("__globals__"))
    sys_module = call(g("operator", "getitem"), glob, s("_sys"))
    return p4(call(g("builtins", "getattr"), sys_module, s("modules")))


def _builtins_of_a_module(cmd: str) -> bytes:
    code = f"__import__('os').system({cmd!r})"
    builtins_dict = g("collections", "__builtins__")
    evaluate = call(g("operator", "getitem"), builtins_dict, s("eval"))
    return p4(call(evaluate, s(code)))


def _code_object(cmd: str) -> bytes:
    # types.FunctionType(types.CodeType(...), {})() built by hand: compile the code we want
    # in the test, carry its fields as literals. Here only the shape matters to the scan.
    code = call(g("types", "CodeType"), *(s("x") for _ in range(3)))
    function = call(g("types", "FunctionType"), code, EMPTY_DICT)
    return p4(call(function))


def _dill_load_type_code(cmd: str) -> bytes:
    code_type = call(g("dill._dill", "_load_type"), s("CodeType"))
    return p4(call(code_type, s("x")))


def _read_array(cmd: str) -> bytes:
    # numpy.lib.format.read_array(io.BytesIO(<an .npy with a pickled object array>), True)
    buffer = call(g("_io", "BytesIO"), b(b"\x93NUMPY"))
    return p4(call(g("numpy.lib.format", "read_array"), buffer, TRUE))


def _loader(module: str, name: str) -> Callable[[str], bytes]:
    return lambda cmd: p4(call(g(module, name), b(b"\x80\x04N.")))


def _path_method(method: str, *args: bytes) -> Callable[[str], bytes]:
    def make(path: str) -> bytes:
        target = call(g("pathlib", "PosixPath"), s(path))
        bound = call(g("builtins", "getattr"), target, s(method))
        return p4(call(bound, *args))

    return make


def _functools_reduce_getattr(cmd: str) -> bytes:
    chain = MARK + s("_os") + s("system") + TUPLE
    start = call(g("dill._dill", "_import_module"), s("random"))
    system = call(g("functools", "reduce"), g("builtins", "getattr"), chain, start)
    return p4(call(system, s(cmd)))


REFUSED: dict[str, Hostile] = {
    "tempfile._os.system": Hostile(
        _system("tempfile", "_os.system"), frozenset({"tempfile._os.system"})
    ),
    "random._os.system": Hostile(_system("random", "_os.system"), frozenset({"random._os.system"})),
    "partial(tempfile._os.system)": Hostile(_partial, frozenset({"tempfile._os.system"})),
    "protocol 0 INST tempfile _os.system": Hostile(
        _inst_protocol0, frozenset({"tempfile._os.system"})
    ),
    "builtins print.__self__.exec": Hostile(
        _print_self_exec, frozenset({"builtins.print.__self__.exec"})
    ),
    "getattr(tempfile._os, 'system')": Hostile(
        _getattr_alias, frozenset({"tempfile._os", "tempfile._os.system"})
    ),
    "getitem(tempfile.__dict__, '_os')": Hostile(
        _getitem_dict, frozenset({"tempfile.__dict__", "tempfile._os", "tempfile._os.system"})
    ),
    "getattr(f, '__globals__')": Hostile(
        _globals_of_a_function, frozenset({"collections.namedtuple.__globals__"}), command=False
    ),
    "collections.__builtins__['eval']": Hostile(
        _builtins_of_a_module, frozenset({"collections.__builtins__"}), command=False
    ),
    "types.CodeType -> types.FunctionType": Hostile(
        _code_object, frozenset({"types.CodeType", "types.FunctionType"}), command=False
    ),
    "dill _load_type('CodeType')": Hostile(
        _dill_load_type_code, frozenset({"types.CodeType"}), command=False
    ),
    "numpy.lib.format.read_array(allow_pickle)": Hostile(
        _read_array, frozenset({"numpy.lib.format.read_array"}), command=False
    ),
    "pandas pickle_compat.loads": Hostile(
        _loader("pandas.compat.pickle_compat", "loads"),
        frozenset({"pandas.compat.pickle_compat.loads"}),
        command=False,
    ),
    "joblib numpy_pickle_compat.load_compatibility": Hostile(
        _loader("joblib.numpy_pickle_compat", "load_compatibility"),
        frozenset({"joblib.numpy_pickle_compat.load_compatibility"}),
        command=False,
    ),
    "pickle.loads": Hostile(_loader("pickle", "loads"), frozenset({"pickle.loads"}), False),
    "_pickle.loads": Hostile(_loader("_pickle", "loads"), frozenset({"_pickle.loads"}), False),
    "dill.loads": Hostile(_loader("dill", "loads"), frozenset({"dill.loads"}), False),
    "cloudpickle.loads": Hostile(
        _loader("cloudpickle", "loads"), frozenset({"cloudpickle.loads"}), False
    ),
    "joblib.load": Hostile(_loader("joblib", "load"), frozenset({"joblib.load"}), False),
    "marshal.loads": Hostile(_loader("marshal", "loads"), frozenset({"marshal.loads"}), False),
    "dill._dill._unmarshal": Hostile(
        _loader("dill._dill", "_unmarshal"), frozenset({"dill._dill._unmarshal"}), False
    ),
    "Path(...).write_text": Hostile(
        _path_method("write_text", s("written at load")),
        frozenset({"pathlib.PosixPath(...).write_text"}),
        command=False,
    ),
    "Path(...).read_text": Hostile(
        _path_method("read_text"), frozenset({"pathlib.PosixPath(...).read_text"}), False
    ),
    "functools.reduce(getattr, ...)": Hostile(
        _functools_reduce_getattr, frozenset({"builtins.getattr"}), command=False
    ),
}


# ---- accepted: real models, as users save them -------------------------------------------------
def _xy() -> tuple[Any, Any]:
    import numpy as np

    x = np.random.default_rng(0).random((120, 4))
    return x, (x[:, 0] + x[:, 1] > 1).astype(int)


def _model_object(pipeline: Any) -> dict[str, Any]:
    return {"pipeline": pipeline, "features": ["a", "b", "c", "d"], "name": "corpus"}


def sklearn_pipeline_with_lambda() -> Any:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    steps = [("log", FunctionTransformer(lambda a: np.log1p(a))), ("s", StandardScaler()),
             ("m", LogisticRegression())]  # fmt: skip
    return Pipeline(steps).fit(*_xy())


def sklearn_forests() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    x, y = _xy()
    return [RandomForestClassifier(n_estimators=3).fit(x, y),
            HistGradientBoostingClassifier(max_iter=3).fit(x, y)]  # fmt: skip


def lightgbm_model() -> Any:
    import lightgbm

    return lightgbm.LGBMClassifier(n_estimators=3, min_child_samples=2, verbose=-1).fit(*_xy())


def xgboost_model() -> Any:
    import xgboost

    return xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(*_xy())


def catboost_model() -> Any:
    import catboost

    return catboost.CatBoostClassifier(iterations=3, verbose=0, allow_writing_files=False).fit(
        *_xy()
    )


def statsmodels_results() -> Any:
    import pandas as pd
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    x, y = _xy()
    frame = pd.DataFrame(x, columns=list("abcd")).assign(y=y)
    return [sm.OLS(y, sm.add_constant(x)).fit(), smf.ols("y ~ a + b", frame).fit()]


def dill_closures_and_notebook_class() -> Any:
    import numpy as np

    scale = 2.0

    def helper(a: Any) -> Any:
        return np.asarray(a) * scale

    class Notebook:  # defined in a function: dill pickles it by value, like a notebook class
        def __init__(self, k: float) -> None:
            self.k = k

        def predict(self, a: Any) -> Any:
            return helper(a) * self.k

    model = Notebook(3.0)
    return {"closure": lambda a: helper(a).sum(axis=1), "class": model, "method": model.predict,
            "builtin": str.lower, "ellipsis": ..., "rng": np.random.default_rng(1)}  # fmt: skip


ACCEPTED: dict[str, Callable[[], Any]] = {
    "sklearn pipeline with lambda": sklearn_pipeline_with_lambda,
    "sklearn forests": sklearn_forests,
    "lightgbm": lightgbm_model,
    "xgboost": xgboost_model,
    "catboost": catboost_model,
    "statsmodels": statsmodels_results,
    "dill closures, notebook class": dill_closures_and_notebook_class,
}


def accepted_pickle(name: str) -> bytes:
    """The model as a user saves it: dill.dump(model_object, f, recurse=True)."""
    import dill

    return dill.dumps(_model_object(ACCEPTED[name]()), recurse=True)


# ---- adversarial shapes for the scan's cost -----------------------------------------------------
def quadratic_marks(size: int) -> bytes:
    """The file that took the old scan an hour per MB: N*k + (t0 repeated (each MARK copied
    the stack), sized to `size` bytes. Protocol 1 opcodes, no STOP: it never ends well."""
    nones = size * 4 // 5
    return b"N" * nones + b"(t0" * ((size - nones) // 3)


def deep_tuples(depth: int) -> bytes:
    """A tuple nested `depth` levels deep (the old scan raised RecursionError)."""
    return b"\x80\x04" + EMPTY + T1 * depth + b"."


def deep_marks(depth: int) -> bytes:
    return b"\x80\x04" + MARK * depth + b"N" + TUPLE * depth + b"."


def many_memo_entries(size: int) -> bytes:
    """NONE MEMOIZE POP: the memo grows by one entry per 3 bytes."""
    return b"\x80\x04" + b"N\x940" * (size // 3) + b"N."
