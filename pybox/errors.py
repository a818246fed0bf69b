"""pybox's exceptions: one root, each class says what catching it covers.

Errors raised by the SDKs underneath (docker, podman, requests, websocket-client)
never leave pybox raw: they are wrapped in one of these and chained with
``raise ... from exc``, so ``__cause__`` still holds the original.
"""

from __future__ import annotations

import re
from typing import Any

# ``result`` payloads are pybox.Result objects. They are typed as Any because this
# module sits below every other one in pybox (outputs.py imports it, not the reverse).
Result = Any

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor codes (IPython colours its tracebacks)."""
    return _ANSI_ESCAPE.sub("", text)


class PyboxError(Exception):
    """Root of every error pybox raises: catch this to catch them all."""


class InvalidArgument(PyboxError, ValueError, TypeError):
    """A call got a value it cannot use (bad path, non-string code, negative
    timeout...). Also a ValueError and a TypeError, as Python's own checks would be."""


class UnsafeArchive(PyboxError):
    """A downloaded archive member would land outside the target (absolute name,
    ``..``, a link pointing out, a device): nothing of it is written."""


class DownloadTooLarge(UnsafeArchive):
    """A download's archive stream passed its size cap (``max_bytes``); nothing of it
    is written. ``source`` is the sandbox path, ``limit`` the cap in bytes."""

    def __init__(self, source: str, limit: int):
        self.source = source
        self.limit = limit
        super().__init__(f"the download of {source!r} is larger than its cap of {limit} bytes; nothing was "
                         f"written (pass max_bytes=... to download more, or None for no cap)")


class SandboxClosed(PyboxError):
    """The sandbox or kernel was used after ``stop()`` / ``close()``."""


class BackendError(PyboxError):
    """The container engine or its backend plugin failed: starting, inspecting,
    stopping or copying files."""


class BackendNotFound(BackendError):
    """No installed backend plugin has the requested name."""

    def __init__(self, name: str, available: list[str]):
        self.name = name
        self.available = list(available)
        listed = ", ".join(sorted(self.available)) or "none installed"
        super().__init__(f"no pybox backend named {name!r} (available: {listed})")


class BackendUnavailable(BackendError):
    """The backend is installed but its engine does not answer (daemon not
    running, socket missing, remote host unreachable). ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = ""):
        self.hint = hint
        super().__init__(f"{message}. {hint}" if hint else message)


class ImageNotFound(BackendError):
    """The container image does not exist on the engine."""

    def __init__(self, image: str, hint: str = ""):
        self.image = image
        hint = hint or "build it with `pybox build` (or `python -m pybox build`)"
        super().__init__(f"image {image!r} not found; {hint}")


class ImagePullError(ImageNotFound):
    """The image is not on the engine and pulling it from its registry failed.

    ``registry`` is the registry's address (``docker.io`` for a name without one),
    ``reason`` one of ``UNAUTHORIZED``, ``NOT_FOUND``, ``RATE_LIMITED``, ``UNREACHABLE``,
    ``TLS`` or ``FAILED``, and ``detail`` the registry's (or engine's) own words. It is
    an ImageNotFound because the image is missing either way: code that handled a
    missing image before pybox pulled images still catches it."""

    UNAUTHORIZED = "authentication required or access denied"
    NOT_FOUND = "not found in the registry"
    RATE_LIMITED = "rate limit reached"
    UNREACHABLE = "registry unreachable"
    TLS = "TLS failed"
    FAILED = "pull failed"

    _HINTS = {
        UNAUTHORIZED: "log in first (`docker login REGISTRY` / `podman login REGISTRY`) or check the name",
        NOT_FOUND: "check the repository name and the tag",
        RATE_LIMITED: "wait and try again, log in (higher limits) or use a mirror",
        UNREACHABLE: "check the registry's address and port, that it is running, and the network or proxy "
                     "between the engine and it",
        TLS: "the engine must trust the registry's certificate, or be configured to reach it as an insecure "
             "registry (Docker: insecure-registries; Podman: registries.conf insecure = true)",
    }

    def __init__(self, image: str, registry: str, reason: str, detail: str):
        self.registry = registry
        self.reason = reason
        self.detail = detail
        hint = self._HINTS.get(reason, "")
        text = f"cannot pull image {image!r} from {registry}: {reason} (the engine reported: {detail})"
        self.image = image
        BackendError.__init__(self, f"{text}; {hint}" if hint else text)


class IncompatibleImage(BackendError):
    """The image exists but was not built for this pybox: its ``org.pybox.protocol``
    label (``found``, None when missing) differs from the protocol this client speaks
    (``expected``, ``pybox.image_contract.IMAGE_PROTOCOL``). ``version`` is the pybox
    version that built it, when labelled. Raised before any container is created; the
    fix is rebuilding the image with ``pybox build``. Not an ImageNotFound: the image is
    there, and pulling it again would not help."""

    def __init__(self, image: str, found: str | None, expected: int, version: str | None = None):
        self.image = image
        self.found = found
        self.expected = expected
        self.version = version
        if found is None:
            what = "carries no org.pybox.protocol label (built by an older pybox, or not by `pybox build`)"
        else:
            built = f" by pybox {version}" if version else ""
            what = f"was built{built} for image protocol {found}"
        super().__init__(f"image {image!r} {what}, but this pybox needs image protocol {expected}: rebuild it "
                         f"with `pybox build` (or `python -m pybox build`; for a registry image, push the "
                         f"rebuilt image)")


class StartupTimeout(BackendError):
    """The container started but its kernel gateway did not answer in time.
    ``logs`` holds the container's last log lines."""

    def __init__(self, message: str, logs: str = ""):
        self.logs = logs
        text = message
        if logs:
            text += "\n--- container logs ---\n" + logs.rstrip()
        super().__init__(text)


class UnsupportedOperation(BackendError):
    """The backend cannot do what was asked (e.g. host bind mounts on a remote engine)."""


class KernelError(PyboxError):
    """The kernel or the channel to it failed, independently of the user's code."""


class KernelDied(KernelError):
    """The kernel process (or its container) died. ``reason`` says why when
    known, e.g. ``OOMKilled`` or ``exit code 137``. The kernel's state is lost."""

    def __init__(self, reason: str, result: Result | None = None):
        self.reason = reason
        self.result = result
        super().__init__(f"kernel died: {reason}")


class ChannelError(KernelError):
    """The websocket or REST connection to the kernel gateway failed."""


class ExecutionTimeout(PyboxError, TimeoutError):
    """The code ran past its timeout. The kernel was interrupted (``interrupted``)
    and, when it did not settle within the grace period, restarted (``restarted``,
    state lost). ``result`` holds the output produced before the deadline. ``started``
    is False when the code had not started; ``sent`` is False when it was still
    queued in pybox behind earlier code of the same kernel: it never reached the
    kernel and never runs."""

    def __init__(self, timeout: float, result: Result, interrupted: bool, restarted: bool, started: bool = True,
                 sent: bool = True):
        self.timeout = timeout
        self.result = result
        self.interrupted = interrupted
        self.restarted = restarted
        self.started = started
        self.sent = sent
        if not sent:
            what = ("the code had not started (queued behind earlier code in this kernel); it was never sent to "
                    "the kernel and will not run")
        elif not started:
            what = ("the code had not started (the kernel was busy with code it had been sent by someone else); "
                    "it is interrupted when it starts")
        elif restarted:
            what = "kernel restarted (state lost)"
        elif interrupted:
            what = "kernel interrupted (state kept)"
        else:
            what = "kernel left running"
        super().__init__(f"execution timed out after {timeout:g} s; {what}")


class PoolTimeout(PyboxError, TimeoutError):
    """No sandbox of a ``pybox.Pool`` became ready within ``acquire``'s ``timeout``.
    The message says why: the pool's starts failing (``last_error``, also the
    ``__cause__``: e.g. BackendUnavailable when the engine is down, ImageNotFound naming
    the image), starts still in progress, or every sandbox in use. ``stats`` is the
    pool's ``PoolStats`` at that moment. Also a ``TimeoutError``."""

    def __init__(self, message: str, timeout: float, last_error: BaseException | None = None, stats: Any = None):
        self.timeout = timeout
        self.last_error = last_error
        self.stats = stats
        super().__init__(message)


class ExecutionError(PyboxError):
    """The user's code raised. ``ename``, ``evalue`` and ``traceback`` (a string
    without ANSI colour codes) describe it; ``result`` holds the output produced
    before the error. Other kernels fill them their own way: bash_kernel reports a
    nonzero exit status of a cell's last command with ``ename`` empty and the status
    in ``evalue``."""

    def __init__(self, ename: str, evalue: str, traceback: str, result: Result | None = None):
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.result = result
        if not ename:  # e.g. bash_kernel: no name, the exit status as the value
            message = f"the kernel reported an error: {evalue}" if evalue else "the kernel reported an error"
        else:
            message = f"{ename}: {evalue}" if evalue else ename
        super().__init__(message)

    @classmethod
    def from_content(cls, content: dict[str, Any], result: Result | None = None) -> ExecutionError:
        """Build from the content of an iopub ``error`` message or an ``execute_reply``."""
        frames = content.get("traceback")
        lines = [str(frame) for frame in frames] if isinstance(frames, list) else []  # the kernel's word: any JSON
        return cls(
            ename=str(content.get("ename", "Error")),
            evalue=str(content.get("evalue", "")),
            traceback=strip_ansi("\n".join(lines)),
            result=result,
        )
