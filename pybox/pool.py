"""A warm pool of sandboxes: ``size`` sandboxes kept started, each with its default
kernel open, handed out one at a time and destroyed when returned.

Built on the public ``Sandbox`` only: every pooled sandbox is a ``Sandbox`` made from
the pool's ``SandboxOptions`` (checked once, when the pool is made), so it carries the
same owner labels, is closed by the same process hooks and reaped the same way.

Threads. ``max_starting`` starter threads each start one sandbox at a time while the
pool holds fewer than ``size`` ready or starting ones, so at most ``max_starting``
containers boot at once (refills never flood the engine or the machine). A start waits:

- ``REFILL_PAUSE`` after the hand-out it replaces, unless someone is waiting for a
  sandbox (the caller's first executions do not compete with a container boot);
- while more than ``max_starting`` returned sandboxes wait for removal (the containers
  alive stay bounded);
- ``backoff_delay(failures)`` after consecutive failed starts (a down engine is not
  hammered).

One janitor thread destroys returned sandboxes (so ``release`` does not wait for the
engine) and looks at the ready ones every ``HEALTH_INTERVAL`` seconds. The threads hold
the pool's state (``_PoolState``), never the ``Pool`` itself, so a forgotten pool is
collected and closed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from pybox.backend import Limits, PullProgressCallback
from pybox.errors import InvalidArgument, PoolTimeout, PyboxError, SandboxClosed
from pybox.image_contract import DEFAULT_IMAGE
from pybox.kernel import Kernel
from pybox.options import (
    DEFAULT_INTERRUPT_GRACE,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_STARTUP_TIMEOUT,
    BindsArg,
    SandboxOptions,
    check_seconds,
)
from pybox.ownership import install_process_hooks, track_live, untrack_live
from pybox.sandbox import Sandbox

__all__ = ["DEFAULT_ACQUIRE_TIMEOUT", "Pool", "PoolStats", "backoff_delay"]

log = logging.getLogger(__name__)

#: Seconds ``acquire`` waits by default: as long as a cold start may take by default.
DEFAULT_ACQUIRE_TIMEOUT = DEFAULT_STARTUP_TIMEOUT
#: Starts in flight at once unless ``max_starting`` says otherwise (at most ``size``).
DEFAULT_MAX_STARTING = 2
#: Seconds between background checks that the ready sandboxes are alive.
HEALTH_INTERVAL = 5.0
#: Seconds one liveness check may take (the gateway answers a live one in milliseconds).
HEALTH_TIMEOUT = 1.0
#: Seconds a refill waits after a hand-out while no one waits for a sandbox: the caller's
#: first executions run while the machine is not also booting a container.
REFILL_PAUSE = 0.5
#: Backoff after consecutive failed starts: the first wait, doubled each time up to the last.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


def backoff_delay(failures: int) -> float:
    """Seconds to wait before the next start after ``failures`` failed starts in a row."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(failures - 1, 32))


@dataclass(frozen=True)
class PoolStats:
    """What a pool holds at one moment (``Pool.stats()``), and its counts so far."""

    #: Sandboxes the pool keeps ready.
    size: int
    #: Started, default kernel open, waiting to be handed out.
    ready: int
    #: Handed out and not released yet.
    in_use: int
    #: Being started now.
    starting: int
    #: Starts that failed.
    failed: int
    #: Sandboxes started (every one was ready once).
    created: int
    #: Sandboxes the pool closed (released, found dead, or at ``close()``).
    destroyed: int
    #: Ready sandboxes found dead (container gone, gateway silent) and replaced.
    dead: int
    #: The last start failure (``"ImageNotFound: image ..."``), None when none failed.
    last_error: str | None


@dataclass(frozen=True)
class _Warm:
    """A ready sandbox and its open default kernel."""

    sandbox: Sandbox
    kernel: Kernel


def _alive(warm: _Warm, timeout: float) -> bool:
    """Cheaply: the sandbox and kernel are open, the gateway answers (one local HTTP
    request) and the engine says the container runs (one inspect): a gateway reached
    through a connection kept open (a Kubernetes port-forward) can still answer for a
    moment after its container was removed."""
    if warm.sandbox.closed or warm.kernel.closed:
        return False
    try:
        return warm.kernel.gateway.ready(timeout=timeout) and warm.sandbox._container_running()
    except PyboxError:  # e.g. the token refused: not a sandbox to hand out either way
        return False


class _PoolState:
    """The pool's sandboxes, counters and threads (see the module's docstring)."""

    def __init__(self, options: SandboxOptions, pull_progress: PullProgressCallback | None, size: int,
                 max_starting: int, backend_name: str):
        self.options = options
        self.pull_progress = pull_progress
        self.size = size
        self.max_starting = max_starting
        self.backend_name = backend_name
        self.cond = threading.Condition(threading.RLock())  # reentrant: SIGTERM may close while held
        self.ready: deque[_Warm] = deque()
        # Weakly: a handed-out sandbox its user forgot is collected (and its container
        # removed by Sandbox.__del__) instead of being kept by the pool.
        self.in_use: weakref.WeakSet[Sandbox] = weakref.WeakSet()
        self.doomed: deque[Sandbox] = deque()  # to be destroyed by the janitor
        self.starting = 0
        self.failed = 0
        self.created = 0
        self.destroyed = 0
        self.dead = 0
        self.failures_in_a_row = 0
        self.next_start_at = 0.0  # monotonic; after failures, not before then
        self.refills_due: deque[float] = deque()  # monotonic, per hand-out not refilled yet (REFILL_PAUSE)
        self.waiting = 0  # acquirers waiting for a sandbox
        self.last_error: BaseException | None = None
        self.started = False
        self.closed = False
        self.threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        with self.cond:
            if self.closed:
                raise SandboxClosed("this pool was closed; create a new Pool")
            if self.started:
                return
            self.started = True
            track_live(self)  # closed at process exit and on SIGTERM, like a sandbox
            install_process_hooks()  # here: starter threads cannot install the SIGTERM handler
            for number in range(self.max_starting):
                self._spawn(self._start_loop, f"pybox-pool-start-{number}")
            self._spawn(self._janitor_loop, "pybox-pool-janitor")
        log.info("pool of %d %s sandbox(es) on %s: filling, %d start(s) at a time", self.size, self.options.image,
                 self.backend_name, self.max_starting)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.doomed.extend(warm.sandbox for warm in self.ready)
            self.ready.clear()
            self.cond.notify_all()
        untrack_live(self)
        # Starts in flight finish (a start cannot be cut short) and doom what they made.
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join()
        while True:
            with self.cond:
                if not self.doomed:
                    break
                sandbox = self.doomed.popleft()
            self._destroy(sandbox)
        log.info("pool of %s sandboxes on %s closed (%d created, %d destroyed)", self.options.image,
                 self.backend_name, self.created, self.destroyed)

    # -- handing out -----------------------------------------------------------------

    def acquire(self, timeout: float | None) -> Sandbox:
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.cond:
                while not self.ready:
                    if self.closed:
                        raise SandboxClosed("this pool was closed; create a new Pool")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        assert timeout is not None
                        error = self._timeout_error(timeout)
                        raise error from error.last_error
                    self.waiting += 1
                    if self.waiting == 1:
                        self.cond.notify_all()  # someone waits now: refills start without a pause
                    try:
                        self.cond.wait(remaining)
                    finally:
                        self.waiting -= 1
                warm = self.ready.popleft()
                self.in_use.add(warm.sandbox)
                self.refills_due.append(time.monotonic() + REFILL_PAUSE)
                self.cond.notify_all()  # a starter may refill (after the pause)
            if _alive(warm, HEALTH_TIMEOUT):
                return warm.sandbox
            log.warning("pool: sandbox %s was dead when handed out; discarded and replaced",
                        (warm.sandbox.id or "")[:12])
            with self.cond:
                self.dead += 1
            self._give_back(warm.sandbox)

    def release(self, sandbox: Sandbox) -> None:
        self._give_back(sandbox)

    def _give_back(self, sandbox: Sandbox) -> None:
        """An in-use sandbox is done: the janitor destroys it, or this thread once the pool is closed."""
        with self.cond:
            if sandbox not in self.in_use:
                raise InvalidArgument(f"{sandbox!r} is not in use from this pool (released already, or acquired "
                                      "elsewhere)")
            self.in_use.discard(sandbox)
            if not self.closed:
                self._doom_locked(sandbox)
                return
        self._destroy(sandbox)

    def _doom_locked(self, sandbox: Sandbox) -> None:
        self.doomed.append(sandbox)
        self.cond.notify_all()

    def _timeout_error(self, timeout: float) -> PoolTimeout:
        what = f"no sandbox of the pool (image {self.options.image!r} on {self.backend_name}) became ready within " \
               f"{timeout:g} s"
        cause = self.last_error if self.failures_in_a_row else None
        if cause is not None:
            why = (f"the last {self.failures_in_a_row} start(s) failed, the last with "
                   f"{type(cause).__name__}: {cause}")
        elif self.starting:
            why = (f"{self.starting} start(s) in progress, {len(self.in_use)} sandbox(es) in use (a start takes "
                   "seconds; make the pool larger or wait longer)")
        else:
            why = f"all {len(self.in_use)} sandbox(es) are in use"
        return PoolTimeout(f"{what}: {why}", timeout=timeout, last_error=cause, stats=self.stats())

    def stats(self) -> PoolStats:
        with self.cond:
            return PoolStats(
                size=self.size, ready=len(self.ready), in_use=len(self.in_use), starting=self.starting,
                failed=self.failed, created=self.created, destroyed=self.destroyed, dead=self.dead,
                last_error=None if self.last_error is None else f"{type(self.last_error).__name__}: {self.last_error}",
            )

    # -- the threads -----------------------------------------------------------------

    def _start_loop(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.closed:
                        return
                    wait: float | None = None
                    need = self.size - len(self.ready) - self.starting
                    while len(self.refills_due) > max(need, 0):
                        self.refills_due.popleft()
                    # Removals first when they lag: the containers alive stay bounded.
                    if need > 0 and len(self.doomed) <= self.max_starting:
                        not_before = self.next_start_at
                        if not self.waiting and len(self.refills_due) == need:  # every start needed waits a pause
                            not_before = max(not_before, self.refills_due[0])
                        wait = not_before - time.monotonic()
                        if wait <= 0:
                            break
                    self.cond.wait(wait)
                if len(self.refills_due) == need:  # this start refills the oldest hand-out
                    self.refills_due.popleft()
                self.starting += 1
            warm: _Warm | None = None
            error: BaseException | None = None
            try:
                warm = self._start_one()
            except Exception as exc:  # PyboxError, or a plugin's bug: a failed start, never a dead thread
                error = exc
            with self.cond:
                self.starting -= 1
                if warm is not None:
                    self.created += 1
                    self.failures_in_a_row = 0
                    self.next_start_at = 0.0
                    if self.closed:
                        self.doomed.append(warm.sandbox)
                    else:
                        self.ready.append(warm)
                else:
                    self.failed += 1
                    self.failures_in_a_row += 1
                    self.last_error = error
                    delay = backoff_delay(self.failures_in_a_row)
                    self.next_start_at = time.monotonic() + delay
                    log.warning("pool: a sandbox start failed (%d in a row; next try in %.1f s): %s",
                                self.failures_in_a_row, delay, error)
                self.cond.notify_all()

    def _start_one(self) -> _Warm:
        sandbox = Sandbox(options=self.options, pull_progress=self.pull_progress)
        sandbox.start()  # removes its container itself when it fails
        try:
            kernel = sandbox.default_kernel  # adopts the prespawned kernel; start-up code runs now
        except BaseException:
            sandbox.close()
            raise
        return _Warm(sandbox, kernel)

    def _janitor_loop(self) -> None:
        next_check = time.monotonic() + HEALTH_INTERVAL
        while True:
            with self.cond:
                while not self.doomed and not self.closed:
                    wait = next_check - time.monotonic()
                    if wait <= 0:
                        break
                    self.cond.wait(wait)
                if self.closed:
                    return  # close() destroys what is left
                sandbox = self.doomed.popleft() if self.doomed else None
                to_check = list(self.ready) if sandbox is None else []
            if sandbox is not None:
                self._destroy(sandbox)
                continue
            next_check = time.monotonic() + HEALTH_INTERVAL
            for warm in to_check:
                if not _alive(warm, HEALTH_TIMEOUT):
                    with self.cond:
                        if warm in self.ready:  # not handed out meanwhile
                            self.ready.remove(warm)
                            self.dead += 1
                            self._doom_locked(warm.sandbox)
                            log.warning("pool: ready sandbox %s died; discarded and replaced",
                                        (warm.sandbox.id or "")[:12])

    def _destroy(self, sandbox: Sandbox) -> None:
        removed = False
        try:
            sandbox.close()
            removed = True
        except Exception as exc:  # the engine's trouble: the others are still destroyed
            log.warning("pool: could not remove sandbox %s: %s", (sandbox.id or "")[:12], exc)
        with self.cond:
            self.destroyed += removed
            self.cond.notify_all()  # a starter may wait for the removals to catch up


class Pool:
    """Sandboxes kept started, with their default kernel open, handed out one at a time.

    ``Pool(size=4, image=..., backend=...)`` takes every option ``Sandbox`` takes (or a
    ready ``options``), checked now: a bad one raises here, not at ``acquire``. ``port``
    must stay None (pooled sandboxes run at once; each gets a free port). ``start()`` (or
    ``with``, or the first ``acquire``) begins filling: at most ``max_starting`` starts
    at a time (default ``min(size, 2)``), with growing pauses after failed starts.

    ``with pool.sandbox() as sb:`` hands out a ready sandbox and destroys it afterwards;
    ``acquire()`` / ``release(sb)`` do the same by hand. A sandbox is never handed out
    twice, so no one sees another's state; the pool starts a replacement at once. Each
    one is checked alive before it is handed out (a dead one is replaced), and the
    ready ones every few seconds. ``close()`` (or leaving ``with``) stops the refills,
    waits for starts in flight and removes every ready sandbox; a sandbox in use when
    the pool closes stays usable and is removed when released. Process exit and SIGTERM
    close the pool like a sandbox; the reaper removes what a crashed process left.
    """

    def __init__(
        self,
        size: int = 4,
        image: str | None = None,
        backend: str | None = None,
        *,
        max_starting: int | None = None,
        binds: BindsArg | None = None,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        port: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
        startup_code: str | None = None,
        read_only: bool = False,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        network: str | Sequence[str] = "default",
        options: SandboxOptions | None = None,
        pull_progress: PullProgressCallback | None = None,
    ):
        self._state: _PoolState | None = None  # for __del__ when a check below fails
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidArgument(f"size must be a positive number of sandboxes, got {size!r}")
        if max_starting is None:
            max_starting = min(size, DEFAULT_MAX_STARTING)
        elif isinstance(max_starting, bool) or not isinstance(max_starting, int) or max_starting < 1:
            raise InvalidArgument(f"max_starting must be a positive number of starts, got {max_starting!r}")
        if (options.port if isinstance(options, SandboxOptions) else port) is not None:
            raise InvalidArgument("port must be None in a pool: its sandboxes run at once, each on a port the "
                                  "engine picks")
        # A Sandbox made (not started) with these arguments runs every check Sandbox runs.
        model = Sandbox(
            image=DEFAULT_IMAGE if image is None else image, backend=backend, binds=binds, env=env, limits=limits,
            startup_timeout=startup_timeout, interrupt_grace=interrupt_grace, startup_code=startup_code,
            read_only=read_only, max_output=max_output, network=network, options=options,
            pull_progress=pull_progress,
        )
        self.size = size
        self.max_starting = min(max_starting, size)
        self.options = model.options
        self.backend_name = model.backend_name
        self._state = _PoolState(self.options, pull_progress, size, self.max_starting, self.backend_name)

    def start(self) -> Pool:
        """Begin filling the pool (in the background; returns at once). Idempotent."""
        assert self._state is not None
        self._state.start()
        return self

    def acquire(self, timeout: float | None = DEFAULT_ACQUIRE_TIMEOUT) -> Sandbox:
        """A ready sandbox, yours until ``release(sandbox)``. Waits up to ``timeout``
        seconds (None: no limit; 0: only if one is ready now) for one, then raises
        PoolTimeout saying why (the last start failure, chained, when starts fail).
        SandboxClosed once the pool is closed."""
        assert self._state is not None
        timeout = None if timeout is None else check_seconds(timeout, "timeout", zero_ok=True)
        return self._state.acquire(timeout)

    def release(self, sandbox: Sandbox) -> None:
        """Give back a sandbox from ``acquire``: it is destroyed (in the background),
        never handed out again. InvalidArgument for one not in use from this pool."""
        assert self._state is not None
        self._state.release(sandbox)

    @contextlib.contextmanager
    def sandbox(self, timeout: float | None = DEFAULT_ACQUIRE_TIMEOUT) -> Iterator[Sandbox]:
        """``with pool.sandbox() as sb:`` — ``acquire(timeout)``, released at the end."""
        sandbox = self.acquire(timeout)
        try:
            yield sandbox
        finally:
            self.release(sandbox)

    def stats(self) -> PoolStats:
        """Ready, in use, starting; failed starts, sandboxes created and destroyed."""
        assert self._state is not None
        return self._state.stats()

    def close(self) -> None:
        """Stop refilling, wait for starts in flight and remove every ready sandbox (in
        use ones: when released). Idempotent."""
        if self._state is not None:
            self._state.close()

    @property
    def closed(self) -> bool:
        return self._state is None or self._state.closed

    def __enter__(self) -> Pool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten pool must not keep containers (or threads) alive
        try:
            state = self._state
            if state is not None and state.started and not state.closed:
                warnings.warn(f"unclosed {self!r}: its sandboxes are removed now; close pools (or use `with`) "
                              f"when done", ResourceWarning, source=self, stacklevel=2)
                state.close()
        except Exception as exc:  # no exceptions out of __del__
            log.debug("closing a garbage-collected pool failed: %s", exc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("filling" if self._state and self._state.started else "not started")
        return f"<pybox.Pool of {self.size} {self.options.image} on {self.backend_name} {state}>"
