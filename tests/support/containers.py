"""Helpers of the container tests (tests/test_container*.py): podman calls, the documented
command steps, the image and its inputs, containers and checks of what runs in them.

The container section of docs/operations.md shows the commands rendered from the steps below
with an operator's values (`DOCS_VALUES`); the tests run the same steps with their own values
(a test image tag, a free port on 127.0.0.1, fresh names), and a test keeps the page in step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill
import duckdb
import httpx
import numpy as np

from mldropd.demo import write_features
from tests.support.home import N_ENTITIES, N_FEATURES, today
from tests.support.wait import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS_PAGE = ROOT / "docs" / "operations.md"
UID = 10001  # the image's user (Containerfile: USER 10001:10001)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TEST_IMAGE = "localhost/mldropd:test"


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run podman; on failure raise with its stderr (podman's own noise goes to stderr too)."""
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    return proc


def podman_or_fail() -> None:
    if shutil.which("podman") is None:
        raise AssertionError(
            "podman is not installed: run `bash .ci/container-setup` (installs podman, buildah, "
            "debootstrap) or leave these tests out with -m 'not container'"
        )


# -- documented command steps -------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One shell command of the docs; `output` (when given) is shown there and checked here.

    Both are templates: `{name}`-style keys are replaced by a values mapping. In `output`,
    `...` stands for any text."""

    command: str
    output: str | None = None
    timeout: float = 120


def fill(template: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def render(steps: tuple[Step, ...], values: Mapping[str, str]) -> str:
    """The steps as the docs show them: a console block."""
    lines = ["```console"]
    for step in steps:
        lines.append("$ " + fill(step.command, values))
        if step.output:
            lines.append(fill(step.output, values))
    lines.append("```")
    return "\n".join(lines)


def docs_block(marker: str) -> str:
    """The text between `<!-- marker -->` and `<!-- /marker -->` in the docs page."""
    text = DOCS_PAGE.read_text()
    found = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert found, f"{DOCS_PAGE.name} has no block <!-- {marker} --> ... <!-- /{marker} -->"
    return found.group(1)


def _squeeze(text: str) -> str:
    """Runs of spaces as one: podman aligns its columns to the widest value."""
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.strip().splitlines())


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in _squeeze(expected).split("..."))
    return re.fullmatch(pattern, _squeeze(actual), re.S) is not None


def run_steps(steps: tuple[Step, ...], values: Mapping[str, str]) -> dict[str, float]:
    """Run each step with bash in the repository; check its exit code and output.

    Returns the seconds each command took, by command."""
    took: dict[str, float] = {}
    for step in steps:
        command = fill(step.command, values)
        start = time.monotonic()
        proc = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=step.timeout
        )
        took[command] = time.monotonic() - start
        assert proc.returncode == 0, f"$ {command}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"
        if step.output is not None:
            expected = fill(step.output, values)
            assert matches(expected, proc.stdout), (
                f"$ {command}\nprinted:\n{proc.stdout}\nthe docs say:\n{expected}"
            )
    return took


# -- containers -----------------------------------------------------------------------------
@dataclass
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            if state != "running":
                raise AssertionError(f"container {self.name} is {state}:\n{self.logs()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
            return False

        wait_for(ready, timeout=timeout, interval=0.5, what=f"/readyz of {self.name}")

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr  # the daemon logs to stderr

    def exec(self, *args: str, timeout: float = 120) -> str:
        return podman("exec", self.name, *args, timeout=timeout).stdout

    def stop(self) -> tuple[float, int]:
        """`podman stop` (SIGTERM); returns its seconds and the container's exit code."""
        start = time.monotonic()
        podman("stop", self.name, timeout=180)
        took = time.monotonic() - start
        code = podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout
        return took, int(code)


@dataclass
class Pod:
    """Names the test's containers and volumes uniquely, and removes them afterwards."""

    image: str
    features: Path
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def new_name(self, kind: str) -> str:
        name = f"mldropd-test-{kind}-{uuid.uuid4().hex[:8]}"
        (self.volumes if kind == "home" else self.containers).append(name)
        return name

    def volume(self) -> tuple[str, Path]:
        """A new named volume and its folder on this machine (rootful podman)."""
        name = self.new_name("home")
        podman("volume", "create", name)
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout
        return name, Path(mountpoint.strip())

    def run(self, volume: str, env: Mapping[str, str] | None = None) -> Container:
        container = Container(self.new_name("ctr"), free_port())
        options = [f"-e={key}={value}" for key, value in (env or {}).items()]
        podman(
            "run", "-d", "--name", container.name, "--stop-timeout", "90",
            "--security-opt", "systempaths=unconfined",  # the sandbox's mountns (docs)
            "-p", f"127.0.0.1:{container.port}:8080",
            "-v", f"{volume}:/var/lib/mldropd",
            "-v", f"{self.features}:/data/features:ro",
            "-e", "MLDROPD_FEATURES__PATH=/data/features",
            *options, self.image,
        )  # fmt: skip
        container.wait_ready()
        return container

    def cleanup(self) -> None:
        for name in self.containers:
            podman("rm", "--force", "--time", "0", name, check=False)
        for name in self.volumes:
            podman("volume", "rm", "--force", name, check=False)


@contextlib.contextmanager
def pod(image: str, features: Path) -> Iterator[Pod]:
    p = Pod(image, features)
    try:
        yield p
    finally:
        p.cleanup()


# -- the image and its inputs (the conftest's fixtures) -------------------------------------
# The docs' build command (docs/operations.md renders it with the other steps).
BUILD = Step("podman build --format docker{build_args} -t {image} -f Containerfile .", None, 1800)


def make_base_image() -> str:
    """The base made locally (no registry here): cached in podman's store between runs."""
    podman_or_fail()
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "base-image")], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, f".ci/base-image failed:\n{proc.stderr[-4000:]}"
    return proc.stdout.split()[-1]


def build_args(base: str) -> str:
    args = f" --build-arg BASE={base}"
    if CA_BUNDLE.is_file():  # this machine reaches PyPI through a proxy only its own CAs trust
        args += f" -v {CA_BUNDLE}:{CA_BUNDLE}:ro"
    return args


def build_image(base: str) -> str:
    """The image, built by the docs' build command (cold about 6 min, warm seconds)."""
    start = time.monotonic()
    run_steps((BUILD,), {"build_args": build_args(base), "image": TEST_IMAGE})
    print(f"\nimage {TEST_IMAGE} built in {time.monotonic() - start:.0f} s")
    return TEST_IMAGE


def write_container_features(folder: Path) -> Path:
    """Feature slices from two days ago to tomorrow, readable by the container's user."""
    folder.chmod(0o755)
    days = [today() + dt.timedelta(days=i) for i in (-2, -1, 0, 1)]
    write_features(folder, days, N_ENTITIES, N_FEATURES)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


# -- checks of a running container ----------------------------------------------------------
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_run(c: Container, token: str, model_id: int, day: dt.date) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        runs = httpx.get(
            f"{c.url}/api/v1/runs",
            params={"model_id": model_id, "date": day.isoformat()},
            headers=auth(token),
            timeout=30,
        ).json()
        done = [r for r in runs if r["status"] in ("succeeded", "failed")]
        return done[0] if done and len(done) == len(runs) else None

    run: dict[str, Any] = wait_for(finished, timeout=240, what=f"the run of {model_id} on {day}")
    return run


def read_sorted(files: str, columns: str = "*") -> Any:
    """Rows of the Parquet files matching a glob, by entity_id, as a pandas frame."""
    relation = duckdb.sql(f"SELECT {columns} FROM read_parquet('{files}') ORDER BY entity_id")
    assert relation is not None
    return relation.df()


def check_scores(home: Path, features: Path, model_file: Path, model_id: int, day: dt.date) -> None:
    """The scores in the volume equal the model's predict_proba on that day's features."""
    with open(model_file, "rb") as f:
        model = dill.load(f)
    frame = read_sorted(f"{features}/dt={day}/*.parquet")
    scores = read_sorted(f"{home}/scores/dt={day}/model={model_id}/*.parquet", "entity_id, score")
    assert np.array_equal(scores["entity_id"].to_numpy(), frame["entity_id"].to_numpy())
    expected = model["pipeline"].predict_proba(frame[model["features"]])[:, 1]
    assert np.array_equal(scores["score"].to_numpy(), expected)
