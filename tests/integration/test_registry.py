"""Pulling the sandbox image from a real registry, and the image protocol check.

`.ci/start-registry` (run by tox's integration envs after the image is built) serves an
open registry on 127.0.0.1:5000 holding 127.0.0.1:5000/pybox:latest, and one with
htpasswd authentication on 127.0.0.1:5001. The pull tests are skipped when the registry
does not answer; they run on the docker and podman backends (the remote engine of
docker-remote lives in its own network namespace, where 127.0.0.1 is not this host).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

import pybox
from pybox import ImageNotFound, ImagePullError, IncompatibleImage, PullProgress
from pybox.image_contract import IMAGE_PROTOCOL, PROTOCOL_LABEL, VERSION_LABEL
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE

REGISTRY = os.environ.get("PYBOX_TEST_REGISTRY", "127.0.0.1:5000")
AUTH_REGISTRY = os.environ.get("PYBOX_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
UNREACHABLE = "127.0.0.1:5999"  # nothing listens there
PULLED = f"{REGISTRY}/pybox:latest"

_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def registry_status(address: str, path: str = "/v2/") -> tuple[int | None, bytes]:
    try:
        with _direct.open(f"http://{address}{path}", timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return None, b""


def registry_has_pybox() -> bool:
    status, body = registry_status(REGISTRY, "/v2/pybox/tags/list")
    return status == 200 and "latest" in (json.loads(body or b"{}").get("tags") or [])


pytestmark = pytest.mark.skipif(BACKEND not in ("docker", "podman"),
                                reason="the registry runs on this host's loopback: docker and podman backends only")
needs_registry = pytest.mark.skipif(not registry_has_pybox(),
                                    reason=f"no registry with pybox:latest at {REGISTRY} (bash .ci/start-registry)")


@pytest.fixture
def engine():
    backend = get_plugins().backend(BACKEND)()
    yield backend
    backend.close()


def remove_image(image: str) -> None:
    """Remove the engine's copy of ``image`` (only the name when others share it)."""
    if BACKEND == "docker":
        import docker
        import docker.errors

        client = docker.from_env()
        try:
            client.api.remove_image(image, force=True)
        except docker.errors.NotFound:
            pass
        finally:
            client.close()
    else:
        from pybox_podman.backend import PodmanBackend

        backend = PodmanBackend()
        try:
            response = backend.api.delete(f"/images/{quote(image, safe='')}", params={"force": True})
            assert response.status_code in (200, 404), response.text
        finally:
            backend.close()


def push_image(image: str) -> None:
    """Push ``image`` (named with the test registry) from the engine under test."""
    if BACKEND == "docker":
        import docker

        client = docker.from_env()
        try:
            for event in client.api.push(image, stream=True, decode=True):
                assert not event.get("error"), event
        finally:
            client.close()
    else:
        from pybox_podman.backend import PodmanBackend

        backend = PodmanBackend()
        try:
            response = backend.api.post(f"/images/{quote(image, safe='')}/push",
                                        params={"destination": image, "tlsVerify": False}, stream=True, timeout=300)
            assert response.status_code < 400, response.text
            for line in response.iter_lines():
                assert not (line and json.loads(line).get("error")), line
        finally:
            backend.close()


@pytest.fixture(scope="module")
def pushed():
    """An image in the registry with a layer of its own (random bytes) on top of the
    sandbox image: pulling it moves bytes whatever the engine already has."""
    token = f"{os.getpid()}-{time.time_ns()}"
    image = f"{REGISTRY}/pybox-pulltest:{token}"
    backend = get_plugins().backend(BACKEND)()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "Dockerfile").write_text(
                f"FROM {IMAGE}\nRUN echo {token} >/tmp/pull-test-token && head -c 3000000 /dev/urandom "
                f">/tmp/pull-test-layer\n")
            backend.build_image(Path(tmp), image, {}, lambda line: None)
        push_image(image)
    finally:
        backend.close()
    remove_image(image)
    yield image
    remove_image(image)


# -- the sandbox image's labels and tags ---------------------------------------------------------


def test_the_built_image_carries_its_protocol_and_version(engine):
    labels = engine.image_labels(IMAGE)
    assert labels is not None, f"build {IMAGE} first"
    assert labels[PROTOCOL_LABEL] == str(IMAGE_PROTOCOL)
    assert labels[VERSION_LABEL] == pybox.__version__
    assert engine.image_exists(f"pybox:{pybox.__version__}")  # `pybox build` tags the version too
    assert engine.image_labels("pybox-no-such-image:0") is None


def test_an_image_of_another_protocol_is_refused_before_a_container_is_made(engine):
    tag = "pybox-old-protocol:test"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Dockerfile").write_text(f'FROM {IMAGE}\nLABEL {PROTOCOL_LABEL}="0" {VERSION_LABEL}="0.1.0"\n')
        engine.build_image(Path(tmp), tag, {}, lambda line: None)
    try:
        before = set(engine.list_containers({"pybox": "1"}))
        started = time.monotonic()
        with pytest.raises(IncompatibleImage, match="rebuild it with `pybox build`") as info:
            pybox.Sandbox(image=tag, backend=BACKEND, startup_timeout=60).start()
        assert time.monotonic() - started < 10  # at once, not after the startup timeout
        assert (info.value.found, info.value.version, info.value.expected) == ("0", "0.1.0", IMAGE_PROTOCOL)
        assert set(engine.list_containers({"pybox": "1"})) <= before  # no container was made for it
    finally:
        remove_image(tag)


def test_a_missing_image_without_a_registry_is_not_pulled():
    with pytest.raises(ImageNotFound, match="pybox build") as info:
        pybox.Sandbox(image="pybox-registry-test-missing:1", backend=BACKEND).start()
    assert not isinstance(info.value, ImagePullError)


# -- pulls from a real registry ----------------------------------------------------------------


@needs_registry
def test_a_registry_image_is_pulled_at_start_with_per_layer_progress(engine, pushed):
    remove_image(pushed)
    assert not engine.image_exists(pushed)
    events: list[PullProgress] = []
    with pybox.Sandbox(image=pushed, backend=BACKEND, pull_progress=events.append) as sb:
        assert sb.run("print(open('/tmp/pull-test-token').read().strip())").text == pushed.rsplit(":", 1)[1]
    assert engine.image_exists(pushed)
    assert events and all(event.image == pushed for event in events)
    layers = {event.layer for event in events if event.layer}
    assert len(layers) >= 3, events  # the image has many layers, each reported
    assert all(len(layer) == 12 for layer in layers)
    finished = {event.layer for event in events if event.status in ("Pull complete", "Already exists")}
    assert finished == layers
    assert any(event.status == "Pull complete" for event in events)  # at least our own layer moved
    if BACKEND == "docker":  # Docker reports bytes (Podman 4's API does not)
        assert any(event.total and event.current for event in events if event.status == "Downloading")


@needs_registry
def test_the_image_start_registry_pushed_runs(engine):
    remove_image(PULLED)
    with pybox.Sandbox(image=PULLED, backend=BACKEND, pull_progress=lambda event: None) as sb:
        assert sb.run("print(1)").text == "1"
    assert engine.image_exists(PULLED)


@needs_registry
def test_two_sandboxes_pulling_one_image_at_once_both_work(pushed):
    remove_image(pushed)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with pybox.Sandbox(image=pushed, backend=BACKEND, pull_progress=lambda event: None) as sb:
                results[n] = sb.run(f"print({n} * 2)").text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert results == {1: "2", 2: "4"}


def _start_in_a_child(image: str, stderr) -> subprocess.Popen[bytes]:
    code = (f"import pybox\nwith pybox.Sandbox(image={image!r}, backend={BACKEND!r}) as sb:\n"
            f"    print(sb.run('print(1)').text)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr)


@needs_registry
def test_progress_is_drawn_on_a_terminal_and_nothing_is_printed_elsewhere(pushed):
    remove_image(pushed)
    master, slave = pty.openpty()
    child = _start_in_a_child(pushed, slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 0 and out.strip() == b"1", shown.decode(errors="replace")[-2000:]
    text = shown.decode(errors="replace")
    assert f"Pulling {pushed}" in text and "Pull complete" in text, text[-2000:]

    remove_image(pushed)
    child = _start_in_a_child(pushed, subprocess.PIPE)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0 and out.strip() == b"1", err.decode(errors="replace")[-2000:]
    assert b"Pulling" not in err and b"\x1b[" not in err


@needs_registry
@pytest.mark.parametrize("image", [f"{REGISTRY}/pybox:no-such-tag", f"{REGISTRY}/pybox-no-such-repository:1"])
def test_an_unknown_tag_names_the_image_and_the_registry_answer(image):
    with pytest.raises(ImagePullError) as info:
        pybox.Sandbox(image=image, backend=BACKEND).start()
    error = info.value
    assert (error.image, error.registry, error.reason) == (image, REGISTRY, ImagePullError.NOT_FOUND)
    assert "manifest unknown" in error.detail
    assert image in str(error) and "manifest unknown" in str(error) and "no registry" not in str(error)
    assert error.__cause__ is not None


@pytest.mark.skipif(registry_status(AUTH_REGISTRY)[0] != 401,
                    reason=f"no registry with authentication at {AUTH_REGISTRY} (bash .ci/start-registry)")
def test_a_registry_asking_for_credentials_gives_an_authentication_error():
    image = f"{AUTH_REGISTRY}/pybox:latest"
    with pytest.raises(ImagePullError) as info:
        pybox.Sandbox(image=image, backend=BACKEND).start()
    error = info.value
    assert (error.registry, error.reason) == (AUTH_REGISTRY, ImagePullError.UNAUTHORIZED)
    assert "auth" in error.detail.lower()  # the engine's words: "no basic auth credentials" / "authentication required"
    assert image in str(error) and "log in" in str(error)


@pytest.mark.skipif(registry_status(UNREACHABLE)[0] is not None, reason=f"something listens on {UNREACHABLE}")
def test_an_unreachable_registry_is_named():
    image = f"{UNREACHABLE}/pybox:latest"
    started = time.monotonic()
    with pytest.raises(ImagePullError) as info:
        pybox.Sandbox(image=image, backend=BACKEND).start()
    assert time.monotonic() - started < 60
    error = info.value
    assert (error.registry, error.reason) == (UNREACHABLE, ImagePullError.UNREACHABLE)
    assert "connection refused" in error.detail
    assert image in str(error) and "unreachable" in str(error)
