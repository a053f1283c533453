"""Models saved under other library versions are warned about, never refused; the notebook
mistakes users really make get words that name the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dill
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mldropd import save_model
from mldropd.libversions import META_KEY, compare, versions_of


def _mldropd(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mldropd", *args, "--config", str(home / "config.toml")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=home,
    )


def _fitted() -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"f00": rng.random(200), "f01": rng.random(200)})
    return LogisticRegression().fit(x, (x["f00"] > 0.5).astype(int))


def test_versions_of_a_pipeline_and_the_comparison() -> None:
    import sklearn

    found = versions_of(_fitted())
    assert found["scikit-learn"] == sklearn.__version__ and found["numpy"] == np.__version__
    assert "python" in found
    said = compare({"scikit-learn": "1.2.2", "gone-lib": "0.1"}, {"scikit-learn": "1.9.1"})
    assert said == [
        "the model was saved with gone-lib 0.1, which is not installed where models run: "
        "loading or scoring may fail; ask an admin to install it",
        "the model was saved with scikit-learn 1.2.2; models run with scikit-learn 1.9.1: "
        "scores may differ. Re-save it with scikit-learn 1.9.1 (or ask an admin for 1.2.2)",
    ]


@pytest.mark.slow  # another scikit-learn in a venv, validation in the sandbox
def test_a_model_from_an_older_sklearn_is_warned_about_not_refused(
    home: Path, tmp_path: Path
) -> None:
    import sklearn

    path = save_model(tmp_path / "old.dill", pipeline=_fitted(), features=["f00", "f01"])
    with open(path, "rb") as f:
        obj = dill.load(f)
    assert obj["meta"][META_KEY]["scikit-learn"] == sklearn.__version__  # recorded at save
    obj["meta"][META_KEY]["scikit-learn"] = "1.2.2"
    raw = dill.dumps(obj, recurse=True)
    here = sklearn.__version__.encode()
    assert len(here) == len(b"1.2.2")  # the estimator's own pickled version, as 1.2.2 wrote it
    old = tmp_path / "old.dill"
    old.write_bytes(raw.replace(b"\x8c\x05" + here, b"\x8c\x05" + b"1.2.2"))
    result = _mldropd(home, "models", "check", str(old), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    text = " ".join(report["warnings"])
    assert "saved with scikit-learn 1.2.2; models run with scikit-learn" in text
    assert "InconsistentVersionWarning" in text  # sklearn's own words while unpickling
    plain = _mldropd(home, "models", "check", str(old))
    assert "warning: the model was saved with scikit-learn 1.2.2" in plain.stdout

    from litestar.testing import TestClient

    from mldropd.app import create_app
    from mldropd.auth import create_user
    from mldropd.db import init_db, make_engine
    from mldropd.settings import load_settings

    settings = load_settings(home / "config.toml", env={})
    db = make_engine(settings.database.path)
    init_db(db)
    token = create_user(db, "ann@example.com")[1]
    client = TestClient(create_app(settings), timeout=120)
    headers = {"Authorization": f"Bearer {token}"}
    with open(old, "rb") as f:
        created = client.post("/api/v1/models", headers=headers, files={"file": ("old.dill", f)})
    assert created.status_code == 201, created.text
    model = client.get(f"/api/v1/models/{created.json()['id']}", headers=headers).json()
    assert any("scikit-learn 1.2.2" in w for w in model["versions"][0]["warnings"])


@pytest.mark.slow  # a notebook script in a real process, validation in the sandbox
def test_forgot_recurse_gets_a_hint_and_a_sample_without_a_column_a_contract_error(
    home: Path, tmp_path: Path
) -> None:
    script = tmp_path / "notebook.py"  # a notebook's __main__: np is a notebook global
    script.write_text(
        "import dill, numpy as np\n"
        "score = lambda frame: np.full(len(frame), 0.5)\n"
        "dill.dump({'pipeline': score, 'features': ['f00']}, "
        f"open({str(tmp_path / 'nr.dill')!r}, 'wb'))\n"
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    result = _mldropd(home, "models", "check", str(tmp_path / "nr.dill"))
    assert result.returncode == 1
    assert "NameError: name 'np' is not defined" in result.stderr
    assert "dill.dump(obj, f, recurse=True)" in result.stderr

    sample = pd.DataFrame({"f00": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"- sample: the sample lacks f01, which `features` lists"):
        save_model(tmp_path / "x.dill", pipeline=_fitted(), features=["f00", "f01"], sample=sample)
