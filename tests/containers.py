"""Helpers of tests/test_container.py: podman calls, the documented command steps, containers.

The container section of docs/operations.md shows the commands rendered from the steps below
with an operator's values (`DOCS_VALUES`); the tests run the same steps with their own values
(a test image tag, a free port on 127.0.0.1, fresh names), and a test keeps the page in step.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "operations.md"
UID = 10001  # the image's user (Containerfile: USER 10001:10001)


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
