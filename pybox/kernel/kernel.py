"""One IPython kernel behind a kernel gateway: run, submit, interrupt, restart, close."""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import uuid
import weakref
from typing import Callable, Sequence

from pybox.errors import (
    ChannelError,
    ExecutionError,
    InvalidArgument,
    KernelDied,
    KernelError,
    PyboxError,
    SandboxClosed,
)
from pybox.image_contract import DEATH_REASON_FIELD
from pybox.kernel import messages
from pybox.kernel.channel import KernelChannel
from pybox.kernel.execution import Execution, deadline_after
from pybox.kernel.gateway import Gateway
from pybox.kernel.messages import Message
from pybox.options import (
    DEFAULT_INTERRUPT_GRACE,
    DEFAULT_TIMEOUT,
    SandboxOptions,
    check_kernel_name,
    check_max_output,
    check_port,
    check_seconds,
    check_startup_code,
)
from pybox.outputs import Result

__all__ = ["DEFAULT_INTERRUPT_GRACE", "DEFAULT_TIMEOUT", "Kernel"]

log = logging.getLogger(__name__)


class Kernel:
    """One kernel: its own state, the filesystem of its container. An IPython kernel
    unless made from another kernelspec (``name``, e.g. ``"bash"``; ``language`` is the
    kernelspec's, None when not known).

    Made by ``Sandbox.kernel()`` or ``Kernel.connect(host, port, token)``. Usable as
    a context manager; ``close()`` shuts the kernel down (when this object created it).
    ``explain_death`` is asked why the channel closed (the sandbox asks its engine).
    ``channel_factory`` makes the channel (tests pass one that plays scripted messages).
    ``startup_code`` runs in the kernel now and again after every restart (e.g.
    ``%load_ext autoreload``); if it raises, KernelError says so. ``max_output`` is
    the default output limit of its executions (see ``submit``).
    """

    def __init__(
        self,
        gateway: Gateway,
        kernel_id: str,
        *,
        delete_on_close: bool = True,
        close_gateway: bool = False,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
        explain_death: Callable[[], str | None] | None = None,
        channel_factory: Callable[..., KernelChannel] = KernelChannel,
        startup_code: str | None = None,
        max_output: int | None = None,
        name: str | None = None,
        language: str | None = None,
    ):
        self.id = kernel_id
        self.gateway = gateway
        self.name = name
        self.language = language
        self.interrupt_grace = check_seconds(interrupt_grace, "interrupt_grace", zero_ok=True)
        # Arguments are checked before the channel opens: nothing to undo on a bad one.
        self.startup_code = check_startup_code(startup_code)
        self.max_output = check_max_output(max_output)
        self._delete_on_close = delete_on_close
        self._close_gateway = close_gateway
        # Weakly: the channel's reader thread holds this kernel, and a strong reference
        # to its sandbox here would keep a forgotten sandbox (and its container) alive.
        self._explain_death = _weakly(explain_death)
        self._session = uuid.uuid4().hex
        self._pending: dict[str, Execution] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._restarting = False
        self._needs_nudge = False
        self._channel = channel_factory(
            gateway.ws_url(kernel_id),
            gateway.token,
            on_unrouted=self._on_unrouted,
            on_closed=self._on_channel_closed,
            name=f"pybox-kernel-{kernel_id[:8]}",
        )
        try:
            self._run_startup_code()
        except BaseException:
            self._channel.close()
            raise

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        token: str,
        kernel_id: str | None = None,
        *,
        timeout: float = 30.0,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
        startup_code: str | None = None,
        max_output: int | None = None,
        name: str | None = None,
    ) -> Kernel:
        """Attach to a sandbox's gateway started elsewhere (another process, another
        host). Creates a new kernel there unless ``kernel_id`` names an existing one;
        a kernel created here is shut down by ``close()``. ``name`` picks the kernelspec
        of the kernel created (as for ``Sandbox.kernel``; InvalidArgument with
        ``kernel_id``). The options mean what they mean for ``Sandbox``."""
        options = SandboxOptions(port=check_port(port), interrupt_grace=interrupt_grace, startup_code=startup_code,
                                 max_output=max_output)
        if not isinstance(host, str) or not host.strip():
            raise InvalidArgument(f"host must be a host name or address, got {host!r}")
        if not isinstance(token, str) or not token:
            raise InvalidArgument("token must be the sandbox's gateway token (a non-empty str)")
        if name is not None:
            check_kernel_name(name)
            if kernel_id is not None:
                raise InvalidArgument("name picks the kernelspec of a new kernel; not with kernel_id")
        assert options.port is not None
        gateway = Gateway(host, options.port, token)
        try:
            gateway.wait_ready(time.monotonic() + check_seconds(timeout, "timeout"))
            created = kernel_id is None
            language = None
            if name is not None:
                language = gateway.kernelspec(name).get("language")
            kid = gateway.create_kernel(name) if kernel_id is None else kernel_id
            # startup_code was given for this very kernel: it runs whatever its language.
            return cls(gateway, kid, delete_on_close=created, close_gateway=True,
                       interrupt_grace=options.interrupt_grace, startup_code=options.startup_code,
                       max_output=options.max_output, name=name, language=language)
        except BaseException:
            gateway.close()
            raise

    # -- running code ----------------------------------------------------------------

    def submit(self, code: str, max_output: int | None = None) -> Execution:
        """Send ``code`` for execution and return its Execution at once. ``max_output``
        (characters; default: the kernel's ``max_output``) bounds what the Result keeps:
        its first and last halves, with a marker between."""
        if not isinstance(code, str):
            raise InvalidArgument(f"code must be a str, not {type(code).__name__}")
        limit = check_max_output(self.max_output if max_output is None else max_output)
        self._prepare()
        return self._send(code, max_output=limit)

    def _prepare(self) -> None:
        """Before sending: the kernel is open and, after a restart, reachable and set up."""
        if self._closed:
            raise SandboxClosed(f"kernel {self.id} is closed")
        if self._needs_nudge:
            self._nudge()
            self._run_startup_code()

    def _send(self, code: str, store_history: bool = True, max_output: int | None = None) -> Execution:
        msg = messages.execute_request(code, self._session, store_history=store_history)
        execution = Execution(self, msg, code, max_output)
        with self._lock:
            self._pending[execution.msg_id] = execution
        self._channel.register(execution.msg_id, execution)
        try:
            self._channel.send(msg)
        except PyboxError:
            self.execution_finished(execution)
            raise
        return execution

    def run(
        self, code: str, timeout: float | None = DEFAULT_TIMEOUT, check: bool = True, max_output: int | None = None
    ) -> Result:
        """Execute ``code`` and wait for it. Raises ExecutionError if it raised (or
        returns it in ``Result.error`` with ``check=False``), ExecutionTimeout after
        ``timeout`` seconds (None: no limit)."""
        deadline_after(timeout)  # validate before sending anything
        return self.submit(code, max_output=max_output).result(timeout=timeout, check=check)

    # -- control -----------------------------------------------------------------------

    def interrupt(self) -> None:
        """Send SIGINT to the kernel: the running code gets KeyboardInterrupt."""
        self._check_open()
        self.gateway.interrupt_kernel(self.id)

    def restart(self) -> None:
        """Restart the kernel: its state is lost. Pending executions end with KernelError."""
        self._restart(None)

    def restart_after_timeout(self, execution: Execution) -> None:
        """Restart because ``execution`` ignored its interrupt: it ends with its own
        ExecutionTimeout, the other pending executions with KernelError."""
        self._restart(execution)

    def _restart(self, timed_out: Execution | None) -> None:
        self._check_open()
        log.info("kernel %s: restarting", self.id[:8])
        self._restarting = True
        try:
            self.gateway.restart_kernel(self.id)
        finally:
            self._restarting = False
            self._needs_nudge = True
        self._fail_pending(lambda: KernelError(f"kernel {self.id} was restarted; its state is lost"), keep=timed_out)

    def close(self, *, shutdown: bool | None = None) -> None:
        """Close the kernel's channel and shut the kernel down (``shutdown``; default:
        when this object created it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fail_pending(lambda: SandboxClosed(f"kernel {self.id} was closed while the code ran"))
        self._channel.close()
        if self._delete_on_close if shutdown is None else shutdown:
            try:
                self.gateway.delete_kernel(self.id)
            except PyboxError as exc:  # the container may already be gone; nothing left to shut down
                log.debug("kernel %s: shutdown on close failed: %s", self.id[:8], exc)
        if self._close_gateway:
            self.gateway.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        kind = f" ({self.name})" if self.name else ""
        return f"<pybox.Kernel {self.id}{kind} at {self.gateway.base_url} {state}>"

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed(f"kernel {self.id} is closed")

    def module_sources(self, names: Sequence[str], timeout: float | None = 60.0) -> dict[str, str]:
        """The source code of modules importable in the kernel, by module name (a
        package gives its ``__init__``). Unknown modules raise ExecutionError
        (ModuleNotFoundError); modules without Python source (built-ins, C
        extensions) raise InvalidArgument."""
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise InvalidArgument(f"names must be a list of module names, got {names!r}")
        if self.language not in (None, "python"):
            raise InvalidArgument(f"module_sources needs a Python kernel; kernel {self.id} is {self.name!r} "
                                  f"({self.language})")
        code = _MODULE_SOURCES_CODE.replace("NAMES", repr(list(names)))
        self._prepare()
        result = self._send(code, store_history=False).result(timeout=timeout)
        sources: dict[str, str | None] = json.loads(result.stdout)
        missing = [name for name, text in sources.items() if text is None]
        if missing:
            raise InvalidArgument(f"no Python source for module(s) {', '.join(missing)} in the sandbox")
        return {name: text for name, text in sources.items() if text is not None}

    def set_startup_code(self, code: str | None, timeout: float = 120.0) -> None:
        """Replace the kernel's start-up code and run it now (it runs again after every
        restart). KernelError if it raises."""
        self.startup_code = check_startup_code(code)
        self._prepare()
        self._run_startup_code(timeout)

    def _run_startup_code(self, timeout: float = 120.0) -> None:
        if not self.startup_code:
            return
        try:
            self._send(self.startup_code, store_history=False).result(timeout=timeout)
        except ExecutionError as exc:
            raise KernelError(f"the kernel start-up code failed: {exc.ename}: {exc.evalue}") from exc

    def _nudge(self, timeout: float = 30.0) -> None:
        """Wait until the gateway's iopub subscription reaches the (restarted) kernel.

        After a restart the gateway's SUB socket reconnects to the new kernel process
        on its own schedule, and iopub messages published before that are dropped
        (ZeroMQ's slow joiner): an execution sent too early would lose its output and
        its idle. Like jupyter_server's nudge on connect, send kernel_info requests
        until one's iopub status comes back.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = _IopubProbe()
            msg = messages.new_message("kernel_info_request", {}, self._session)
            msg_id = msg["header"]["msg_id"]
            self._channel.register(msg_id, probe)
            try:
                self._channel.send(msg)
                if probe.seen.wait(0.2):
                    self._needs_nudge = False
                    return
            finally:
                self._channel.unregister(msg_id)
        raise KernelError(f"kernel {self.id} did not answer on iopub within {timeout:g} s after a restart")

    def execution_finished(self, execution: Execution) -> None:
        """Stop routing messages to ``execution`` (called by it when it ends)."""
        self._channel.unregister(execution.msg_id)
        with self._lock:
            self._pending.pop(execution.msg_id, None)

    def _fail_pending(self, make_error: Callable[[], PyboxError], keep: Execution | None = None) -> None:
        """End every pending execution with its own error (each carries its own result)."""
        with self._lock:
            pending = [e for e in self._pending.values() if e is not keep]
        for execution in pending:
            execution.fail(make_error())

    def _on_unrouted(self, msg: Message) -> None:
        # The gateway tells every client of a kernel that died and was restarted
        # (or could not be) with a status message that has no parent.
        if self._restarting:
            return
        state = messages.execution_state(msg)
        if state in ("restarting", "dead"):
            log.warning("kernel %s died (%s)", self.id[:8], (msg.get("content") or {}).get(DEATH_REASON_FIELD)
                        or "the kernel process exited")
            self._needs_nudge = True
            # The container runs on (the gateway restarted the kernel); pybox's gateway
            # says why the kernel process died (e.g. OOMKilled).
            cause = (msg.get("content") or {}).get(DEATH_REASON_FIELD) or "the kernel process exited"
            after = ("the gateway restarted it and its state is lost" if state == "restarting"
                     else "it could not be restarted")
            reason = f"{cause}; {after}"
            self._fail_pending(lambda: KernelDied(reason))

    def _on_channel_closed(self, error: BaseException | None) -> None:
        if self._closed:
            return
        reason = self._explain_death() if self._explain_death else None
        if reason:
            self._fail_pending(lambda: KernelDied(reason))
        else:
            text = f"the websocket to kernel {self.id} closed: {error or 'closed by the gateway'}"
            self._fail_pending(lambda: ChannelError(text))


def _weakly(callback: Callable[[], str | None] | None) -> Callable[[], str | None] | None:
    """``callback``, holding its object weakly when it is a bound method (None once the
    object is gone)."""
    if callback is None or not inspect.ismethod(callback):
        return callback
    ref = weakref.WeakMethod(callback)

    def call() -> str | None:
        method = ref()
        return None if method is None else method()

    return call


# Runs in the user's kernel: leaves no names behind and no history entry.
_MODULE_SOURCES_CODE = """\
def __pybox_module_sources(names):
    import importlib.util, json
    found = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        origin = spec.origin if spec.has_location else None
        text = None
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as handle:
                text = handle.read()
        found[name] = text
    print(json.dumps(found))
try:
    __pybox_module_sources(NAMES)
finally:
    del __pybox_module_sources
"""


class _IopubProbe:
    """Channel sink that notes the first iopub message for a nudge request."""

    def __init__(self) -> None:
        self.seen = threading.Event()

    def deliver(self, msg: Message) -> None:
        if msg.get("channel") == "iopub":
            self.seen.set()
