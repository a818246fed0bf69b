"""pybox.Pool on a real engine: warm hand-outs, no state between users, concurrent
acquirers, start failures named, dead sandboxes replaced, nothing left after close."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

import pybox
from pybox.backend import LABEL
from pybox.ownership import SESSION, SESSION_LABEL
from pybox.plugins import get_plugins

from .conftest import BACKEND, IMAGE


@pytest.fixture
def engine():
    """The test backend, to look at and remove containers behind the pool's back."""
    backend = get_plugins().backend(BACKEND)()
    yield backend
    backend.close()


def containers_of_this_process(engine) -> set[str]:
    return set(engine.list_containers({LABEL: "1", SESSION_LABEL: SESSION}))


def wait_until(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def full(pool: pybox.Pool) -> pybox.PoolStats:
    """Wait until the pool holds ``size`` ready sandboxes and nothing is starting."""
    return wait_until(lambda: (s := pool.stats()).ready == s.size and s.starting == 0 and s, f"pool full: "
                      f"{pool.stats()}")


def test_warm_acquire_hands_out_a_started_sandbox_with_its_kernel_ready():
    with pybox.Pool(size=2, image=IMAGE, backend=BACKEND) as pool:
        full(pool)
        sb = pool.acquire(timeout=0)  # ready now: no waiting at all
        try:
            assert isinstance(sb, pybox.Sandbox) and sb.id and not sb.closed
            assert sb.run("print(1)").text == "1"
            assert sb.run("1 + 1").execution_count == 2  # nothing ran in it before its user
            assert pool.stats().in_use == 1
        finally:
            pool.release(sb)


def test_state_never_passes_from_one_user_to_the_next():
    with pybox.Pool(size=1, image=IMAGE, backend=BACKEND) as pool:
        with pool.sandbox(timeout=120) as first:
            first.run("secret = 'from the first user'")
            first.run("open('/app/left-behind.txt', 'w').write('x')")
            first_id = first.id
        with pool.sandbox(timeout=120) as second:
            assert second.id != first_id
            with pytest.raises(pybox.ExecutionError) as info:
                second.run("secret")
            assert info.value.ename == "NameError"
            assert second.run("import os; print(os.path.exists('/app/left-behind.txt'))").text == "False"
        wait_until(lambda: first.closed, "the returned sandbox destroyed")
        with pytest.raises(pybox.SandboxClosed):
            first.run("1")
        with pytest.raises(pybox.InvalidArgument, match="not in use from this pool"):
            pool.release(first)  # returned already: never taken back


def test_eight_concurrent_acquirers_each_get_a_sandbox_of_their_own():
    results: dict[int, tuple[str, str]] = {}
    errors: list[BaseException] = []
    all_acquired = threading.Barrier(8, timeout=300)
    with pybox.Pool(size=4, image=IMAGE, backend=BACKEND) as pool:

        def work(number: int) -> None:
            try:
                with pool.sandbox(timeout=300) as sb:
                    text = sb.run(f"print({number})").text
                    results[number] = (sb.id, text)
                    all_acquired.wait()  # every sandbox held at once
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert {n: text for n, (_, text) in results.items()} == {n: str(n) for n in range(8)}
        assert len({container for container, _ in results.values()}) == 8
        stats = pool.stats()
        assert stats.in_use == 0 and stats.created >= 8 and stats.failed == 0


def test_a_missing_image_times_out_naming_the_image():
    image = "pybox-test-no-such-image:missing"
    with pybox.Pool(size=1, image=image, backend=BACKEND) as pool:
        with pytest.raises(pybox.PoolTimeout) as info:
            pool.acquire(timeout=3)
    error = info.value
    assert isinstance(error, TimeoutError) and isinstance(error, pybox.PyboxError)
    assert image in str(error) and "ImageNotFound" in str(error)
    assert isinstance(error.__cause__, pybox.ImageNotFound) and error.last_error is error.__cause__
    assert error.stats.failed >= 1 and error.stats.ready == 0
    assert pool.stats().last_error and image in pool.stats().last_error


ENGINE_ADDRESS = {"docker": "DOCKER_HOST", "podman": "CONTAINER_HOST"}


@pytest.mark.skipif(BACKEND not in ENGINE_ADDRESS, reason="the backend is not pointed at an address in the environment")
def test_a_down_engine_times_out_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv(ENGINE_ADDRESS[BACKEND], f"unix://{tmp_path}/no-engine.sock")  # no engine there
    with pybox.Pool(size=1, image=IMAGE, backend=BACKEND) as pool:
        with pytest.raises(pybox.PoolTimeout, match="BackendUnavailable") as info:
            pool.acquire(timeout=2)
    assert isinstance(info.value.__cause__, pybox.BackendUnavailable)


def test_a_pooled_sandbox_removed_behind_the_pools_back_is_never_handed_out(engine, monkeypatch):
    monkeypatch.setattr(pybox.pool, "HEALTH_INTERVAL", 3600.0)  # only the check at hand-out can find them
    before = containers_of_this_process(engine)
    with pybox.Pool(size=2, image=IMAGE, backend=BACKEND) as pool:
        full(pool)
        pooled = containers_of_this_process(engine) - before
        assert len(pooled) == 2
        for container in pooled:
            engine.remove(container)
        with pool.sandbox(timeout=120) as sb:
            assert sb.id not in pooled
            assert sb.run("print('alive')").text == "alive"
        assert pool.stats().dead == 2


def test_a_dead_ready_sandbox_is_found_and_replaced_in_the_background(engine, monkeypatch):
    monkeypatch.setattr(pybox.pool, "HEALTH_INTERVAL", 0.5)
    before = containers_of_this_process(engine)
    with pybox.Pool(size=2, image=IMAGE, backend=BACKEND) as pool:
        full(pool)
        pooled = containers_of_this_process(engine) - before
        for container in pooled:
            engine.remove(container)
        wait_until(lambda: pool.stats().dead == 2, "the dead ones found without an acquire", timeout=30)
        stats = full(pool)
        assert stats.created == 4 and not pooled & containers_of_this_process(engine)
        with pool.sandbox(timeout=0) as sb:
            assert sb.id not in pooled and sb.run("print(2)").text == "2"


def test_close_removes_every_container_and_in_use_ones_at_release(engine):
    before = containers_of_this_process(engine)
    pool = pybox.Pool(size=3, image=IMAGE, backend=BACKEND).start()
    held = pool.acquire(timeout=120)
    full(pool)
    assert len(containers_of_this_process(engine) - before) >= 4
    pool.close()
    assert containers_of_this_process(engine) - before == {held.id}  # in use: still the caller's
    assert held.run("print('still mine')").text == "still mine"
    pool.release(held)
    assert held.closed and containers_of_this_process(engine) - before == set()
    pool.close()  # idempotent
    with pytest.raises(pybox.SandboxClosed):
        pool.acquire(timeout=1)


def test_stats_count_what_the_pool_did():
    with pybox.Pool(size=2, image=IMAGE, backend=BACKEND) as pool:
        stats = full(pool)
        assert (stats.ready, stats.in_use, stats.starting, stats.failed, stats.created, stats.destroyed,
                stats.dead, stats.last_error) == (2, 0, 0, 0, 2, 0, 0, None)
        with pool.sandbox() as sb:
            assert pool.stats().in_use == 1
            sb.run("pass")
        stats = wait_until(lambda: (s := pool.stats()).destroyed == 1 and s.ready == 2 and s, "refilled")
        assert (stats.in_use, stats.created, stats.failed) == (0, 3, 0)
    stats = pool.stats()
    assert (stats.ready, stats.in_use, stats.starting, stats.created, stats.destroyed) == (0, 0, 0, 3, 3)


def test_a_bad_option_is_refused_when_the_pool_is_made(engine):
    before = containers_of_this_process(engine)
    with pytest.raises(pybox.InvalidArgument, match="max_output"):
        pybox.Pool(size=2, image=IMAGE, backend=BACKEND, max_output=5)
    assert containers_of_this_process(engine) == before


# A client that fills a pool, takes one sandbox and ends without closing anything.
POOL_CLIENT = """
import sys, time, pybox
from pybox.ownership import SESSION
pool = pybox.Pool(size=2, image=sys.argv[1], backend=sys.argv[2]).start()
held = pool.acquire(timeout=120)
while pool.stats().ready < 2:
    time.sleep(0.05)
print(SESSION, flush=True)
if sys.argv[3] == "sigterm":
    time.sleep(300)
sys.stdin.readline()  # exit once the test has counted the containers (removal can be quick)
"""


@pytest.mark.parametrize("end", ["exit", "sigterm"])
def test_process_end_removes_every_container_of_the_pool(engine, end):
    client = subprocess.Popen([sys.executable, "-c", POOL_CLIENT, IMAGE, BACKEND, end], stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True)
    try:
        session = client.stdout.readline().strip()
        assert session, "the client did not fill its pool"
        assert len(engine.list_containers({LABEL: "1", SESSION_LABEL: session})) == 3
        if end == "sigterm":
            client.send_signal(signal.SIGTERM)
        else:
            client.stdin.write("\n")
            client.stdin.flush()
        client.wait(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert engine.list_containers({LABEL: "1", SESSION_LABEL: session}) == []
