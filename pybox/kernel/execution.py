"""One execution of code in a kernel: its messages, its outputs, its end.

The kernel channel's reader thread delivers the execution's messages (``deliver``)
and each output goes into the :class:`~pybox.Result` at once, under the execution's
lock: an execution nobody reads costs no more than its Result, which ``max_output``
bounds. The caller's threads wait on that lock's condition in ``result()``,
``events()`` and ``stream()``. The execution is finished at iopub ``status: idle``
for its msg_id, never at ``execute_reply`` alone: ipykernel 7 often sends stream
output after the reply. The reply (its status, execution count and payloads) is
awaited too, since it travels on another socket and may arrive after idle.

Live outputs. While someone iterates ``events()`` / ``stream()``, outputs are also
kept whole in a live buffer until every such consumer has taken them. The buffer is
bounded (``LIVE_BUFFER_LIMIT``): when it is full the reader thread waits for the
consumers (backpressure, which reaches the kernel through the socket), but at most
``LIVE_STALL_SECONDS`` without any of them taking something. Then the consumers are
left behind: the buffer is let go, and a consumer that comes back gets what the
Result kept of what it missed, with a marker saying how many outputs it lost. Only
this execution's own kernel waits meanwhile (pybox sends a kernel one execution at
a time), never other kernels.

Timeouts and ``cancel()`` belong to the kernel (the ``ExecutionOwner``): it queues
executions and sends one at a time, and its watchdog thread acts at the deadline
whether or not anyone is waiting (see ``pybox.kernel.kernel``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any, Iterator, Protocol

from pybox.errors import ExecutionError, ExecutionTimeout, InvalidArgument, PyboxError
from pybox.kernel import messages
from pybox.kernel.messages import Message
from pybox.outputs import DisplayData, ErrorOutput, Output, Result, Stderr, Stdout, image_size, output_size

log = logging.getLogger(__name__)

#: What the live buffer of one execution may hold (characters of output, each output
#: counted as its size plus ``LIVE_OUTPUT_OVERHEAD``) before the reader waits.
LIVE_BUFFER_LIMIT = 16 * 1024 * 1024
#: Cost counted per output on top of its characters (what a small output costs in memory).
LIVE_OUTPUT_OVERHEAD = 256
#: Seconds the reader waits on a full live buffer with no consumer taking anything
#: before it leaves the consumers behind.
LIVE_STALL_SECONDS = 10.0

_drops = messages.DropLog(log, "execution")


class ExecutionOwner(Protocol):
    """What an Execution needs of the kernel it runs in (``pybox.Kernel`` is one)."""

    @property
    def id(self) -> str: ...

    def arm(self, execution: Execution, deadline: float, timeout: float) -> None:
        """Give ``execution`` a deadline (the earliest one given wins): the kernel acts
        on it whether or not anyone waits."""

    def cancel_execution(self, execution: Execution) -> None:
        """Cancel ``execution``: drop it if it was never sent, interrupt it if it runs."""

    def interrupt_for(self, execution: Execution) -> None:
        """``execution`` just started and a cancel is pending: interrupt it (not from
        the caller's thread: this is the reader thread)."""

    def execution_settled(self, execution: Execution) -> None:
        """The kernel went idle after ``execution`` (reader thread): the next may be sent."""

    def execution_finished(self, execution: Execution) -> None:
        """``execution`` is done for its callers."""


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic deadline ``timeout`` seconds from now; None waits forever."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise InvalidArgument(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout <= 0:
        raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
    return time.monotonic() + timeout


class Execution:
    """Code submitted to a kernel. Returned by ``submit()`` at once.

    ``stream()`` yields text as it is produced, ``events()`` typed outputs,
    ``result()`` the aggregated :class:`~pybox.Result`. Any of them can be called
    after the others (outputs already seen are replayed); ``cancel()`` works from
    any thread. A timeout given to any of them arms the execution's deadline (the
    earliest wins); the kernel acts on it even if nobody waits any more.
    """

    def __init__(self, kernel: ExecutionOwner, msg: Message, code: str, max_output: int | None = None):
        self.kernel = kernel
        self.msg_id: str = msg["header"]["msg_id"]
        self.code = code
        self.request: Message | None = msg  # let go once sent
        self._cond = threading.Condition(threading.Lock())
        self._result = Result(max_output)
        self._reply: dict[str, Any] | None = None
        self._failure: PyboxError | None = None
        self._ended = False  # under _cond: the outcome is decided (failure, result)
        self._done = threading.Event()  # published: after the kernel stopped routing to it
        # Kernel-side state, under _cond (the kernel's scheduler and watchdog read it).
        self.sent = False
        self._started = False
        self._idle = False
        self._cancel_requested = False
        self._timing_out = False
        self._restart_pending = False  # the kernel is being restarted for it: its idle decides nothing
        self.deadline: float | None = None
        self.timeout: float | None = None
        self.grace_deadline: float | None = None
        self.interrupt_failed = False
        # Live consumers (events()/stream() iterating now): id -> next seq it needs.
        self._cursors: dict[int, int] = {}
        self._detached: set[int] = set()  # left behind: nothing is buffered for them until they take again
        self._consumer_ids = 0
        self._live: deque[tuple[int, Output]] = deque()
        self._live_size = 0
        self._live_floor = 0  # outputs before this seq are not (or no longer) in the live buffer
        self._last_taken = time.monotonic()
        self._submitted_at = time.monotonic()

    # -- fed by the kernel channel's reader thread ---------------------------------

    def deliver(self, msg: Message) -> None:
        kind = messages.msg_type(msg)
        content = msg.get("content")
        if not isinstance(content, dict):
            content = {}
        if kind == "status":
            state = content.get("execution_state")
            if state == "busy":
                self._on_busy()
            elif state == "idle":
                self._on_idle()
            return
        with self._cond:
            if self._ended:
                return
            if kind == "execute_input":
                count = content.get("execution_count")
                if isinstance(count, int):
                    self._result.execution_count = count
            elif kind == "execute_reply":
                self._on_reply(content)
                if self._idle and not self._timing_out:
                    self._finish_locked(None)
            else:
                try:
                    output = messages.to_output(msg)
                except messages.BadMessage as exc:
                    _drops.drop(f"{exc} (execution {self.msg_id[:8]})")
                    return
                if output is not None:
                    self._add_locked(output)
            ended = self._ended
        if ended:
            self._conclude()

    def _on_busy(self) -> None:
        with self._cond:
            self._started = True
            cancel = self._cancel_requested
        if cancel:
            self.kernel.interrupt_for(self)

    def _on_idle(self) -> None:
        with self._cond:
            self._idle = True
        self.kernel.execution_settled(self)  # first: the next execution goes out now
        with self._cond:
            if self._ended:
                return
            if self._restart_pending:  # the watchdog ends it when the restart is done
                return
            if self._timing_out:  # settled after the interrupt at the timeout
                self._finish_timeout_locked(interrupted=not self.interrupt_failed, restarted=False)
            elif self._reply is not None:
                self._finish_locked(None)
            else:
                return
        self._conclude()

    def _on_reply(self, content: dict[str, Any]) -> None:
        # Shell and iopub are separate sockets: the reply may come before or after
        # idle. Output is complete at idle; the reply adds its status and payloads.
        self._reply = content
        count = content.get("execution_count")
        if isinstance(count, int):
            self._result.execution_count = count
        payloads = content.get("payload")
        for payload in payloads if isinstance(payloads, list) else []:
            if isinstance(payload, dict) and payload.get("source") == "page" and isinstance(payload.get("data"), dict):
                self._add_locked(DisplayData(payload["data"]))  # `obj?` help text

    def _add_locked(self, output: Output) -> None:
        seq = self._result.add(output)
        if isinstance(output, ErrorOutput):
            self._result.error = ExecutionError(output.ename, output.evalue, output.traceback, self._result)
        if len(self._detached) == len(self._cursors):  # no consumer iterating (or all left behind)
            self._live_floor = seq + 1
            return
        self._live.append((seq, output))
        self._live_size += _cost(output)
        self._cond.notify_all()
        if self._live_size <= LIVE_BUFFER_LIMIT:
            return
        # Backpressure: wait for the consumers, but not for ever.
        waiting_since = time.monotonic()
        while (self._live_size > LIVE_BUFFER_LIMIT and len(self._detached) < len(self._cursors)
               and not self._ended):
            stalled = time.monotonic() - max(self._last_taken, waiting_since)
            if stalled >= LIVE_STALL_SECONDS:
                log.warning("execution %s: its stream consumers took nothing for %.0f s with %d outputs waiting; "
                            "they are left behind (they get what the Result keeps)", self.msg_id[:8], stalled,
                            len(self._live))
                self._detached.update(self._cursors)
                self._live.clear()
                self._live_size = 0
                self._live_floor = self._result.next_seq
                return
            self._cond.wait(LIVE_STALL_SECONDS - stalled)

    def fail(self, error: PyboxError) -> None:
        """End the execution with ``error`` (kernel died, channel lost, closed). Any thread."""
        with self._cond:
            if self._ended:
                return
            if getattr(error, "result", "absent") is None:
                error.result = self._result  # type: ignore[attr-defined]
            self._finish_locked(error)
        self._conclude()

    # -- called by the kernel (its scheduler and watchdog) --------------------------

    def abandon_if_not_started(self) -> bool:
        """At the deadline of a sent execution: if the kernel has not started it, end it
        (ExecutionTimeout, not started) and have it interrupted the moment it starts.
        False if it has started."""
        with self._cond:
            if self._started:
                return False
            self._cancel_requested = True
            self._finish_timeout_locked(interrupted=False, restarted=False, started=False)
        self._conclude()
        return True

    def begin_timeout(self, grace_deadline: float) -> bool:
        """At the deadline of a started execution: from now on its idle means "settled
        after the interrupt". False if it is already done."""
        with self._cond:
            if self._ended:
                return False
            self._timing_out = True
            self.grace_deadline = grace_deadline
            return True

    def begin_restart(self) -> bool:
        """The grace period is over: the kernel is restarted for this execution, which
        ends when that is done (not at an idle meanwhile). False if it settled just now."""
        with self._cond:
            if self._ended:
                return False
            self._restart_pending = True
            return True

    def finish_timeout(self, *, interrupted: bool, restarted: bool, started: bool = True, sent: bool = True) -> None:
        with self._cond:
            self._finish_timeout_locked(interrupted=interrupted, restarted=restarted, started=started, sent=sent)
        self._conclude()

    def finish_cancelled(self) -> None:
        """Cancelled before it was sent: it never ran."""
        with self._cond:
            if self._ended:
                return
            self._result.error = ExecutionError(
                "KeyboardInterrupt", "cancelled before it was sent to the kernel: it never ran", "", self._result)
            self._finish_locked(None)
        self._conclude()

    def request_cancel(self) -> bool:
        """Note a cancel; True if the code is running now (so the kernel interrupts it),
        False if it is interrupted when it starts."""
        with self._cond:
            self._cancel_requested = True
            return self._started and not self._idle

    @property
    def started(self) -> bool:
        return self._started

    @property
    def settled(self) -> bool:
        """The kernel went idle after this execution."""
        return self._idle

    @property
    def timing_out(self) -> bool:
        return self._timing_out

    # -- public API ----------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Output]:
        """Yield typed outputs (Stdout, Stderr, DisplayData, ExecuteResult, ErrorOutput)
        as they arrive. Raises ExecutionTimeout at the deadline, KernelDied if the
        kernel dies; a user error is an ErrorOutput here (``result()`` raises it).
        Outputs that arrived before the call are replayed first (with ``max_output``,
        those the result kept); live ones are yielded whole, then let go. The
        deadline is armed by this call, before the first item is asked for."""
        self._arm(timeout)
        return self._events()

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Yield text chunks as they are produced: stdout, stderr, and the text of
        results and of displays that carry no image."""
        return _text_of(self.events(timeout))

    def result(self, timeout: float | None = None, check: bool = True) -> Result:
        """Wait for the end and return the Result. With ``check`` (the default) a
        user error raises ExecutionError; with ``check=False`` it is in ``Result.error``."""
        self._arm(timeout)
        with self._cond:
            while not self._done.is_set():
                self._cond.wait()
        if self._failure is not None:
            raise self._failure
        if check and self._result.error is not None:
            raise self._result.error
        return self._result

    def cancel(self) -> None:
        """Interrupt this execution (KeyboardInterrupt in the code): now if it is
        running, as soon as it starts if the kernel has it but has not started it,
        and never send it if it is still queued in pybox. Does nothing once it is done
        (whatever runs next is never touched). Safe from any thread."""
        if self._done.is_set():
            return
        self.kernel.cancel_execution(self)

    def __repr__(self) -> str:
        if self.done:
            state = "done"
        elif self._started:
            state = "running"
        else:
            state = "queued" if not self.sent else "sent"
        return f"<Execution {self.msg_id[:8]} {state} in kernel {self.kernel.id[:8]}>"

    # -- internals -----------------------------------------------------------------

    def _arm(self, timeout: float | None) -> None:
        deadline = deadline_after(timeout)
        if deadline is not None and timeout is not None and not self._done.is_set():
            self.kernel.arm(self, deadline, float(timeout))

    def _events(self) -> Iterator[Output]:
        with self._cond:
            consumer = self._consumer_ids
            self._consumer_ids += 1
            replay = list(self._result.outputs)
            if len(self._detached) == len(self._cursors):
                self._live_floor = self._result.next_seq
            self._cursors[consumer] = self._result.next_seq
        try:
            yield from replay
            while True:
                with self._cond:
                    batch, finished = self._take_locked(consumer)
                yield from batch
                if finished:
                    break
        finally:
            with self._cond:
                self._cursors.pop(consumer, None)
                self._detached.discard(consumer)
                self._trim_locked()
        if self._failure is not None:
            raise self._failure

    def _take_locked(self, consumer: int) -> tuple[list[Output], bool]:
        """What ``consumer`` has not seen yet, waiting for it; (outputs, finished)."""
        self._detached.discard(consumer)  # back: buffered for again
        while True:
            cursor = self._cursors[consumer]
            batch: list[Output] = []
            if cursor < self._live_floor:  # left behind (or replayed up to a later floor)
                entries = [(s, o) for s, o in self._result.entries_since(cursor) if s < self._live_floor]
                kept = [o for _, o in entries]
                missed = self._live_floor - cursor - len({s for s, _ in entries})
                if missed > 0:
                    batch.append(Stderr(f"\n[... pybox: {missed:,} outputs were not delivered here: this consumer "
                                        f"took nothing for {LIVE_STALL_SECONDS:g} s while the buffer was full ...]\n"))
                batch.extend(kept)
                cursor = self._live_floor
            start = self._live[0][0] if self._live else self._result.next_seq
            if self._live and cursor < self._result.next_seq:
                batch.extend(o for _, o in itertools.islice(self._live, max(0, cursor - start), None))
            cursor = max(cursor, self._result.next_seq)
            if batch or cursor != self._cursors[consumer]:
                self._cursors[consumer] = cursor
                self._last_taken = time.monotonic()
                self._trim_locked()
                if batch:
                    return batch, False
            if self._done.is_set():
                return [], True
            self._cond.wait()

    def _trim_locked(self) -> None:
        """Let go of live outputs every consumer has taken (all of them when none iterates)."""
        attached = [seq for consumer, seq in self._cursors.items() if consumer not in self._detached]
        floor = min(attached) if attached else self._result.next_seq
        while self._live and self._live[0][0] < floor:
            _, output = self._live.popleft()
            self._live_size -= _cost(output)
        if not self._live:
            self._live_size = 0
        self._cond.notify_all()  # a reader waiting for room

    def _finish_timeout_locked(self, *, interrupted: bool, restarted: bool, started: bool = True,
                               sent: bool = True) -> None:
        if self._ended:
            return
        self._result.error = None  # the KeyboardInterrupt we caused is not the user's error
        self._finish_locked(ExecutionTimeout(self.timeout or 0.0, self._result, interrupted, restarted,
                                             started=started, sent=sent))

    def _finish_locked(self, failure: PyboxError | None) -> None:
        """Decide the outcome; ``_conclude()`` (outside the lock) publishes it."""
        if self._ended:
            return
        self._ended = True
        self._failure = failure
        self._result.duration = time.monotonic() - self._submitted_at
        reply = self._reply or {}
        status = reply.get("status")
        if failure is None and self._result.error is None and status == "error":
            self._result.error = ExecutionError.from_content(reply, self._result)
        elif failure is None and self._result.error is None and status in ("aborted", "abort"):
            # The code did not run to its end and the kernel sent no error: bash_kernel
            # when interrupted (cancel()), ipykernel for a request queued behind a failure.
            self._result.error = ExecutionError(
                "Aborted", f"the kernel aborted the execution (reply status {status!r}): it was "
                "interrupted, or skipped after an earlier error", "", self._result)

    def _conclude(self) -> None:
        """After the outcome is decided: the kernel stops routing to it (unless it still
        runs it), then waiters see it done. Idempotent."""
        self.kernel.execution_finished(self)
        with self._cond:
            if not self._done.is_set():
                self._done.set()
                self._cond.notify_all()


def _cost(output: Output) -> int:
    """What an output counts against LIVE_BUFFER_LIMIT (its images included)."""
    return output_size(output) + image_size(output) + LIVE_OUTPUT_OVERHEAD


def _text_of(outputs: Iterator[Output]) -> Iterator[str]:
    for output in outputs:
        if isinstance(output, (Stdout, Stderr)):
            yield output.text
        elif isinstance(output, DisplayData) and not output.has_image and output.text is not None:
            yield output.text + "\n"
