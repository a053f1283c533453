"""The image, built from the repository's Containerfile and run with podman as an operator runs it.

- the commands of docs/operations.md (Container) run as they are shown: build, run, /readyz
  through the published port, the daemon's user, the HEALTHCHECK, a graceful `podman stop`;
- the home volume outlives its container: a model uploaded and scored through the API is there
  in a new container, and the next sweep runs in it;
- an upgrade: a database of an older schema revision is migrated, with a backup, at start;
- the image holds the pinned dependencies and nothing for building or testing;
- compose.yaml is valid, and its config passes `mldropd check-config` in the image.

Needs podman, and for the base image made without a registry, debootstrap and root
(`bash .ci/container-setup` installs them). Deselect with -m 'not container'.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from mldropd.db import FIRST_REVISION, head_revision
from tests.support.containers import (
    BUILD,
    ROOT,
    UID,
    Container,
    Pod,
    Step,
    auth,
    check_scores,
    docs_block,
    podman,
    render,
    run_steps,
    wait_run,
)
from tests.support.home import N_ENTITIES
from tests.support.schema import at_first_revision
from tests.support.wait import free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

# -- the docs' commands (docs/operations.md renders them with DOCS_VALUES) ----------------------
RUN = Step(
    "podman run -d --name {name} -p {publish}:8080 --stop-timeout 90 \\\n"
    "    --security-opt systempaths=unconfined \\\n"
    "    -v {volume}:/var/lib/mldropd \\\n"
    "    -v {features}:/data/features:ro \\\n"
    "    -e MLDROPD_FEATURES__PATH=/data/features \\\n"
    "    {image}"
)
READY = Step(
    "curl -sf --retry 60 --retry-all-errors --retry-delay 1 localhost:{port}/readyz",
    '{"status":"ok","checks":{"database":"ok","store":"ok","scheduler":"ok","features":"ok",'
    '"disk":"ok","sandbox":"ok"},"sandbox":{"in_force":["landlock","mountns","netns","pidns",'
    '"seccomp","uid","userns"],"missing":{},"required":["uid","mountns","pidns","netns",'
    '"landlock","seccomp"]}}',
)
TOP = Step(
    "podman top {name} user args",
    "USER        COMMAND\n"
    "mldropd     /usr/bin/tini -e 143 -- mldropd serve\n"
    "mldropd     /opt/mldropd/bin/python /opt/mldropd/bin/mldropd serve\n"
    "...",
)
QUICKSTART = (
    BUILD,
    Step("podman volume create {volume}", "{volume}"),
    RUN,
    READY,
    TOP,
    Step("podman exec {name} mldropd users add admin@example.com --admin", "...\nmld_..."),
    Step(
        "podman healthcheck run {name} \\\n"
        "    && podman inspect --format '{{.State.Health.Status}}' {name}",
        "healthy",
    ),
    Step("podman stop {name} && podman inspect --format '{{.State.ExitCode}}' {name}", "{name}\n0"),
    Step(
        "podman logs --tail 3 {name} 2>&1",
        "... mldropd.daemon: daemon stopped\n"
        "... uvicorn.error: Application shutdown complete.\n"
        "... uvicorn.error: Finished server process [...]",
    ),
)
UPGRADE = (
    Step("podman stop {name} && podman rm {name}", "{name}\n{name}"),
    RUN,
    READY,
    Step(
        "podman logs {name} 2>&1 | grep 'schema revision'",
        "... database /var/lib/mldropd/mldropd.db upgraded from schema revision 0001 to ...",
    ),
    Step("podman exec {name} ls /var/lib/mldropd", "...mldropd.db.bak-0001..."),
)
DOCS_VALUES = {
    "build_args": "",
    "image": "mldropd",
    "name": "mldropd",
    "volume": "mldropd-home",
    "publish": "8080",
    "port": "8080",
    "features": "/srv/features",
}


def test_the_docs_show_the_tested_commands() -> None:
    """docs/operations.md shows these steps; after changing them, paste the block printed here."""
    for marker, steps in (("container-quickstart", QUICKSTART), ("container-upgrade", UPGRADE)):
        expected = render(steps, DOCS_VALUES)
        assert docs_block(marker) == expected, f"replace the {marker} block with:\n{expected}"


# -- the tests ------------------------------------------------------------------------------
def test_quickstart_from_the_docs(containers: Pod) -> None:
    """Run, ready through the published port, non-root, healthy, and a graceful stop."""
    port = free_port()
    values = {
        "image": containers.image,
        "name": containers.new_name("ctr"),
        "volume": containers.new_name("home"),
        "publish": f"127.0.0.1:{port}",
        "port": str(port),
        "features": str(containers.features),
    }
    top = QUICKSTART.index(TOP)
    took = run_steps(QUICKSTART[1 : top + 1], values)  # the image fixture ran the build step
    users = podman("top", values["name"], "huser").stdout.split()  # on this machine
    assert users[0] == "HUSER" and set(users[1:]) == {str(UID)}, users
    took |= run_steps(QUICKSTART[top + 1 :], values)
    stop = next(seconds for command, seconds in took.items() if command.startswith("podman stop"))
    assert stop < 30, f"an idle daemon took {stop:.1f} s to stop"  # podman kills it at 90 s
    uid = podman("inspect", "--format", "{{.Config.User}}", values["name"]).stdout.strip()
    assert uid == f"{UID}:{UID}"


def next_sweep_time(after_s: int) -> dt.datetime:
    """A whole minute at least after_s seconds from now (UTC): the sweep's cron time."""
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=after_s + 60)
    return at.replace(second=0, microsecond=0)


def test_the_home_volume_outlives_the_container(
    containers: Pod, model_files: dict[str, Path]
) -> None:
    """Upload and score in one container; in a new one on the same volume the model, its runs and
    scores are there, and the persisted sweep job fires and scores the model."""
    sweep_at = next_sweep_time(after_s=90)  # after the first container has gone
    env = {"MLDROPD_SCHEDULER__SWEEP": f"{sweep_at.minute} {sweep_at.hour} * * *"}
    volume, home = containers.volume()
    first = containers.run(volume, env)
    token = first.exec("mldropd", "users", "add", "ann@example.com").split()[-1]
    model_file = model_files["logreg"]
    with open(model_file, "rb") as f:
        uploaded = httpx.post(
            f"{first.url}/api/v1/models",
            headers=auth(token),
            files={"file": (model_file.name, f, "application/octet-stream")},
            data={"email": "ann@example.com", "schedule": "daily"},
            timeout=180,
        )
    assert uploaded.status_code == 201, uploaded.text
    model = uploaded.json()
    yesterday = sweep_at.date() - dt.timedelta(days=1)
    accepted = httpx.post(
        f"{first.url}/api/v1/models/{model['id']}/runs",
        headers=auth(token),
        json={"date": yesterday.isoformat()},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    run = wait_run(first, token, model["id"], yesterday)
    assert run["status"] == "succeeded" and run["rows"] == N_ENTITIES, run
    seconds, code = first.stop()
    assert code == 0, first.logs()[-3000:]
    podman("rm", first.name)
    assert dt.datetime.now(dt.UTC) < sweep_at, (
        "the first container ran past the sweep time; raise after_s of next_sweep_time"
    )

    second = containers.run(volume, env)
    again = httpx.get(f"{second.url}/api/v1/models/{model['id']}", headers=auth(token), timeout=30)
    assert again.status_code == 200, again.text  # the token, the model: the database survived
    assert (again.json()["name"], again.json()["version"]) == (model["name"], 1)
    kept = wait_run(second, token, model["id"], yesterday)
    assert (kept["id"], kept["status"], kept["rows"]) == (run["id"], "succeeded", N_ENTITIES)
    check_scores(home, containers.features, model_file, model["id"], yesterday)

    swept = wait_run(second, token, model["id"], sweep_at.date())
    assert swept["status"] == "succeeded", swept
    assert "sweep planned 1 due model(s)" in second.logs()
    check_scores(home, containers.features, model_file, model["id"], sweep_at.date())


def test_an_older_schema_is_upgraded_with_a_backup(containers: Pod) -> None:
    """The docs' upgrade steps on a home whose database an older mldropd made."""
    volume, home = containers.volume()
    at_first_revision(home / "mldropd.db")  # one user, ann@example.com
    for path in (home, *home.iterdir()):
        os.chown(path, UID, UID)
    name = containers.new_name("ctr")
    podman("create", "--name", name, "-v", f"{volume}:/var/lib/mldropd", containers.image)
    port = free_port()
    run_steps(
        UPGRADE,
        {
            "image": containers.image,
            "name": name,
            "volume": volume,
            "publish": f"127.0.0.1:{port}",
            "port": str(port),
            "features": str(containers.features),
        },
    )
    logs = Container(name, port).logs()
    assert f"upgraded from schema revision {FIRST_REVISION} to {head_revision()}" in logs
    with sqlite3.connect(home / "mldropd.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (head_revision(),)
        ]
        assert db.execute("SELECT email FROM user").fetchall() == [("ann@example.com",)]
    with sqlite3.connect(home / f"mldropd.db.bak-{FIRST_REVISION}") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (FIRST_REVISION,)
        ]


def image_run(image: str, *command: str, user: str | None = None) -> str:
    options = ["--user", user] if user else []
    return podman("run", "--rm", *options, "--entrypoint", command[0], image, *command[1:]).stdout


def test_the_image_holds_pinned_dependencies_and_no_build_or_test_tools(image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\nimage size {size / 1e6:.0f} MB")
    assert size < 1_400_000_000, f"the image grew to {size / 1e6:.0f} MB"
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    frozen = image_run(image, "/opt/mldropd/bin/pip", "list", "--format", "freeze")
    installed = dict(line.lower().replace("_", "-").split("==") for line in frozen.split())
    unpinned = {
        name: version
        for name, version in installed.items()
        if name not in ("mldropd", "pip", "setuptools") and pins.get(name) != version
    }
    assert unpinned == {}, "installed, but not as constraints.txt pins them"
    test_only = {"pytest", "moto", "playwright", "hypothesis", "schemathesis", "ruff", "mypy"}
    assert test_only & set(installed) == set()
    assert "pyspark" not in installed  # Spark only with --build-arg SPARK=true
    missing = image_run(image, "sh", "-c", "for t in gcc cc make java; do command -v $t; done; :")
    assert missing == "", f"build tools or Java in the image: {missing}"


def test_compose_example_is_valid_and_its_config_checks(image: str, features: Path) -> None:
    compose = ROOT / "compose.yaml"
    spec = yaml.safe_load(compose.read_text())
    if shutil.which("docker-compose"):  # Debian's docker-compose validates the Compose spec
        proc = subprocess.run(
            ["docker-compose", "-f", str(compose), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    else:
        raise AssertionError("docker-compose is missing: run `bash .ci/container-setup`")
    service = spec["services"]["mldropd"]
    mounts = [v for v in service["volumes"] if v.endswith(":/var/lib/mldropd/config.toml:ro")]
    assert len(mounts) == 1, "compose.yaml mounts no config.toml into the home"
    config = (ROOT / mounts[0].split(":")[0]).resolve()
    options = [f"-e={k}={v}" for k, v in (service.get("environment") or {}).items()]
    options += [f"--security-opt={o}" for o in service.get("security_opt", [])]
    checked = podman(
        "run", "--rm", "-v", f"{config}:/var/lib/mldropd/config.toml:ro", *options,
        image, "mldropd", "check-config",
    ).stdout  # fmt: skip
    assert checked.strip().endswith("OK: the configuration is valid"), checked
    assert 'kind = "s3"  # [file]' in checked and 'bucket = "mldropd"  # [file]' in checked
