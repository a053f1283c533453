"""The scan against the adversarial corpus (tests/support/pickle_corpus.py) and real models of every
supported library; its cost stays linear, bounded in time and never raises."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mldropd.pickle_scan import MAX_DEPTH, scan_bytes, scan_pickle
from tests.support.pickle_corpus import (
    ACCEPTED,
    REFUSED,
    accepted_pickle,
    deep_marks,
    deep_tuples,
    quadratic_marks,
)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_pickle_is_refused_with_a_reason(name: str, tmp_path: Path) -> None:
    hostile = REFUSED[name]
    result = scan_bytes(hostile.make(f"touch {tmp_path / 'MARKER'}"))
    assert result.error is None and not result.ok
    assert hostile.refused <= set(result.refused), result.refused
    assert all(result.reasons[n] for n in result.refused)
    assert not (tmp_path / "MARKER").exists()


LIVE = sorted(n for n, h in REFUSED.items() if h.command)


@pytest.mark.parametrize("name", LIVE)
def test_hostile_pickle_runs_its_command_when_loaded(name: str, tmp_path: Path) -> None:
    """Proof that the corpus is real: loaded (in a throwaway process), the payload runs."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(REFUSED[name].make(f"touch {marker}"))
    code = f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=60, capture_output=True)
    assert marker.exists(), f"{name} did not run its command when loaded"


def test_path_write_text_payload_writes_a_file_when_loaded(tmp_path: Path) -> None:
    target = tmp_path / "written"
    path = tmp_path / "evil.pkl"
    path.write_bytes(REFUSED["Path(...).write_text"].make(str(target)))
    code = f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, check=True)
    assert target.read_text() == "written at load"
    assert scan_pickle(path).refused == ["pathlib.PosixPath(...).write_text"]


@pytest.fixture(scope="module", params=sorted(ACCEPTED))
def real_model(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    name = request.param
    if name in ("xgboost", "catboost", "statsmodels", "lightgbm"):
        pytest.importorskip(name)
    return name, accepted_pickle(name)


def test_real_models_pass(real_model: tuple[str, bytes]) -> None:
    name, data = real_model
    result = scan_bytes(data)
    assert result.ok, (name, result.refused, result.error)


@pytest.mark.parametrize("make", [deep_tuples, deep_marks])
def test_deep_nesting_is_an_error_not_an_exception(make: object) -> None:
    assert callable(make)
    for depth in (MAX_DEPTH - 5, 200_000):
        result = scan_bytes(make(depth))
        if depth < MAX_DEPTH:
            assert result.ok, result
        else:
            assert not result.ok and "levels deep" in (result.error or "")


def test_marks_do_not_copy_the_stack() -> None:
    """206 KB of N*k + (t0 took the old scan 16 s (each MARK copied the stack)."""
    started = time.monotonic()
    result = scan_bytes(quadratic_marks(206 * 1024))
    assert time.monotonic() - started < 3
    assert result.error is not None


def test_time_budget_stops_the_scan() -> None:
    started = time.monotonic()
    result = scan_bytes(quadratic_marks(20 << 20), budget_s=0.2)
    assert time.monotonic() - started < 5
    assert "time budget of 0.2 s" in (result.error or ""), result.error
    assert "[limits] scan_timeout_s" in (result.error or "")
