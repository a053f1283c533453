"""The upload path in order (no model code runs for an upload refused anyway), every attempt
audited, validation slots (503 with Retry-After), and names/e-mails matched whole at every door.

The probe model runs code when it is loaded (its notebook class's __setstate__ sleeps): the
scan cannot see that, only the sandbox would run it, and the sandbox lets it write nothing
outside its private folder; so "no model code ran" shows as an answer well before the sleep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import dill
import httpx
import numpy as np
import pytest
from litestar.testing import TestClient
from sklearn.linear_model import LogisticRegression

from mldropd import logs
from mldropd.app import create_app
from mldropd.errors import Busy, ConfigError
from mldropd.settings import Settings
from mldropd.validation_slots import ValidationSlots, check_memory, slot_count
from tests.support.cli import mldropd
from tests.support.http import bearer, page_upload, sign_in, upload
from tests.support.pickle_corpus import REFUSED

ANN = "ann@example.com"


def probe_model(folder: Path, *, sleep_s: float = 0.0, name: str = "probe") -> Path:
    """A valid model whose loading sleeps `sleep_s` seconds."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12))
    fitted = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))

    class Probe:  # defined here: dill pickles it by value, code included
        def __init__(self, model: Any) -> None:
            self.model = model

        def __setstate__(self, state: dict[str, Any]) -> None:
            import time

            time.sleep(state["sleep_s"])
            self.__dict__.update(state)

        def predict_proba(self, data: Any) -> Any:
            return self.model.predict_proba(np.asarray(data))

    probe = Probe(fitted)
    probe.sleep_s = sleep_s  # type: ignore[attr-defined]
    path = folder / f"{name}.dill"
    obj = {"pipeline": probe, "features": [f"f{i:02d}" for i in range(12)]}
    path.write_bytes(dill.dumps(obj, recurse=True))
    return path


def _audit(client: TestClient[Any], admin: str, action: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/audit?action={action}", headers=bearer(admin))
    assert response.status_code == 200, response.text
    return list(response.json())


def test_quota_and_form_are_checked_before_any_model_code(
    live_client: TestClient[Any], make_user: Callable[..., str], tmp_path: Path
) -> None:
    admin = make_user("root@example.com", admin=True)
    ann = make_user(ANN, quota=0)
    path = probe_model(tmp_path, sleep_s=40)  # validating it would take 40 s at least

    started = time.monotonic()
    over = upload(live_client, ann, path)
    assert over.status_code == 409, over.text
    assert "quota is 0" in over.text and "'probe' would be a new one" in over.text
    bad_name = upload(live_client, ann, path, name="bob/model")
    assert bad_name.status_code == 422 and "name" in bad_name.text
    assert time.monotonic() - started < 20, "model code ran for an upload refused anyway"

    refused = _audit(live_client, admin, "model.upload_refused")
    # The quota stops at the form; a bad name is reported with the static scan's findings
    # (every problem at once: the scan runs no model code), before the sandbox.
    assert [e["detail"]["stage"] for e in refused] == ["scan", "form"]
    quota = refused[-1]["detail"]  # newest first
    assert quota["outcome"] == "refused" and quota["status"] == 409
    assert quota["file"] == "probe.dill" and quota["size"] == path.stat().st_size
    assert quota["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "quota" in quota["reason"] and quota["globals"] == []


def test_every_attempt_is_audited_and_logged_as_json(
    live_client: TestClient[Any],
    make_user: Callable[..., str],
    model_files: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = make_user("root@example.com", admin=True)
    ann = make_user(ANN)
    evil = tmp_path / "evil.dill"
    evil.write_bytes(REFUSED["tempfile._os.system"].make(f"touch {tmp_path / 'RAN'}"))
    caplog.set_level(logging.INFO, logger="mldropd.audit")

    scanned = upload(live_client, ann, evil)
    assert scanned.status_code == 422 and "tempfile._os.system" in scanned.text
    ok = upload(live_client, ann, model_files["logreg"], name="churn")
    assert ok.status_code == 201, ok.text

    (refusal,) = _audit(live_client, admin, "model.upload_refused")
    detail = refusal["detail"]
    assert detail["stage"] == "scan" and detail["file"] == "evil.dill"
    assert detail["refused_globals"] == ["tempfile._os.system"]
    assert "tempfile._os.system" in detail["globals"] and "tempfile._os.system" in detail["reason"]
    (accepted,) = _audit(live_client, admin, "model.upload")
    assert accepted["target"] == f"model:{ok.json()['id']}"
    kept = accepted["detail"]
    assert kept["outcome"] == "accepted" and kept["file"] == model_files["logreg"].name
    assert kept["sha256"] == hashlib.sha256(model_files["logreg"].read_bytes()).hexdigest()
    assert "sklearn.pipeline.Pipeline" in kept["globals"]

    lines = [json.loads(logs.JsonFormatter().format(r)) for r in caplog.records]
    refused_line = next(x for x in lines if "model.upload_refused" in x["event"])
    assert refused_line["audit"]["sha256"] == detail["sha256"] and refused_line["user"] == ANN
    assert any(x["audit"].get("outcome") == "accepted" for x in lines)


@pytest.mark.slow  # its own running app (a smaller upload limit)
def test_a_too_large_upload_is_audited(
    settings: Settings, make_user: Callable[..., str], tmp_path: Path
) -> None:
    settings.limits.max_upload_mb = 1
    admin, ann = make_user("root@example.com", admin=True), make_user(ANN)
    big = tmp_path / "big.dill"
    big.write_bytes(b"\x80\x04" + b"N" * (3 << 20))
    with TestClient(create_app(settings), timeout=120) as live_client:
        assert upload(live_client, ann, big).status_code == 413
        (event,) = _audit(live_client, admin, "model.upload_refused")
    assert event["detail"]["status"] == 413 and event["detail"]["size"] > 1 << 20


def test_slot_count_follows_cores_and_memory(settings: Settings) -> None:
    settings.limits.concurrent_validations = 0
    assert slot_count(settings) >= 1
    settings.engine.model_memory_mb = 10**9  # no sandbox of that size fits: still one slot
    assert slot_count(settings) == 1
    settings.limits.concurrent_validations = 64
    with pytest.raises(ConfigError, match="concurrent_validations = 64"):
        check_memory(settings)


def test_excess_uploads_wait_then_get_503_with_retry_after(
    home: Path, daemon: Callable[..., Any], make_user: Callable[..., str], tmp_path: Path
) -> None:
    """One slot, held by a model that takes 8 s to load; a second upload waits 2 s, then 503."""
    with open(home / "config.toml", "a") as f:
        f.write("[limits]\nconcurrent_validations = 1\nvalidation_wait_s = 2\n")
    ann = make_user(ANN)
    slow = probe_model(tmp_path, sleep_s=8, name="slow")
    quick = probe_model(tmp_path, sleep_s=30, name="quick")  # if it were validated: 30 s more
    server = daemon()
    results: dict[str, httpx.Response] = {}
    ticket = "5" * 32

    def send(path: Path, **form: str) -> None:
        with open(path, "rb") as f:
            results[path.stem] = httpx.post(
                f"{server.url}/api/v1/models",
                headers=bearer(ann),
                data=form,
                files={"file": (path.name, f)},
                timeout=120,
            )

    first = threading.Thread(target=send, args=(slow,), kwargs={"ticket": ticket})
    first.start()
    with httpx.Client(base_url=server.url, timeout=30) as page:  # the deploy page's view
        page.get("/login")
        page.post("/login", data={"token": ann}, headers={"x-csrftoken": page.cookies["csrftoken"]})
        deadline = time.monotonic() + 60
        while page.get(f"/upload-progress/{ticket}").json()["stage"] != "validate":
            assert time.monotonic() < deadline and first.is_alive(), results
            time.sleep(0.1)  # the slow upload now holds the only slot
    started = time.monotonic()
    send(quick)
    waited = time.monotonic() - started
    first.join(timeout=120)
    busy = results["quick"]
    assert busy.status_code == 503, busy.text
    assert int(busy.headers["retry-after"]) >= 1 and "concurrent_validations" in busy.text
    assert 1.5 <= waited < 15  # waited its 2 s in line, never reached the sandbox
    assert results["slow"].status_code == 201, results["slow"].text


def test_the_line_shows_each_upload_its_place_and_refuses_after_the_wait() -> None:
    slots = ValidationSlots(1, wait_s=0.5)
    first, second = slots.ticket(1), slots.ticket(2, "ab" * 16)
    assert second.id == "ab" * 16 and slots.ticket(2, "../x").id != "../x"
    seen: list[tuple[str, int] | None] = []

    async def scenario() -> None:
        async def wait_for_a_slot() -> None:
            with pytest.raises(Busy) as busy:
                async with slots.slot(second):
                    raise AssertionError("the second upload got the only slot")
            assert busy.value.retry_after_s >= 1

        async with slots.slot(first), anyio.create_task_group() as tasks:
            tasks.start_soon(wait_for_a_slot)
            await anyio.sleep(0.1)
            place = slots.progress(2, second.id)
            seen.append((place.stage, place.ahead) if place else None)
            seen.append(None if slots.progress(1, second.id) is None else ("other", 0))

    anyio.run(scenario)
    assert seen == [("waiting", 0), None]  # first in line; another user cannot see it
    assert slots.progress(2, second.id) is None and slots.waiting == 0


BAD_NAMES = ["bobmodel\n", "bob\x00model", "b\u043ebmodel", "../bob", "bob/model", "bob\\model"]
BAD_EMAILS = [
    "ann@example.com\n",
    "ann\x00@example.com",
    "\u0430nn@example.com",  # Cyrillic a
    "ann/x@example.com",
    "ann@exa/mple.com",
    "ann@example.com\\x",
]


@pytest.mark.parametrize("value", BAD_NAMES)
def test_bad_names_are_refused_by_the_api_and_the_page(
    live_client: TestClient[Any], make_user: Callable[..., str], tmp_path: Path, value: str
) -> None:
    ann = make_user(ANN)
    path = probe_model(tmp_path)
    api = upload(live_client, ann, path, name=value)
    assert api.status_code == 422 and api.json()["errors"][0]["field"] == "name", api.text
    sign_in(live_client, ann)
    page = page_upload(live_client, path.read_bytes(), path.name, name=value)
    assert page.status_code == 422 and "is not valid" in page.text


def test_bad_emails_are_refused_by_every_door(
    live_client: TestClient[Any],
    make_user: Callable[..., str],
    model_files: dict[str, Path],
    home: Path,
) -> None:
    ann = make_user(ANN)
    created = upload(live_client, ann, model_files["logreg"], name="churn")
    assert created.status_code == 201, created.text
    sign_in(live_client, ann)
    content = model_files["logreg"].read_bytes()
    for value in BAD_EMAILS:
        api = upload(live_client, ann, model_files["logreg"], email=value)
        assert api.status_code == 422 and api.json()["errors"][0]["field"] == "email", value
        page = page_upload(live_client, content, "m.dill", email=value)
        assert page.status_code == 422 and "is not an email address" in page.text, value
        patch = live_client.patch(
            f"/api/v1/models/{created.json()['id']}", headers=bearer(ann), json={"email": value}
        )
        assert patch.status_code == 422 and "is not an email address" in patch.text, value
        if "\x00" not in value:  # an argv cannot carry NUL
            cli = mldropd(home, "users", "add", value.replace("ann", "cli"))
            assert cli.returncode != 0 and "is not an email address" in cli.stderr, value
