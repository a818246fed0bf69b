"""pybox.Pool without an engine: its arguments checked when it is made, the error
that names why no sandbox came, bounded starts, closing. Its sandboxes' backends are
the fake one (tests/unit/fakes.py); the pool's work on a real engine is in
tests/integration/test_pool.py."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from fakes import FakeBackend, FakeBackendPlugin

import pybox
import pybox.plugins
from pybox import BackendNotFound, ImageNotFound, InvalidArgument, PoolStats, PoolTimeout, SandboxClosed
from pybox.kernel.gateway import Gateway
from pybox.options import SandboxOptions
from pybox.plugins import Plugins
from pybox.pool import BACKOFF_FIRST, BACKOFF_MAX, backoff_delay


class MissingImageBackend(FakeBackend):
    """Every start fails as an engine without the image fails."""

    name = "fake-missing"

    def start(self, plan):
        self.calls.append(("start",))
        raise ImageNotFound(plan.image)


class SlowStartBackend(FakeBackend):
    """Starts wait until ``release`` is set; counts the starts in flight."""

    name = "fake-slow"
    release = threading.Event()
    lock = threading.Lock()
    in_flight = 0
    most_in_flight = 0

    def start(self, plan):
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            cls.release.wait(10)
        finally:
            with cls.lock:
                cls.in_flight -= 1
        return super().start(plan)


@pytest.fixture
def plugins(monkeypatch):
    plugins = Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(FakeBackend, MissingImageBackend, SlowStartBackend), name="fake-plugin")
    monkeypatch.setattr(pybox.plugins, "_plugins", plugins)
    monkeypatch.setattr(FakeBackend, "instances", [])
    monkeypatch.delenv("PYBOX_BACKEND", raising=False)
    monkeypatch.setenv("PYBOX_NO_PROCESS_HOOKS", "1")  # no atexit / SIGTERM handlers in the test process
    monkeypatch.setattr(Gateway, "ready", lambda self, timeout=1.0: False)  # nothing listens: no traffic
    return plugins


@pytest.fixture
def make_pool(plugins):
    made = []

    def make(**kwargs):
        kwargs.setdefault("backend", "fake")
        pool = pybox.Pool(**kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def wait_until(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"not within {timeout:g} s: {what}")


# -- made: everything checked, nothing started ---------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"size": 0}, "size"),
    ({"size": -1}, "size"),
    ({"size": True}, "size"),
    ({"size": 2.5}, "size"),
    ({"size": "4"}, "size"),
    ({"max_starting": 0}, "max_starting"),
    ({"max_starting": True}, "max_starting"),
    ({"port": 8888}, "port must be None in a pool"),
    ({"options": SandboxOptions(port=8888)}, "port must be None in a pool"),
    ({"image": "two words"}, "image"),
    ({"max_output": 5}, "max_output"),
    ({"startup_timeout": 0}, "startup_timeout"),
    ({"env": {"A": 1}}, "env variable A"),
    ({"network": "closed"}, "network"),
    ({"binds": {"/no/such/path/pybox": "x"}}, "does not exist"),
    ({"pull_progress": "print"}, "pull_progress"),
])
def test_a_bad_argument_is_refused_when_the_pool_is_made(make_pool, kwargs, words):
    with pytest.raises(InvalidArgument, match=words):
        make_pool(**kwargs)
    assert FakeBackend.instances == []


def test_an_unknown_backend_is_named_when_the_pool_is_made(make_pool):
    with pytest.raises(BackendNotFound, match="no-such-backend"):
        make_pool(backend="no-such-backend")


def test_a_valid_pool_starts_nothing_until_started(make_pool):
    pool = make_pool(size=3, image="my-env:v1")
    assert FakeBackend.instances == [] and not pool.closed
    assert pool.stats() == PoolStats(size=3, ready=0, in_use=0, starting=0, failed=0, created=0, destroyed=0,
                                     dead=0, last_error=None)
    assert pool.options.image == "my-env:v1" and pool.backend_name == "fake"
    assert pool.max_starting == 2 and "not started" in repr(pool)
    assert make_pool(size=1).max_starting == 1
    assert make_pool(size=5, max_starting=9).max_starting == 5
    options = SandboxOptions(backend="fake", max_output=1000)
    assert make_pool(options=options).options is options


def test_closed_before_start_it_hands_out_nothing(make_pool):
    pool = make_pool()
    pool.close()
    pool.close()  # idempotent
    assert pool.closed
    with pytest.raises(SandboxClosed, match="pool was closed"):
        pool.acquire(timeout=0)
    with pytest.raises(SandboxClosed):
        pool.start()


def test_only_sandboxes_in_use_from_the_pool_are_taken_back(make_pool):
    pool = make_pool()
    with pytest.raises(InvalidArgument, match="not in use from this pool"):
        pool.release(pybox.Sandbox(backend="fake"))


@pytest.mark.parametrize("timeout", [-1, "5", float("nan")])
def test_a_bad_acquire_timeout_is_refused(make_pool, timeout):
    with pytest.raises(InvalidArgument, match="timeout"):
        make_pool().acquire(timeout=timeout)


# -- no sandbox: the error says why ------------------------------------------------------------


def test_when_starts_fail_the_timeout_names_the_last_failure(make_pool):
    pool = make_pool(size=2, backend="fake-missing", image="nowhere:1").start()
    wait_until(lambda: pool.stats().failed >= 1, "a start failed")
    with pytest.raises(PoolTimeout) as info:
        pool.acquire(timeout=0)
    error = info.value
    assert isinstance(error, TimeoutError) and isinstance(error, pybox.PyboxError)
    assert "'nowhere:1'" in str(error) and "ImageNotFound" in str(error) and "fake-missing" in str(error)
    assert isinstance(error.__cause__, ImageNotFound) and error.last_error is error.__cause__
    assert error.timeout == 0 and error.stats.failed >= 1 and error.stats.ready == 0
    assert "ImageNotFound: image 'nowhere:1' not found" in pool.stats().last_error


def test_starts_in_flight_are_bounded_and_named_in_the_timeout(make_pool, monkeypatch):
    monkeypatch.setattr(SlowStartBackend, "release", threading.Event())
    monkeypatch.setattr(SlowStartBackend, "most_in_flight", 0)
    pool = make_pool(size=5, max_starting=2, backend="fake-slow", startup_timeout=0.1).start()
    wait_until(lambda: SlowStartBackend.in_flight == 2, "two starts in flight")
    time.sleep(0.2)  # room for a third start, were the bound not kept
    assert pool.stats().starting == 2 and SlowStartBackend.most_in_flight == 2
    with pytest.raises(PoolTimeout, match=r"2 start\(s\) in progress") as info:
        pool.acquire(timeout=0)
    assert info.value.__cause__ is None and info.value.last_error is None
    SlowStartBackend.release.set()
    pool.close()  # waits for the starts in flight
    stats = pool.stats()
    assert stats.starting == 0 and stats.ready == 0 and SlowStartBackend.in_flight == 0
    assert SlowStartBackend.most_in_flight == 2
    # Each start failed (nothing answers) and removed its container itself.
    assert stats.failed >= 2 and "StartupTimeout" in stats.last_error
    for backend in FakeBackend.instances:
        if ("start",) in backend.calls:
            assert ("remove", "c0ffee" * 10) in backend.calls


def test_backoff_grows_after_each_failure_and_is_capped():
    delays = [backoff_delay(n) for n in range(12)]
    assert delays[:4] == [0.0, BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST]
    assert delays == sorted(delays) and max(delays) == BACKOFF_MAX
    assert backoff_delay(10_000) == BACKOFF_MAX


# -- forgotten --------------------------------------------------------------------------------


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pybox-pool-")]


def test_a_forgotten_pool_is_closed_when_collected(plugins):
    assert pool_threads() == []
    pool = pybox.Pool(size=1, backend="fake-missing").start()
    assert len(pool_threads()) == 2  # one starter, the janitor
    with pytest.warns(ResourceWarning, match="unclosed <pybox.Pool"):
        del pool
        gc.collect()
    wait_until(lambda: pool_threads() == [], "the pool's threads ended")
