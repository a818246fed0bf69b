"""Pulling images and checking their protocol label, with fake backends: which names are
pulled, progress on a terminal and quiet elsewhere, errors classified from what engines
really say, one pull per image at a time, IncompatibleImage before anything starts."""

from __future__ import annotations

import io
import logging
import sys
import threading
import time

import pytest
from fakes import FakeBackend, FakeBackendPlugin

import pybox
from pybox import ImageNotFound, ImagePullError, IncompatibleImage, PullProgress
from pybox.build import build_image, version_tag
from pybox.image_contract import IMAGE_PROTOCOL, PROTOCOL_LABEL, VERSION_LABEL
from pybox.kernel.gateway import Gateway
from pybox.pull import (
    TerminalProgress,
    classify_pull_error,
    describe,
    ensure_image,
    pull,
    pull_error,
    registry_of,
    terminal_progress,
)

GOOD = {PROTOCOL_LABEL: str(IMAGE_PROTOCOL), VERSION_LABEL: pybox.__version__}
IMAGE = "127.0.0.1:5000/pybox:latest"


class PullingBackend(FakeBackend):
    """An engine holding ``images`` (name -> labels) that pulls from ``registry``."""

    name = "fakepull"
    images: dict[str, dict[str, str]] = {}
    registry: dict[str, dict[str, str]] = {}
    failures: dict[str, tuple[str, int | None]] = {}
    pulls: list[str] = []
    tags: list[tuple[str, str]] = []
    pull_delay = 0.0

    def image_exists(self, image):
        return image in type(self).images

    def image_labels(self, image):
        labels = type(self).images.get(image)
        return None if labels is None else dict(labels)

    def pull_image(self, image, progress=None):
        cls = type(self)
        cls.pulls.append(image)
        time.sleep(cls.pull_delay)
        if image in cls.failures:
            raise pull_error(image, *cls.failures[image])
        if image not in cls.registry:
            raise pull_error(image, f"manifest for {image} not found: manifest unknown: manifest unknown", 404)
        for layer in ("a1b2c3d4e5f6", "0f9e8d7c6b5a"):
            for status, current in (("Pulling fs layer", None), ("Downloading", 512), ("Downloading", 2048),
                                    ("Pull complete", None)):
                if progress is not None:
                    progress(PullProgress(image, layer, status, current, 2048 if current else None))
        if progress is not None:
            progress(PullProgress(image, None, f"Status: Downloaded newer image for {image}"))
        cls.images[image] = dict(cls.registry[image])

    def tag_image(self, image, tag):
        type(self).tags.append((image, tag))

    def build_image(self, context, tag, buildargs, progress):
        type(self).images[tag] = dict(GOOD)


class LabelBlindBackend(PullingBackend):
    """A third-party backend that does not read image labels (the default raises)."""

    name = "fakeblind"

    def image_labels(self, image):
        return FakeBackend.image_labels(self, image)  # the base class: UnsupportedOperation


@pytest.fixture
def engine(fake_plugins, monkeypatch):
    fake_plugins.register(FakeBackendPlugin(PullingBackend, LabelBlindBackend), name="pulling-plugin")
    for name, value in (("images", {}), ("registry", {}), ("failures", {}), ("pulls", []), ("tags", [])):
        monkeypatch.setattr(PullingBackend, name, value)
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: True)
    return PullingBackend


class Terminal(io.StringIO):
    def isatty(self):
        return True


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("image, registry", [
    ("pybox:latest", None),
    ("pybox", None),
    ("library/python:3.11", None),
    ("team/pybox:1", None),
    ("127.0.0.1:5000/pybox:latest", "127.0.0.1:5000"),
    ("localhost:5000/x:1", "localhost:5000"),
    ("localhost/x", "localhost"),
    ("registry.example.com/x", "registry.example.com"),
    ("ghcr.io/org/pybox@sha256:" + "0" * 64, "ghcr.io"),
    ("[::1]:5000/x", "[::1]:5000"),
])
def test_registry_part_of_a_name(image, registry):
    assert registry_of(image) == registry


def test_version_tag():
    assert version_tag("pybox:latest") == f"pybox:{pybox.__version__}"
    assert version_tag("127.0.0.1:5000/pybox") == f"127.0.0.1:5000/pybox:{pybox.__version__}"


# -- errors, from what the engines really answer ------------------------------------------------


@pytest.mark.parametrize("detail, status, reason", [
    # Docker 20.10
    ("manifest for 127.0.0.1:5000/pybox:nope not found: manifest unknown: manifest unknown", 404,
     ImagePullError.NOT_FOUND),
    ('Head "http://127.0.0.1:5001/v2/pybox/manifests/latest": no basic auth credentials', 500,
     ImagePullError.UNAUTHORIZED),
    ('Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection refused', 500,
     ImagePullError.UNREACHABLE),
    ("pull access denied for nosuch/image, repository does not exist or may require 'docker login': denied: "
     "requested access to the resource is denied", 404, ImagePullError.UNAUTHORIZED),
    ("toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating "
     "and upgrading: https://www.docker.com/increase-rate-limit", 500, ImagePullError.RATE_LIMITED),
    ('Get "https://registry.example.com/v2/": dial tcp: lookup registry.example.com: no such host', 500,
     ImagePullError.UNREACHABLE),
    ('Get "https://r.example.com/v2/": x509: certificate signed by unknown authority', 500, ImagePullError.TLS),
    # Podman 4.3 (libpod's pull stream)
    ("initializing source docker://127.0.0.1:5000/pybox:nope: reading manifest nope in 127.0.0.1:5000/pybox: "
     "manifest unknown: manifest unknown", None, ImagePullError.NOT_FOUND),
    ("initializing source docker://127.0.0.1:5001/pybox:latest: reading manifest latest in 127.0.0.1:5001/pybox: "
     "unauthorized: authentication required", None, ImagePullError.UNAUTHORIZED),
    ('initializing source docker://127.0.0.1:5999/pybox:latest: pinging container registry 127.0.0.1:5999: '
     'Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection refused', None,
     ImagePullError.UNREACHABLE),
    ('pinging container registry r.example.com: Get "https://r.example.com/v2/": http: server gave HTTP '
     'response to HTTPS client', None, ImagePullError.TLS),
    ("something else entirely", None, ImagePullError.FAILED),
    ("", 429, ImagePullError.RATE_LIMITED),
    ("", 401, ImagePullError.UNAUTHORIZED),
])
def test_pull_errors_are_classified(detail, status, reason):
    assert classify_pull_error(detail, status) == reason


def test_pull_error_names_the_image_the_registry_and_its_answer():
    error = pull_error(IMAGE, "manifest unknown:\n manifest unknown", 404)
    assert isinstance(error, ImageNotFound) and isinstance(error, pybox.BackendError)
    assert (error.image, error.registry, error.reason) == (IMAGE, "127.0.0.1:5000", ImagePullError.NOT_FOUND)
    assert error.detail == "manifest unknown: manifest unknown"
    text = str(error)
    assert IMAGE in text and "127.0.0.1:5000" in text and "manifest unknown" in text and "not found" in text
    assert "no registry" not in text
    assert pull_error("python:3.11", "connection refused").registry == "docker.io"
    assert "docker login" in str(pull_error(IMAGE, "unauthorized: authentication required"))
    assert "rate limit" in str(pull_error(IMAGE, "toomanyrequests: slow down"))


def test_incompatible_image_says_rebuild():
    missing = IncompatibleImage("pybox:latest", None, 1)
    assert "no org.pybox.protocol label" in str(missing) and "rebuild it with `pybox build`" in str(missing)
    other = IncompatibleImage("pybox:latest", "7", 1, "9.9.9")
    assert "protocol 7" in str(other) and "pybox 9.9.9" in str(other) and "image protocol 1" in str(other)
    assert isinstance(other, pybox.BackendError) and not isinstance(other, ImageNotFound)


# -- progress ------------------------------------------------------------------------------------


def test_describe_a_layer_event():
    assert describe(PullProgress("x", "abc", "Downloading", 1_000_000, 2_000_000), bar_width=10) == \
        "abc: Downloading [=====>    ] 1.0 MB/2.0 MB"
    assert describe(PullProgress("x", "abc", "Pull complete")) == "abc: Pull complete"
    assert describe(PullProgress("x", None, "Digest: sha256:0")) == "Digest: sha256:0"


def test_terminal_progress_redraws_one_line_per_layer_in_place():
    out = Terminal()
    renderer = TerminalProgress(out, interval=0)
    renderer(PullProgress(IMAGE, None, "Pulling from pybox"))
    renderer(PullProgress(IMAGE, "aaa", "Downloading", 1, 4))
    renderer(PullProgress(IMAGE, "bbb", "Waiting"))
    renderer(PullProgress(IMAGE, "aaa", "Pull complete"))
    renderer.close()
    assert renderer.lines() == [f"Pulling {IMAGE}: Pulling from pybox", "aaa: Pull complete", "bbb: Waiting"]
    text = out.getvalue()
    assert "\x1b[3A" in text  # back up over the three lines drawn before
    assert "aaa: Downloading [" in text and "aaa: Pull complete" in text


def test_terminal_progress_only_on_a_terminal():
    assert isinstance(terminal_progress(Terminal()), TerminalProgress)
    assert terminal_progress(io.StringIO()) is None


def test_pull_shows_progress_on_a_terminal(engine, monkeypatch):
    engine.registry[IMAGE] = GOOD
    monkeypatch.setattr(sys, "stderr", Terminal())
    pull(engine(), IMAGE)
    shown = sys.stderr.getvalue()
    assert "a1b2c3d4e5f6: Pull complete" in shown and "0f9e8d7c6b5a: Pull complete" in shown


def test_pull_is_quiet_when_stderr_is_no_terminal_but_logs(engine, monkeypatch, caplog):
    engine.registry[IMAGE] = GOOD
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with caplog.at_level(logging.DEBUG, logger="pybox.pull"):
        pull(engine(), IMAGE)
    assert sys.stderr.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "pybox.pull"]
    assert f"pulling image {IMAGE} from 127.0.0.1:5000" in messages
    assert any(m.startswith(f"pulled image {IMAGE} (2 layers)") for m in messages)
    # each layer's steps once, not every byte count
    assert sum("a1b2c3d4e5f6: Downloading" in m for m in messages) == 1


def test_a_given_callback_gets_every_event_and_the_terminal_nothing(engine, monkeypatch):
    engine.registry[IMAGE] = GOOD
    monkeypatch.setattr(sys, "stderr", Terminal())
    events: list[PullProgress] = []
    pull(engine(), IMAGE, events.append)
    assert sys.stderr.getvalue() == ""
    assert len(events) == 9 and {e.layer for e in events} == {"a1b2c3d4e5f6", "0f9e8d7c6b5a", None}
    assert events[2] == PullProgress(IMAGE, "a1b2c3d4e5f6", "Downloading", 2048, 2048)


def test_concurrent_pulls_of_one_image_pull_once(engine, monkeypatch):
    engine.registry[IMAGE] = GOOD
    monkeypatch.setattr(engine, "pull_delay", 0.3)
    errors: list[BaseException] = []

    def work():
        try:
            ensure_image(engine(), IMAGE, lambda event: None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors and engine.pulls == [IMAGE]


# -- the sandbox's image -------------------------------------------------------------------------


def test_a_missing_registry_image_is_pulled_at_start_with_progress(engine):
    engine.registry[IMAGE] = GOOD
    events: list[PullProgress] = []
    with pybox.Sandbox(image=IMAGE, backend="fakepull", pull_progress=events.append) as sb:
        assert sb.id is not None
    assert engine.pulls == [IMAGE]
    assert {e.layer for e in events if e.status == "Pull complete"} == {"a1b2c3d4e5f6", "0f9e8d7c6b5a"}


def test_an_image_without_registry_is_never_pulled(engine):
    with pybox.Sandbox(image="pybox:latest", backend="fakepull") as sb:  # the fake's start does not look
        assert sb.id is not None
    assert engine.pulls == []


def test_a_present_image_is_not_pulled(engine):
    engine.images[IMAGE] = GOOD
    with pybox.Sandbox(image=IMAGE, backend="fakepull"):
        pass
    assert engine.pulls == []


@pytest.mark.parametrize("detail, status, reason", [
    ("unauthorized: authentication required", None, ImagePullError.UNAUTHORIZED),
    ("manifest unknown", 404, ImagePullError.NOT_FOUND),
    ("toomanyrequests: Too Many Requests", 429, ImagePullError.RATE_LIMITED),
    ("dial tcp 127.0.0.1:5999: connect: connection refused", 500, ImagePullError.UNREACHABLE),
])
def test_a_failed_pull_starts_nothing(engine, detail, status, reason):
    engine.failures[IMAGE] = (detail, status)
    sb = pybox.Sandbox(image=IMAGE, backend="fakepull")
    with pytest.raises(ImagePullError) as info:
        sb.start()
    assert info.value.reason == reason and info.value.image == IMAGE and info.value.registry == "127.0.0.1:5000"
    assert all(("start",) not in b.calls for b in PullingBackend.instances)
    assert sb.id is None
    sb.close()


@pytest.mark.parametrize("labels, found", [({}, None), ({PROTOCOL_LABEL: "0", VERSION_LABEL: "0.1.0"}, "0")])
def test_an_image_of_another_protocol_is_refused_before_a_container_is_made(engine, labels, found):
    engine.images["pybox:latest"] = labels
    sb = pybox.Sandbox(image="pybox:latest", backend="fakepull", startup_timeout=60)
    started = time.monotonic()
    with pytest.raises(IncompatibleImage, match="rebuild it with `pybox build`") as info:
        sb.start()
    assert time.monotonic() - started < 5
    assert info.value.found == found and info.value.expected == IMAGE_PROTOCOL
    assert all(("start",) not in b.calls for b in PullingBackend.instances)
    sb.close()


def test_a_pulled_image_of_another_protocol_is_refused(engine):
    engine.registry[IMAGE] = {PROTOCOL_LABEL: "99"}
    with pytest.raises(IncompatibleImage, match="protocol 99"):
        pybox.Sandbox(image=IMAGE, backend="fakepull").start()


def test_backends_that_cannot_read_labels_skip_the_check_but_still_pull(engine):
    engine.images["pybox:latest"] = {}  # would be refused by a backend that reads labels
    with pybox.Sandbox(image="pybox:latest", backend="fakeblind"):
        pass
    engine.registry[IMAGE] = {}
    with pybox.Sandbox(image=IMAGE, backend="fakeblind"):
        pass
    assert engine.pulls == [IMAGE]


def test_a_backend_that_cannot_pull_reports_the_image_missing(fake_plugins, monkeypatch):
    class NoPull(FakeBackend):
        name = "nopull"

        def image_exists(self, image):
            return False

    fake_plugins.register(FakeBackendPlugin(NoPull), name="nopull-plugin")
    with pytest.raises(ImageNotFound, match="cannot pull images") as info:
        pybox.Sandbox(image=IMAGE, backend="nopull").start()
    assert not isinstance(info.value, ImagePullError)


def test_pull_progress_must_be_callable(fake_plugins):
    with pytest.raises(pybox.InvalidArgument, match="pull_progress"):
        pybox.Sandbox(backend="fake", pull_progress="yes")  # type: ignore[arg-type]


# -- pybox build ------------------------------------------------------------------------------------


def test_build_labels_the_version_tags_it_and_pulls_a_missing_base(engine, monkeypatch):
    engine.registry["registry.example.com/base:1"] = {}
    built: list[dict[str, str]] = []
    monkeypatch.setattr(PullingBackend, "build_image",
                        lambda self, context, tag, buildargs, progress: built.append(buildargs))
    lines: list[str] = []
    build_image("pybox:latest", backend="fakepull", base="registry.example.com/base:1", ca_bundle=None,
                progress=lines.append)
    assert engine.pulls == ["registry.example.com/base:1"]
    assert built == [{"BASE_IMAGE": "registry.example.com/base:1", "PYBOX_VERSION": pybox.__version__}]
    assert engine.tags == [("pybox:latest", f"pybox:{pybox.__version__}")]
    assert any(f"also tagged pybox:{pybox.__version__}" in line for line in lines)


def test_build_with_an_unpullable_base_names_the_registry_answer(engine):
    with pytest.raises(ImagePullError, match="manifest unknown") as info:
        build_image("pybox:latest", backend="fakepull", base="registry.example.com/nope:1", ca_bundle=None,
                    progress=lambda line: None)
    assert info.value.registry == "registry.example.com"


def test_terminal_progress_fits_the_screen_by_counting_finished_layers():
    renderer = TerminalProgress(Terminal(), interval=0)
    for n in range(30):
        renderer(PullProgress(IMAGE, f"layer{n:02d}", "Already exists" if n < 25 else "Downloading", 1, 2))
    assert len(renderer.lines()) == 31
    short = renderer.lines(height=5)
    assert short[1] == "25 layers done, 3 more in progress" and len(short) == 4
    assert short[2].startswith("layer25: Downloading")
