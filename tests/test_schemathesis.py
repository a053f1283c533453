"""Fuzz the JSON API from its own OpenAPI document (schemathesis): no 5xx, responses as documented.

The app runs in-process (ASGI) on a temporary home, without its lifespan: run requests are queued
but no batch job starts, so the examples stay fast. The caller is an admin (who reaches every
route, admin-only ones included) with a model, runs and DQ results in the database, so that
small generated ids hit real rows. /readyz is left out: answering 503 is its contract while the
scheduler is stopped.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
)

from mldropd.app import create_app
from mldropd.auth import create_user
from mldropd.db import session_scope
from mldropd.records import BatchRun, DQResult, Model, ModelRun, ModelVersion
from mldropd.settings import load_settings

pytestmark = pytest.mark.slow  # fuzzes every operation: 15-50 s

MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


def _home(root: Path) -> tuple[Any, str]:
    (root / "config.toml").write_text("[server]\nport = 8999\n[limits]\nmax_upload_mb = 1\n")
    app = create_app(load_settings(root / "config.toml", env={}))
    engine = app.state.daemon.engine
    admin, token = create_user(engine, "admin@example.com", admin=True)
    owner, _ = create_user(engine, "ann@example.com")
    day = dt.date(2026, 1, 5)
    with session_scope(engine) as s:
        for name in ("alpha", "beta"):
            model = Model(owner_id=owner.id or 0, name=name, email=owner.email, status="paused")
            s.add(model)
            s.flush()
            s.add(
                ModelVersion(
                    model_id=model.id or 0,
                    version=1,
                    artifact_key=f"x/{name}",
                    sha256="0" * 64,
                    size=1,
                    features=["f00"],
                    contract={},
                )
            )
            batch = BatchRun(date=day, trigger="manual", status="succeeded")
            s.add(batch)
            s.flush()
            run = ModelRun(
                batch_id=batch.id or 0,
                model_id=model.id or 0,
                model_version=1,
                date=day,
                trigger="manual",
                status="failed",
                error="boom",
            )
            s.add(run)
            s.flush()
            s.add(DQResult(model_run_id=run.id or 0, model_id=model.id or 0, date=day))
    return app, token


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    return _home(tmp_path_factory.mktemp("schemathesis"))


def _fuzz(operation: Any, mode: GenerationMode, token: str) -> str | None:
    """Up to MAX_EXAMPLES generated requests to one operation; the first failure, if any."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same examples every run: a failure here is reproducible
        database=None,
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

    try:
        check()
    except Unsatisfiable:  # no request can break this operation's schema (all fields optional)
        return None
    except (Exception, BaseExceptionGroup) as exc:  # collected: one run reports every operation
        return f"{operation.label} ({mode.value}): {exc}"
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_answers_as_documented(home: tuple[Any, str], mode: GenerationMode) -> None:
    app, token = home
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app).exclude(path="/readyz")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # the whole API, not an empty document
    failures = [f for op in operations if (f := _fuzz(op, mode, token))]
    assert not failures, "\n\n".join(failures)


def test_openapi_shows_the_answers_fields(home: tuple[Any, str]) -> None:
    """Every /api/v1 answer with a body is documented with its fields, not an empty object."""
    app, _ = home
    document = schemathesis.openapi.from_asgi("/schema/openapi.json", app).raw_schema
    components = document["components"]["schemas"]

    def fields(schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            return fields(components[schema["$ref"].rsplit("/", 1)[-1]])
        if schema.get("type") == "array":
            return fields(schema["items"])
        return dict(schema.get("properties") or {})

    answers = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/api/v1/") or not isinstance(operation, dict):
                continue
            for code, response in operation.get("responses", {}).items():
                if code.startswith("2") and code != "204":
                    body = response["content"]["application/json"]["schema"]
                    answers[f"{method.upper()} {path} {code}"] = fields(body)
    assert len(answers) >= 12
    assert [op for op, found in answers.items() if not found] == []
    assert {"id", "name", "status", "last_run", "last_dq"} <= set(answers["GET /api/v1/models 200"])
    assert "versions" in answers["GET /api/v1/models/{model_id} 200"]
    assert {"run_id", "status", "date"} <= set(answers["POST /api/v1/models/{model_id}/runs 202"])
    assert set(answers["POST /api/v1/runs 202"]) == {"runs"}
    assert {"quota", "active_models"} <= set(answers["PATCH /api/v1/users/{email} 200"])
