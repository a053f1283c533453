"""The image built with --build-arg SPARK=true: Java and pyspark are there, and a model scored with
the Spark engine inside the container gets the same scores as its own predict_proba."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.containers import (
    BUILD,
    Pod,
    auth,
    build_args,
    check_scores,
    pod,
    podman,
    run_steps,
    wait_run,
)
from tests.support.home import N_ENTITIES

pytestmark = [pytest.mark.container, pytest.mark.spark, pytest.mark.timeout(2400)]

SPARK_IMAGE = "localhost/mldropd:test-spark"


@pytest.fixture(scope="session")
def spark_image(base_image: str) -> str:
    """The docs' build command with SPARK=true (cold about 10 min: pyspark builds from source)."""
    start = time.monotonic()
    args = build_args(base_image) + " --build-arg SPARK=true"
    run_steps((BUILD,), {"build_args": args, "image": SPARK_IMAGE})
    print(f"\nimage {SPARK_IMAGE} built in {time.monotonic() - start:.0f} s")
    return SPARK_IMAGE


def test_the_spark_build_has_java_and_pyspark(spark_image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", spark_image).stdout)
    print(f"\nimage size with Spark {size / 1e6:.0f} MB")
    java = podman("run", "--rm", "--entrypoint", "java", spark_image, "-version").stderr
    assert 'version "17.' in java, java
    version = podman(
        "run", "--rm", spark_image, "python", "-c", "import pyspark; print(pyspark.__version__)"
    )
    assert version.stdout.strip() == "4.3.0"


@pytest.fixture
def spark_pod(spark_image: str, features: Path) -> Iterator[Pod]:
    with pod(spark_image, features) as p:
        yield p


def test_a_model_scored_with_spark_in_the_container(
    spark_pod: Pod, model_files: dict[str, Path]
) -> None:
    volume, home = spark_pod.volume()
    c = spark_pod.run(volume, {"MLDROPD_ENGINE__DEFAULT": "spark"})
    token = c.exec("mldropd", "users", "add", "ann@example.com").split()[-1]
    model_file = model_files["logreg"]
    with open(model_file, "rb") as f:
        uploaded = httpx.post(
            f"{c.url}/api/v1/models",
            headers=auth(token),
            files={"file": (model_file.name, f, "application/octet-stream")},
            data={"email": "ann@example.com"},
            timeout=180,
        )
    assert uploaded.status_code == 201, uploaded.text
    model_id = uploaded.json()["id"]
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    accepted = httpx.post(
        f"{c.url}/api/v1/models/{model_id}/runs",
        headers=auth(token),
        json={"date": day.isoformat()},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    run = wait_run(c, token, model_id, day)
    assert run["status"] == "succeeded" and run["rows"] == N_ENTITIES, (run, c.logs()[-3000:])
    assert "spark job: 1 model(s)" in c.logs()  # scored by the Spark engine, not the local one
    check_scores(home, spark_pod.features, model_file, model_id, day)
