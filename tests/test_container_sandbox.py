"""The model sandbox inside the container: which layers the probe finds under rootful and rootless
podman (default seccomp profile, the image's user), with and without the option the docs name,
and that the daemon refuses to start without a required layer. See docs/operations.md
(Container: The model sandbox in a container)."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.support.containers import Container, Pod, podman, podman_or_fail
from tests.support.wait import free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

ROOTLESS_USER = "mldropd-rootless"  # made by .ci/container-setup
UNMASK = ("--security-opt", "systempaths=unconfined")
PROBE = ("python", "-m", "mldropd.sandbox.probe")


def missing_layers(printed: str) -> dict[str, str]:
    found = json.loads(printed.strip().splitlines()[-1])
    return {layer: v["detail"] for layer, v in found.items() if not v["available"]}


def as_rootless(command: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        ["su", "-", ROOTLESS_USER, "-c", command], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"as {ROOTLESS_USER}: {command}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="session")
def rootless_image(image: str) -> str:
    """The image in the rootless user's store (loaded again only when it changed)."""
    podman_or_fail()
    assert subprocess.run(["id", ROOTLESS_USER], capture_output=True).returncode == 0, (
        f"no user {ROOTLESS_USER}: run `bash .ci/container-setup` as root"
    )
    image_id = podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    if subprocess.run(
        ["su", "-", ROOTLESS_USER, "-c", f"podman image exists {image_id}"], timeout=60
    ).returncode:
        save = subprocess.Popen(["podman", "save", image], stdout=subprocess.PIPE)
        loaded = subprocess.run(
            ["su", "-", ROOTLESS_USER, "-c", "podman load -q"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert save.wait(timeout=60) == 0 and loaded.returncode == 0, loaded.stderr[-3000:]
        as_rootless("podman image prune --force")  # the image this one replaced
    return image_id


def test_sandbox_layers_in_rootful_and_rootless_containers(
    image: str,
    rootless_image: str,
) -> None:
    """With podman's default seccomp profile every layer is in force for the image's user, but a
    fresh /proc (mountns) needs the /proc paths podman masks: systempaths=unconfined (docs)."""
    for where, run in (
        ("rootful", lambda *o: podman("run", "--rm", *o, image, *PROBE).stdout),
        (
            "rootless",
            lambda *o: as_rootless(" ".join(["podman run --rm", *o, rootless_image, *PROBE])),
        ),
    ):
        masked = missing_layers(run())
        assert list(masked) == ["mountns"], (where, masked)
        assert "proc: Operation not permitted" in masked["mountns"], (where, masked)
        assert missing_layers(run(*UNMASK)) == {}, where


def test_the_daemon_refuses_a_missing_required_layer(
    image: str,
    containers: Pod,
) -> None:
    """Without the option the daemon does not start unconfined: it names the layer and the fix;
    with mountns taken out of [sandbox] require it starts with the other layers."""
    refused = podman("run", "--rm", image, check=False, timeout=180)
    assert refused.returncode != 0
    assert "mountns (a private mount namespace" in refused.stderr, refused.stderr[-3000:]
    assert "remove them from [sandbox] require" in refused.stderr
    volume, _ = containers.volume()
    require = "uid,userns,pidns,netns,landlock,seccomp"
    name = containers.new_name("ctr")
    port = free_port()
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
        "-v", f"{volume}:/var/lib/mldropd", "-v", f"{containers.features}:/data/features:ro",
        "-e", "MLDROPD_FEATURES__PATH=/data/features", "-e", f"MLDROPD_SANDBOX__REQUIRE={require}",
        image,
    )  # fmt: skip
    Container(name, port).wait_ready()
    sandbox = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["sandbox"]
    assert list(sandbox["missing"]) == ["mountns"] and len(sandbox["in_force"]) == 6
