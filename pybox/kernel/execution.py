"""One execution of code in a kernel: its messages, its outputs, its end.

The kernel channel's reader thread feeds messages into the execution's queue
(``deliver``); the caller's thread drains it in ``events()`` / ``stream()`` /
``result()``. The execution is finished at iopub ``status: idle`` for its msg_id,
never at ``execute_reply`` alone: ipykernel 7 often sends stream output after the
reply. The reply (its status, execution count and payloads) is awaited too, since it
travels on another socket and may arrive after idle.

Timeouts follow one monotonic deadline: at the deadline the kernel is interrupted;
if it does not go idle within the kernel's grace period it is restarted. Either way
the caller gets control back with ``ExecutionTimeout`` and the partial output.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Iterator, Protocol

from pybox.errors import ExecutionError, ExecutionTimeout, InvalidArgument, PyboxError
from pybox.kernel import messages
from pybox.kernel.messages import Message
from pybox.outputs import DisplayData, ErrorOutput, Output, Result, Stderr, Stdout

log = logging.getLogger(__name__)


class ExecutionOwner(Protocol):
    """What an Execution needs of the kernel it runs in (``pybox.Kernel`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def interrupt_grace(self) -> float: ...

    def interrupt(self) -> None:
        """Send SIGINT to the kernel."""

    def restart_after_timeout(self, execution: Execution) -> None:
        """Restart the kernel because ``execution`` would not settle; the other pending
        executions fail, ``execution`` ends with its own timeout."""

    def execution_finished(self, execution: Execution) -> None:
        """``execution`` needs no more messages: stop routing them to it."""


class _Failure:
    """Queue item: the execution cannot finish normally (kernel died, channel lost)."""

    def __init__(self, error: PyboxError):
        self.error = error


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic deadline ``timeout`` seconds from now; None waits forever."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgument(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout <= 0:
        raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
    return time.monotonic() + timeout


class Execution:
    """Code submitted to a kernel. Returned by ``submit()`` at once.

    ``stream()`` yields text as it is produced, ``events()`` typed outputs,
    ``result()`` the aggregated :class:`~pybox.Result`. Any of them can be called
    after the others (outputs already seen are replayed); ``cancel()`` works from
    any thread.
    """

    def __init__(self, kernel: ExecutionOwner, msg: Message, code: str, max_output: int | None = None):
        self.kernel = kernel
        self.msg_id: str = msg["header"]["msg_id"]
        self.code = code
        self._queue: queue.SimpleQueue[Message | _Failure] = queue.SimpleQueue()
        self._consumer = threading.RLock()  # one thread drains the queue at a time
        self._flags = threading.Lock()  # _started / _cancel_requested, shared with the reader thread
        self._result = Result(max_output)
        self._fresh: list[Output] = []  # outputs handled in this step, for the live consumer
        self._reply: dict[str, Any] | None = None
        self._failure: PyboxError | None = None
        self._done = threading.Event()
        self._started = False
        self._cancel_requested = False
        self._idle = False
        self._timing_out = False
        self._abandoned = False  # timed out before it started; the route stays until its idle
        self._submitted_at = time.monotonic()

    # -- fed by the kernel channel's reader thread ---------------------------------

    def deliver(self, msg: Message) -> None:
        state = messages.execution_state(msg)
        if state == "busy":
            with self._flags:
                self._started = True
                cancel = self._cancel_requested
            if cancel:
                # Not from the reader thread: the interrupt is a REST call.
                threading.Thread(target=self._interrupt_quietly, daemon=True).start()
        self._queue.put(msg)
        if self._abandoned and state == "idle":
            self.kernel.execution_finished(self)

    def fail(self, error: PyboxError) -> None:
        self._queue.put(_Failure(error))

    # -- public API ----------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Output]:
        """Yield typed outputs (Stdout, Stderr, DisplayData, ExecuteResult, ErrorOutput)
        as they arrive. Raises ExecutionTimeout at the deadline, KernelDied if the
        kernel dies; a user error is an ErrorOutput here (``result()`` raises it).
        Outputs that arrived before the call are replayed first (with ``max_output``,
        those the result kept); live ones are yielded whole, then let go."""
        deadline = deadline_after(timeout)
        with self._consumer:
            replay = list(self._result.outputs)
            seen = self._result.next_seq
        yield from replay
        while True:
            with self._consumer:
                if self._result.next_seq > seen:  # drained by another consumer meanwhile
                    batch = self._result.since(seen)
                elif self._done.is_set():
                    break
                else:
                    batch = self._step(deadline, timeout)
                seen = self._result.next_seq
            yield from batch
        if self._failure is not None:
            raise self._failure

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Yield text chunks as they are produced: stdout, stderr, and the text of
        results and of displays that carry no image."""
        for output in self.events(timeout):
            if isinstance(output, (Stdout, Stderr)):
                yield output.text
            elif isinstance(output, DisplayData) and not output.has_image and output.text is not None:
                yield output.text + "\n"

    def result(self, timeout: float | None = None, check: bool = True) -> Result:
        """Wait for the end and return the Result. With ``check`` (the default) a
        user error raises ExecutionError; with ``check=False`` it is in ``Result.error``."""
        for _ in self.events(timeout):
            pass
        if check and self._result.error is not None:
            raise self._result.error
        return self._result

    def cancel(self) -> None:
        """Interrupt this execution (KeyboardInterrupt in the code), now if it is
        running or as soon as it starts if it is queued. Safe from any thread."""
        if self._done.is_set():
            return
        with self._flags:
            self._cancel_requested = True
            started = self._started
        if started:
            self._interrupt_quietly()

    def __repr__(self) -> str:
        state = "done" if self.done else ("running" if self._started else "queued")
        return f"<Execution {self.msg_id[:8]} {state} in kernel {self.kernel.id[:8]}>"

    # -- internals -----------------------------------------------------------------

    def _interrupt_quietly(self) -> None:
        try:
            self.kernel.interrupt()
        except PyboxError as exc:  # the kernel is gone; its death reaches the execution on the channel
            log.debug("interrupting kernel %s for a cancel failed: %s", self.kernel.id[:8], exc)

    def _step(self, deadline: float | None, timeout: float | None) -> list[Output]:
        """Handle one queued item, or the timeout if the deadline passes first; return
        the outputs that came in, whole (the result may keep only part of them)."""
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                self._on_timeout(timeout)
            else:
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    self._on_timeout(timeout)
                else:
                    self._handle(item)
            return self._fresh
        finally:
            self._fresh = []

    def _handle(self, item: Message | _Failure) -> None:
        if isinstance(item, _Failure):
            error = item.error
            if getattr(error, "result", "absent") is None:
                error.result = self._result  # type: ignore[attr-defined]
            self._finish(error)
            return
        kind = messages.msg_type(item)
        content = item.get("content") or {}
        if kind == "status":
            if content.get("execution_state") == "idle":
                self._idle = True
                if self._reply is not None and not self._timing_out:
                    self._finish(None)
            return
        if kind == "execute_input":
            count = content.get("execution_count")
            if isinstance(count, int):
                self._result.execution_count = count
            return
        if kind == "execute_reply":
            # Shell and iopub are separate sockets: the reply may come before or after
            # idle. Output is complete at idle; the reply adds its status and payloads.
            self._reply = content
            count = content.get("execution_count")
            if isinstance(count, int):
                self._result.execution_count = count
            for payload in content.get("payload") or []:
                if payload.get("source") == "page" and isinstance(payload.get("data"), dict):
                    page = DisplayData(payload["data"])  # `obj?` help text
                    self._result.add(page)
                    self._fresh.append(page)
            if self._idle and not self._timing_out:
                self._finish(None)
            return
        output = messages.to_output(item)
        if output is None:
            return
        self._result.add(output)
        self._fresh.append(output)
        if isinstance(output, ErrorOutput):
            self._result.error = ExecutionError(output.ename, output.evalue, output.traceback, self._result)

    def _on_timeout(self, timeout: float | None) -> None:
        with self._flags:
            started = self._started
            if not started:
                # Still queued behind earlier code: it cannot be taken back from the
                # kernel's queue, so it is interrupted the moment it starts.
                self._cancel_requested = True
                self._abandoned = True
        interrupted = restarted = False
        if started:
            self._timing_out = True  # idle now means "settled after the interrupt", not "done"
            log.info("execution %s in kernel %s: timed out after %s s, interrupting", self.msg_id[:8],
                     self.kernel.id[:8], timeout)
            try:
                self.kernel.interrupt()
                interrupted = True
            except PyboxError as exc:
                log.warning("kernel %s: the interrupt at the timeout failed: %s", self.kernel.id[:8], exc)
            grace_deadline = time.monotonic() + self.kernel.interrupt_grace
            while not (self._idle and self._reply is not None):
                try:
                    item = self._queue.get(timeout=max(0.0, grace_deadline - time.monotonic()))
                except queue.Empty:
                    break
                self._handle(item)
                if self._done.is_set():
                    return  # the kernel died meanwhile: that is the better answer
            if not (self._idle and self._reply is not None):
                # SIGINT did not stop the code (ignored, or stuck in C): restart.
                log.warning("kernel %s did not settle %s s after the interrupt: restarting it (state lost)",
                            self.kernel.id[:8], self.kernel.interrupt_grace)
                self.kernel.restart_after_timeout(self)
                restarted = True
        self._result.error = None  # the KeyboardInterrupt we caused is not the user's error
        self._finish(ExecutionTimeout(timeout or 0.0, self._result, interrupted, restarted, started=started))

    def _finish(self, failure: PyboxError | None) -> None:
        if self._done.is_set():
            return
        self._failure = failure
        self._result.duration = time.monotonic() - self._submitted_at
        reply = self._reply or {}
        if failure is None and self._result.error is None and reply.get("status") == "error":
            self._result.error = ExecutionError.from_content(reply, self._result)
        elif failure is None and self._result.error is None and reply.get("status") in ("aborted", "abort"):
            # The code did not run to its end and the kernel sent no error: bash_kernel
            # when interrupted (cancel()), ipykernel for a request queued behind a failure.
            self._result.error = ExecutionError(
                "Aborted", f"the kernel aborted the execution (reply status {reply['status']!r}): it was "
                "interrupted, or skipped after an earlier error", "", self._result)
        self._done.set()
        if not self._abandoned:
            self.kernel.execution_finished(self)

