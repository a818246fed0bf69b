"""Getting a sandbox's image ready: pulling it from its registry (with progress), and
refusing an image built for another image protocol before any container is made.

``Sandbox.start`` calls :func:`ensure_image`. An image missing on the engine is pulled
only when its name includes a registry (``127.0.0.1:5000/pybox:latest``,
``localhost/x``, ``registry.example.com/team/pybox:1``): a bare name such as
``pybox:latest`` is a local build, and its absence stays ``ImageNotFound`` ("build it
with pybox build"), never a surprise download from Docker Hub. ``pybox build`` pulls its
base image through :func:`pull` too.

Progress: a ``progress`` callable gets every :class:`~pybox.spec.PullProgress` event;
without one, a terminal (stderr is a TTY) shows one line per layer, redrawn in place
(:class:`TerminalProgress`), and anything else stays quiet. The logger ``pybox.pull``
says what is pulled, from where and how long it took (each layer's steps at DEBUG).
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import TextIO

from pybox.backend import Backend
from pybox.errors import ImageNotFound, ImagePullError, IncompatibleImage, UnsupportedOperation
from pybox.image_contract import IMAGE_PROTOCOL, PROTOCOL_LABEL, VERSION_LABEL
from pybox.spec import PullProgress, PullProgressCallback

__all__ = [
    "DEFAULT_REGISTRY",
    "PullProgress",
    "TerminalProgress",
    "check_image_labels",
    "classify_pull_error",
    "ensure_image",
    "pull",
    "pull_error",
    "registry_of",
    "terminal_progress",
]

log = logging.getLogger(__name__)

#: Where an image name without a registry part is pulled from (``pybox build``'s base).
DEFAULT_REGISTRY = "docker.io"


# -- names ---------------------------------------------------------------------------------


def registry_of(image: str) -> str | None:
    """The registry part of an image name, or None when it has none. Docker's rule: the
    part before the first ``/`` is a registry when it has a ``.`` or a ``:`` (a port),
    is ``localhost``, or has upper-case letters."""
    first, slash, _rest = image.partition("/")
    if not slash:
        return None
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first
    return None


# -- errors --------------------------------------------------------------------------------

_RATE_LIMITED = ("toomanyrequests", "too many requests", "rate limit")
_UNAUTHORIZED = ("unauthorized", "authentication required", "no basic auth credentials", "denied",
                 "forbidden", "incorrect username or password", "authentication failed")
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host",
                "connection reset", "timeout", "timed out", "server misbehaving", "name resolution",
                "cannot connect", "unable to connect", "dial tcp", "connect: ")
_TLS = ("x509", "certificate", "tls:", "http response to https client")
_NOT_FOUND = ("manifest unknown", "not found", "name unknown", "does not exist", "no such image",
              "reading manifest")


def classify_pull_error(detail: str, status: int | None = None) -> str:
    """The ``ImagePullError`` reason for what an engine said about a failed pull (and
    the HTTP status of its answer, when there was one)."""
    text = detail.lower()
    if status == 429 or any(word in text for word in _RATE_LIMITED):
        return ImagePullError.RATE_LIMITED
    if status in (401, 403) or any(word in text for word in _UNAUTHORIZED):
        return ImagePullError.UNAUTHORIZED
    if any(word in text for word in _UNREACHABLE):
        return ImagePullError.UNREACHABLE
    if any(word in text for word in _TLS):
        return ImagePullError.TLS
    if status == 404 or any(word in text for word in _NOT_FOUND):
        return ImagePullError.NOT_FOUND
    return ImagePullError.FAILED


def pull_error(image: str, detail: str, status: int | None = None) -> ImagePullError:
    """The error a backend raises for a failed pull of ``image``: ``detail`` is what the
    engine said (its error message), ``status`` the HTTP status of its answer."""
    detail = " ".join(str(detail).split()) or "no reason given"
    return ImagePullError(image, registry_of(image) or DEFAULT_REGISTRY, classify_pull_error(detail, status), detail)


# -- progress on a terminal ----------------------------------------------------------------


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def describe(event: PullProgress, bar_width: int = 24) -> str:
    """One line for ``event``: ``abc123: Downloading [=====>     ] 12.3 MB/45.6 MB``."""
    text = f"{event.layer}: {event.status}" if event.layer else event.status
    if event.total and event.current is not None:
        done = min(event.current, event.total)
        filled = int(bar_width * done / event.total)
        bar = "=" * filled + (">" if filled < bar_width else "") + " " * (bar_width - filled - 1)
        text += f" [{bar[:bar_width]}] {_size(done)}/{_size(event.total)}"
    elif event.current:
        text += f" {_size(event.current)}"
    return text


#: Layer statuses after which nothing more happens to the layer.
_FINISHED = frozenset({"Pull complete", "Already exists"})


class TerminalProgress:
    """Pull progress on a terminal, as ``docker pull`` shows it: a header line with
    the image and its last image-wide status, then one line per layer, redrawn in place
    (at most every ``interval`` seconds while bytes move; at once on a new status).
    Call it with each event; :meth:`close` draws the final state."""

    def __init__(self, stream: TextIO, interval: float = 0.1):
        self.stream = stream
        self.interval = interval
        self._image = ""
        self._header = ""
        self._layers: dict[str, PullProgress] = {}  # first-seen order
        self._drawn = 0  # lines on screen to move back over
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: PullProgress) -> None:
        with self._lock:
            self._image = event.image
            if event.layer is None:
                changed = event.status != self._header
                self._header = event.status
            else:
                before = self._layers.get(event.layer)
                changed = before is None or before.status != event.status
                self._layers[event.layer] = event
            if changed or time.monotonic() - self._last_draw >= self.interval:
                self._draw()

    def close(self) -> None:
        with self._lock:
            if self._layers or self._header:
                self._draw()

    def lines(self, height: int = 1000) -> list[str]:
        """What the block shows now, in at most ``height`` lines: when the layers do not
        fit, the finished ones are counted on one line instead of listed."""
        header = f"Pulling {self._image}" + (f": {self._header}" if self._header else "")
        events = list(self._layers.values())
        if len(events) + 1 <= height:
            return [header] + [describe(event) for event in events]
        active = [event for event in events if event.status not in _FINISHED]
        finished = len(events) - len(active)
        shown = [describe(event) for event in active[: max(0, height - 3)]]
        more = len(active) - len(shown)
        return [header, f"{finished} layers done" + (f", {more} more in progress" if more else ""), *shown]

    def _draw(self) -> None:
        columns, rows = shutil.get_terminal_size((100, 24))
        width = max(20, columns - 1)
        out = [f"\x1b[{self._drawn}A"] if self._drawn else []  # back to the block's first line
        lines = self.lines(max(3, rows - 1))  # the cursor cannot go back above the screen's top
        lines += [""] * (self._drawn - len(lines))  # a shorter block blanks the lines below it
        out += ["\r\x1b[2K" + line[:width] + "\n" for line in lines]  # cut, so no line wraps
        self._drawn = len(lines)
        self._last_draw = time.monotonic()
        try:
            self.stream.write("".join(out))
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not fail the pull
            pass


def terminal_progress(stream: TextIO | None = None) -> TerminalProgress | None:
    """A TerminalProgress on ``stream`` (default: stderr) when it is a terminal, else None."""
    stream = sys.stderr if stream is None else stream
    try:
        is_tty = stream.isatty()
    except (AttributeError, ValueError, OSError):
        is_tty = False
    return TerminalProgress(stream) if is_tty else None


# -- pulling -------------------------------------------------------------------------------

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(backend: Backend, image: str) -> threading.Lock:
    key = (backend.name or type(backend).__qualname__, image)
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def pull(backend: Backend, image: str, progress: PullProgressCallback | None = None) -> None:
    """Pull ``image`` with ``backend`` unless the engine has it, reporting to
    ``progress`` (None: a TerminalProgress on stderr when it is a terminal, else
    nothing). One pull of an image at a time in this process: a second caller waits
    for the first and then finds the image there. Raises what ``Backend.pull_image``
    raises (``ImagePullError``, ``UnsupportedOperation``...)."""
    with _lock_for(backend, image):
        if backend.image_exists(image):  # pulled by another thread meanwhile
            log.debug("image %s is on the engine already", image)
            return
        registry = registry_of(image) or DEFAULT_REGISTRY
        renderer = terminal_progress() if progress is None else None
        report = progress if progress is not None else renderer
        statuses: dict[str | None, str] = {}

        def logged(event: PullProgress) -> None:
            if statuses.get(event.layer) != event.status:  # each step once, not every byte count
                statuses[event.layer] = event.status
                log.debug("pull %s: %s", image, describe(event))
            if report is not None:
                report(event)

        log.info("pulling image %s from %s", image, registry)
        started = time.monotonic()
        try:
            backend.pull_image(image, logged)
        except Exception as exc:
            log.warning("pulling image %s failed: %s", image, exc)
            raise
        finally:
            if renderer is not None:
                renderer.close()
        layers = sum(1 for layer in statuses if layer is not None)
        log.info("pulled image %s (%d layers) in %.1f s", image, layers, time.monotonic() - started)


# -- the image a sandbox starts from -------------------------------------------------------


def check_image_labels(image: str, labels: dict[str, str]) -> None:
    """Raise IncompatibleImage unless ``labels`` say the image speaks IMAGE_PROTOCOL."""
    found = labels.get(PROTOCOL_LABEL)
    found = found.strip() if isinstance(found, str) else None
    if found != str(IMAGE_PROTOCOL):
        raise IncompatibleImage(image, found or None, IMAGE_PROTOCOL, labels.get(VERSION_LABEL) or None)


def ensure_image(backend: Backend, image: str, progress: PullProgressCallback | None = None) -> dict[str, str] | None:
    """Make sure a sandbox can start from ``image``: pull it when it is missing and its
    name includes a registry; refuse it (IncompatibleImage) when its labels say it was
    built for another image protocol. A missing image without a registry part is left
    to ``Backend.start``, which raises ImageNotFound. Backends that cannot read image
    labels (``Backend.image_labels`` unsupported) skip the protocol check. Returns the
    image's labels (None when unknown)."""
    try:
        labels = backend.image_labels(image)
        readable = True
    except UnsupportedOperation:
        labels, readable = None, False
    registry = registry_of(image)
    if registry is None:
        missing = False  # never pulled implicitly: Backend.start raises ImageNotFound
    elif readable:
        missing = labels is None
    else:
        missing = not backend.image_exists(image)
    if missing:
        assert registry is not None
        try:
            pull(backend, image, progress)
        except UnsupportedOperation as exc:
            raise ImageNotFound(image, f"the {backend.name} backend cannot pull images: pull it with the engine's "
                                       f"own tools, or build it with `pybox build`") from exc
        if readable:
            labels = backend.image_labels(image)
            if labels is None:
                raise ImagePullError(image, registry, ImagePullError.FAILED,
                                     "the engine reported the pull done but does not have the image")
    if labels is not None:
        check_image_labels(image, labels)
    return labels
