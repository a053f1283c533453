"""Static pickle scan: real dill/sklearn/LightGBM pickles pass, dangerous ones are refused.

Nothing here ever unpickles: evil payloads would touch a MARKER file if they ran.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import pickletools
import subprocess
from pathlib import Path
from typing import Any

import dill
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mldropd.pickle_rules import DANGEROUS
from mldropd.pickle_scan import ScanResult, is_dangerous, scan_bytes, scan_pickle

SYSTEM = {"posix.system", "nt.system", "os.system"}  # os.system pickles as posix.system on Linux


class Reduce:
    """An object whose unpickling would call func(*args)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def ddump(obj: Any) -> bytes:
    return dill.dumps(obj, recurse=True)


def well_formed(data: bytes) -> bytes:
    """pickletools.dis checks the stack and memo without loading anything."""
    pickletools.dis(data, out=io.StringIO())
    return data


# A tiny assembler for hand-made protocol 4 pickles.
def s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


SG, MEMO, REDUCE, MARK, POP_MARK = b"\x93", b"\x94", b"R", b"(", b"1"
EMPTY, T1, T2, T3 = b")", b"\x85", b"\x86", b"\x87"


def put(i: int) -> bytes:
    return b"q" + bytes([i])


def get(i: int) -> bytes:
    return b"h" + bytes([i])


def p4(*parts: bytes) -> bytes:
    return well_formed(b"\x80\x04" + b"".join(parts) + b".")


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).random((40, 3))
    return x, (x[:, 0] > 0.5).astype(int)


def test_plain_dict_is_ok() -> None:
    result = scan_bytes(pickle.dumps({"features": ["a", "b"], "n": 1, "x": 1.5}, protocol=5))
    assert result == ScanResult([], [], False, None, 5)
    assert result.ok


def test_dill_lambda_has_functions_and_is_ok() -> None:
    scale = 2.0
    result = scan_bytes(ddump({"pipeline": lambda x: x.sum(axis=1) * scale, "features": ["a"]}))
    assert result.ok and result.has_functions and result.protocol == dill.DEFAULT_PROTOCOL
    assert {"dill._dill._create_function", "dill._dill._create_code"} <= set(result.globals)


def test_dill_lambda_using_a_module_reports_it() -> None:
    result = scan_bytes(ddump({"pipeline": lambda x: np.asarray(x).sum(axis=1)}))
    assert result.ok and "numpy" in result.globals


def test_dill_closure_uses_getattr_and_setattr_and_is_ok() -> None:
    def outer() -> Any:
        k = 3
        return lambda x: x * k

    result = scan_bytes(ddump(outer()))
    assert result.ok and result.has_functions
    assert {"builtins.getattr", "builtins.setattr", "dill._dill._create_cell"} <= set(
        result.globals
    )
    assert "dill._dill._setattr" in result.globals  # getattr(dill._dill, '_setattr', setattr)


def test_sklearn_pipeline_with_lambda_is_ok(xy: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    pipe = Pipeline(
        [
            ("log", FunctionTransformer(lambda a: np.log1p(a))),
            ("s", StandardScaler()),
            ("m", LogisticRegression()),
        ]  # fmt: skip
    ).fit(*xy)
    result = scan_bytes(ddump({"pipeline": pipe, "features": ["a", "b", "c"]}))
    assert result.ok and result.has_functions, result
    assert "sklearn.pipeline.Pipeline" in result.globals
    assert "sklearn.preprocessing._function_transformer.FunctionTransformer" in result.globals


def test_lightgbm_model_and_its_bound_method_are_ok(xy: tuple[np.ndarray, np.ndarray]) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    model = lightgbm.LGBMClassifier(n_estimators=3, min_child_samples=2, verbose=-1).fit(*xy)
    result = scan_bytes(ddump({"pipeline": model, "features": ["a", "b", "c"]}))
    assert result.ok and not result.has_functions, result
    assert {"lightgbm.basic.Booster", "lightgbm.sklearn.LGBMClassifier"} <= set(result.globals)
    method = scan_bytes(ddump({"pipeline": model.predict_proba}))
    assert method.ok and "lightgbm.sklearn.LGBMClassifier.predict_proba" in method.globals
    # The standard pickler stores a bound method as getattr(obj, name): allowed too.
    plain = scan_bytes(pickle.dumps({"f": model.predict_proba}, protocol=2))
    assert plain.ok and "builtins.getattr" in plain.globals


def test_notebook_class_descriptors_and_ellipsis_are_ok() -> None:
    class Wrapper:
        def __init__(self, k: float) -> None:
            self.k = k

        def predict(self, x: Any) -> Any:
            return x * self.k

    result = scan_bytes(ddump({"pipeline": Wrapper(2.0), "f": str.lower, "e": ..., "s": slice(1)}))
    assert result.ok and result.has_functions, result
    assert {"dill._dill._create_type", "dill._dill._getattr", "dill._dill._eval_repr"} <= set(
        result.globals
    )
    assert "builtins.str.lower" in result.globals  # what dill's _getattr evaluates


@pytest.mark.parametrize("dumps", [
    functools.partial(pickle.dumps, protocol=0), functools.partial(pickle.dumps, protocol=2),
    functools.partial(pickle.dumps, protocol=5), ddump,
])  # fmt: skip
def test_os_system_is_refused_and_never_runs(dumps: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(dumps({"pipeline": Reduce(os.system, f"touch {marker}")}))
    result = scan_pickle(path)
    assert not result.ok and result.error is None
    assert set(result.refused) & SYSTEM and set(result.refused) <= set(result.globals)
    assert scan_pickle(str(path)) == result
    assert not marker.exists()


def test_subprocess_popen_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    result = scan_bytes(ddump(Reduce(subprocess.Popen, ["touch", str(marker)])))
    assert result.refused == ["subprocess.Popen"]
    assert not marker.exists()


def test_builtins_eval_is_refused() -> None:
    result = scan_bytes(pickle.dumps(Reduce(eval, "__import__('os').system('true')"), protocol=4))
    assert result.refused == ["builtins.eval"] and not result.ok


def test_python2_names_are_mapped_before_checking() -> None:
    data = well_formed(b"c__builtin__\neval\n(S'1+1'\ntR.")
    result = scan_bytes(data)
    assert result.refused == ["builtins.eval"] and result.protocol == 0


def test_global_opcode_in_protocols_0_and_2() -> None:
    od = collections.OrderedDict(a=1)
    for protocol in (0, 2):
        data = pickle.dumps(od, protocol=protocol)
        ops = {op.name for op, _, _ in pickletools.genops(data)}
        assert "GLOBAL" in ops and "STACK_GLOBAL" not in ops
        result = scan_bytes(data)
        assert result.globals == ["collections.OrderedDict"] and result.ok
        assert result.protocol == protocol


def test_stack_global_with_memoised_module_name() -> None:
    data = pickle.dumps([collections.OrderedDict, collections.Counter, os.getcwd], protocol=4)
    # The second 'collections' is fetched from the memo.
    assert "BINGET" in {op.name for op, _, _ in pickletools.genops(data)}
    getcwd = f"{os.getcwd.__module__}.getcwd"  # posix.getcwd on Linux
    assert scan_bytes(data).globals == ["collections.Counter", "collections.OrderedDict", getcwd]
    hand = p4(s("posix"), put(0), s("getcwd"), SG, MEMO, get(0), s("system"), SG, T2)
    assert scan_bytes(hand).refused == ["posix.getcwd", "posix.system"]


def test_stack_global_follows_the_real_stack_not_the_last_strings() -> None:
    # 'x' is pushed after 'posix' but popped by POP_MARK: the global is posix.system.
    data = p4(s("posix"), MARK, s("x"), POP_MARK, s("system"), SG)
    assert scan_bytes(data).refused == ["posix.system"]


def test_stack_global_with_computed_operands_is_unresolved() -> None:
    data = p4(s("builtins"), s("str"), SG, s("posix"), T1, REDUCE, s("system"), SG)
    result = scan_bytes(data)
    assert result.globals == ["<unresolved>", "builtins.str"]
    assert result.refused == ["<unresolved>"] and not result.ok


def test_dill_import_module_and_getattr_are_followed() -> None:
    module = s("dill._dill") + s("_import_module") + SG + s("subprocess") + T1 + REDUCE
    popen = s("builtins") + s("getattr") + SG + module + s("Popen") + T2 + REDUCE
    result = scan_bytes(p4(popen, s("true"), T1, REDUCE))
    assert result.refused == ["subprocess", "subprocess.Popen"]
    # A library module's `os` attribute is as good as importing os.
    via_alias = p4(s("builtins"), s("getattr"), SG, s("sklearn.utils"), s("os"), SG, s("system"),
                   T2, REDUCE)  # fmt: skip
    assert scan_bytes(via_alias).refused == ["sklearn.utils.os", "sklearn.utils.os.system"]


def test_dill_helpers_with_code_in_their_arguments_are_refused() -> None:
    eval_repr = p4(s("dill._dill"), s("_eval_repr"), SG, s("__import__('os')"), T1, REDUCE)
    assert scan_bytes(eval_repr).refused == ["dill._dill._eval_repr"]
    ok_repr = p4(s("dill._dill"), s("_eval_repr"), SG, s("Ellipsis"), T1, REDUCE)
    assert scan_bytes(ok_repr).ok
    injected = "<x 'y' of 'os.system(\"id\") or object' objects>"
    getattr_ = p4(s("dill._dill"), s("_getattr"), SG, s("builtins"), s("object"), SG,
                  s("__init__"), s(injected), T3, REDUCE)  # fmt: skip
    assert scan_bytes(getattr_).refused == ["<unresolved>"]
    # dill looks the owner up in its own globals, where __builtin__ is the builtins module.
    via_builtin = p4(s("dill._dill"), s("_getattr"), SG, s("builtins"), s("object"), SG,
                     s("eval"), s("<x 'y' of '__builtin__' z>"), T3, REDUCE)  # fmt: skip
    assert scan_bytes(via_builtin).refused == ["builtins.eval"]


def test_followed_helper_passed_around_is_refused() -> None:
    # functools.partial(getattr, x) hides the attribute name from a static scan.
    data = p4(s("functools"), s("partial"), SG, s("builtins"), s("getattr"), SG, T1, REDUCE)
    result = scan_bytes(data)
    assert result.refused == ["builtins.getattr"]


def test_getattr_of_risky_dunder_on_an_object_is_refused() -> None:
    instance = s("builtins") + s("object") + SG + EMPTY + REDUCE
    data = p4(s("builtins"), s("getattr"), SG, instance, s("__subclasses__"), T2, REDUCE)
    assert "builtins.object(...).__subclasses__" in scan_bytes(data).refused
    # On an object the scan cannot name (a list here), the attribute is judged alone.
    unnamed = p4(s("builtins"), s("getattr"), SG, b"]", s("__subclasses__"), T2, REDUCE)
    assert scan_bytes(unnamed).refused == ["<object>.__subclasses__"]
    harmless = p4(s("builtins"), s("getattr"), SG, b"]", s("append"), T2, REDUCE)
    assert scan_bytes(harmless).ok


def test_only_the_first_pickle_is_scanned() -> None:
    data = pickle.dumps({"a": 1}, protocol=4) + pickle.dumps(Reduce(os.system, "true"))
    assert scan_bytes(data).ok


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    result = scan_pickle(path)
    assert result.error == "the file is empty" and not result.ok and result.protocol is None


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"hello, this is a model\n", "it looks like a text file"),
        (b"PK\x03\x04rest-of-a-zip", "it looks like a zip archive"),
        (b"\x89HDF\r\n\x1a\n", "it looks like an HDF5 file"),
        (b"\x80\x09garbage", "unknown protocol 9"),
    ],
)
def test_not_a_pickle(content: bytes, words: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(content)
    result = scan_pickle(path)
    assert result.error is not None and result.error.startswith("this is not a pickle file (")
    assert words in result.error and not result.ok


def test_truncated_pickle(tmp_path: Path) -> None:
    data = ddump({"pipeline": lambda x: x, "features": ["a"], "w": np.arange(100.0)})
    path = tmp_path / "half.pkl"
    path.write_bytes(data[: len(data) // 2])
    result = scan_pickle(path)
    assert result.error is not None and "truncated or corrupt" in result.error
    assert not result.ok and result.protocol == dill.DEFAULT_PROTOCOL
    # What was read before the cut is still reported.
    evil = pickle.dumps([Reduce(os.system, "true"), list(range(1000))], protocol=4)
    cut = scan_bytes(evil[:-100])
    assert "truncated or corrupt" in (cut.error or "") and set(cut.refused) & SYSTEM


def test_corrupt_opcode_in_a_pickle() -> None:
    result = scan_bytes(b"\x80\x04\xff\xff.")
    assert (result.error or "").startswith("the pickle is truncated or corrupt")


def test_forged_huge_length_does_not_allocate(tmp_path: Path) -> None:
    # BINBYTES8 claiming 2**60 bytes: we must fail fast, not try to read 1 EiB.
    path = tmp_path / "forged.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (2**60).to_bytes(8, "little") + b"abc")
    assert "truncated or corrupt" in (scan_pickle(path).error or "")


def test_is_dangerous_rules() -> None:
    for name in ("os.system", "posix.system", "subprocess.Popen", "socket.socket", "sys.modules",
                 "builtins.eval", "builtins.__import__", "importlib.import_module", "dill.loads",
                 "pickle.loads", "somelib.os.system", "shutil.rmtree", "<unresolved>"):  # fmt: skip
        assert is_dangerous(name), name
    for name in ("numpy.random._pickle.__generator_ctor", "scipy.signal.butter", "osmnx.graph",
                 "builtins.getattr", "builtins.setattr", "dill._dill._create_function",
                 "collections.OrderedDict", "sklearn.pipeline.Pipeline"):  # fmt: skip
        assert not is_dangerous(name), name
    assert {"os.*", "subprocess.*", "builtins.eval", "socket.*"} <= DANGEROUS


_SAMPLE = pickle.dumps([Reduce(os.system, "true"), {"a": (1, "x")}, collections.OrderedDict()], 4)


@settings(max_examples=200, deadline=None, database=None)
@given(cut=st.integers(0, len(_SAMPLE)), noise=st.binary(max_size=40))
def test_any_bytes_give_a_result_never_an_exception(cut: int, noise: bytes) -> None:
    for data in (_SAMPLE[:cut] + noise, b"\x80\x04" + noise, noise):
        result = scan_bytes(data)
        assert result.ok == (result.error is None and not result.refused)
        assert set(result.refused) <= set(result.globals)


def test_large_byte_arguments_are_skipped_not_read(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "big.dill"
    path.write_bytes(dill.dumps({"pipeline": os.urandom(60 * 1024 * 1024), "features": ["a"]}))
    tracemalloc.start()
    try:
        result = scan_pickle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok and result.error is None
    assert peak < 5 * 1024 * 1024, f"the scan held {peak / 2**20:.0f} MB"
