"""Kernel control over a scripted channel: timeouts, interrupts, kernel death,
cancel, bad input, close."""

from __future__ import annotations

import threading
import time

import pytest
from fakes import (
    Close,
    Delay,
    Set,
    Unrouted,
    WaitFor,
    busy,
    error,
    idle,
    interrupted_run,
    msg,
    ok_run,
    reply,
    status,
    stdout,
)

from pybox import (
    ChannelError,
    ExecutionError,
    ExecutionTimeout,
    InvalidArgument,
    KernelDied,
    KernelError,
    PyboxError,
    SandboxClosed,
)

#: Scheduling slack allowed on top of timeout + grace (generous for slow CI machines).
SLACK = 1.0


def wait_until(condition, limit: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``limit`` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def hanging_script(started: threading.Event, *outputs):
    """A cell that starts, writes ``outputs`` and then never finishes on its own."""
    return [busy(), *outputs, Set(started), WaitFor(threading.Event())]


# -- timeouts -----------------------------------------------------------------------------


def test_timeout_interrupts_a_kernel_that_honours_sigint(make_rig):
    rig = make_rig(interrupt_grace=2.0)
    rig.add_script(*hanging_script(threading.Event(), stdout("partial\n")))
    rig.react_to_interrupt()  # KeyboardInterrupt, error reply, idle

    started = time.monotonic()
    with pytest.raises(ExecutionTimeout) as info:
        rig.kernel.run("while True: pass", timeout=0.3)
    elapsed = time.monotonic() - started

    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.timeout == 0.3
    assert err.started is True
    assert err.interrupted is True
    assert err.restarted is False
    assert err.result.stdout == "partial\n"
    assert err.result.error is None  # the KeyboardInterrupt we caused is not the user's error
    assert rig.gateway.count("interrupt") == 1
    assert rig.gateway.count("restart") == 0
    assert 0.3 <= elapsed < 0.3 + SLACK  # no need to wait for the grace period


def test_timeout_restarts_a_kernel_that_ignores_sigint(make_rig):
    grace = 0.3
    rig = make_rig(interrupt_grace=grace)
    rig.add_script(*hanging_script(threading.Event(), stdout("partial\n")))
    # no interrupt reaction: the code ignores SIGINT

    started = time.monotonic()
    with pytest.raises(ExecutionTimeout) as info:
        rig.kernel.run("signal.signal(SIGINT, SIG_IGN); sleep()", timeout=0.3)
    elapsed = time.monotonic() - started

    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, PyboxError)
    assert err.started is True
    assert err.interrupted is True
    assert err.restarted is True
    assert "restarted" in str(err)
    assert err.result.stdout == "partial\n"
    assert [c for c, _ in rig.gateway.calls] == ["interrupt", "restart"]
    assert all(kid == rig.kernel.id for _, kid in rig.gateway.calls)
    assert 0.3 + grace <= elapsed < 0.3 + grace + SLACK
    assert rig.channel.routes == []  # the execution no longer listens


def test_restart_after_timeout_fails_other_pending_executions(make_rig):
    rig = make_rig(interrupt_grace=0.2)
    rig.add_script(*hanging_script(threading.Event()))
    rig.add_script(WaitFor(threading.Event()))  # queued behind the first, never starts
    first = rig.kernel.submit("hang")
    queued = rig.kernel.submit("next")

    with pytest.raises(ExecutionTimeout) as info:
        first.result(timeout=0.2)
    assert info.value.restarted
    with pytest.raises(KernelError, match="restarted"):
        queued.result(timeout=5)


def test_timeout_before_the_code_starts_interrupts_it_when_it_starts(rig):
    go = threading.Event()
    rig.add_script(WaitFor(go), busy(), stdout("too late"), WaitFor(threading.Event()))  # kernel busy elsewhere
    interrupted = threading.Event()
    rig.react_to_interrupt(*interrupted_run(), Set(interrupted))

    execution = rig.kernel.submit("x")
    t0 = time.monotonic()
    with pytest.raises(ExecutionTimeout) as info:
        execution.result(timeout=0.2)
    assert time.monotonic() - t0 < 0.2 + SLACK
    err = info.value
    assert (err.started, err.interrupted, err.restarted) == (False, False, False)
    assert "had not started" in str(err) and err.sent
    # nothing to interrupt yet (the kernel runs other code); the kernel is still there
    assert rig.gateway.calls == [("exists", rig.kernel.id)]

    go.set()  # now it starts: it is interrupted at once, and its route goes at its idle
    assert interrupted.wait(5)
    assert rig.gateway.calls == [("exists", rig.kernel.id), ("interrupt", rig.kernel.id)]
    assert wait_until(lambda: rig.channel.routes == [])
    assert execution.done


def test_no_timeout_waits_for_the_end(rig):
    rig.add_script(*ok_run(stdout("done")))
    assert rig.kernel.run("x", timeout=None).stdout == "done"


# -- kernel death -------------------------------------------------------------------------


def test_kernel_restarting_status_fails_the_execution_quickly(rig):
    started = threading.Event()
    rig.add_script(busy(), stdout("before death\n"), Set(started),
                   Unrouted(status("restarting", parent=None)))
    t0 = time.monotonic()
    with pytest.raises(KernelDied) as info:
        rig.kernel.run("import os; os._exit(1)", timeout=3)
    assert time.monotonic() - t0 < 2.0  # not at the timeout
    assert "restarted" in info.value.reason
    assert info.value.result is not None
    assert info.value.result.stdout == "before death\n"


def test_kernel_dead_status_fails_the_execution(rig):
    rig.add_script(busy(), Unrouted(status("dead", parent=None)))
    with pytest.raises(KernelDied, match="could not be restarted"):
        rig.kernel.run("x", timeout=3)


def test_kernel_death_reason_comes_from_the_gateway(make_rig):
    rig = make_rig(explain_death=lambda: None)
    restarting = status("restarting", parent=None)
    restarting["content"]["pybox_reason"] = "OOMKilled: the kernel ran out of memory"
    rig.add_script(busy(), Unrouted(restarting))
    with pytest.raises(KernelDied) as info:
        rig.kernel.run("x", timeout=3)
    assert info.value.reason.startswith("OOMKilled: the kernel ran out of memory; the gateway restarted it")
    assert "OOMKilled" in str(info.value)


def test_other_unrouted_status_does_not_fail_the_execution(rig):
    rig.add_script(busy(), Unrouted(status("starting", parent=None)), Unrouted(status("busy", parent=None)),
                   stdout("fine"), reply(), idle())
    assert rig.kernel.run("x", timeout=5).stdout == "fine"


def test_channel_closed_is_a_channel_error(rig):
    rig.add_script(busy(), stdout("partial"), Close(OSError("connection reset by peer")))
    with pytest.raises(ChannelError) as info:
        rig.kernel.run("x", timeout=3)
    assert "connection reset by peer" in str(info.value)
    assert rig.kernel.id in str(info.value)


def test_channel_closed_with_dead_container_is_kernel_died(make_rig):
    rig = make_rig(explain_death=lambda: "the sandbox container stopped: exited, exit code 137")
    rig.add_script(busy(), Close(None))
    t0 = time.monotonic()
    with pytest.raises(KernelDied) as info:
        rig.kernel.run("x", timeout=3)
    assert time.monotonic() - t0 < 2.0
    assert "exit code 137" in info.value.reason


def test_kernel_death_gives_each_pending_execution_its_own_result(rig):
    both_submitted = threading.Event()
    rig.add_script(WaitFor(both_submitted), busy(), stdout("first's output\n"),
                   Unrouted(status("restarting", parent=None)))
    rig.add_script(WaitFor(threading.Event()))  # queued, never starts
    first = rig.kernel.submit("crash")
    second = rig.kernel.submit("queued")
    both_submitted.set()

    with pytest.raises(KernelDied) as info1:
        first.result(timeout=5)
    with pytest.raises(KernelDied) as info2:
        second.result(timeout=5)
    assert info1.value.result.stdout == "first's output\n"
    assert info2.value.result.stdout == ""


def test_kernel_death_fails_every_pending_execution(rig):
    both_submitted = threading.Event()
    rig.add_script(WaitFor(both_submitted), busy(), stdout("x"), Unrouted(status("restarting", parent=None)))
    rig.add_script(WaitFor(threading.Event()))
    first = rig.kernel.submit("crash")
    second = rig.kernel.submit("queued")
    both_submitted.set()
    with pytest.raises(KernelDied):
        first.result(timeout=5)
    with pytest.raises(KernelDied):
        second.result(timeout=5)


# -- cancel and interrupt -----------------------------------------------------------------


def test_cancel_from_another_thread_interrupts_the_running_code(rig):
    started = threading.Event()
    rig.add_script(*hanging_script(started, stdout("working\n")))
    rig.react_to_interrupt()
    execution = rig.kernel.submit("while True: pass")

    def cancel_when_started():
        started.wait(5)
        execution.cancel()

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    with pytest.raises(ExecutionError) as info:
        execution.result(timeout=5)
    canceller.join(5)

    assert info.value.ename == "KeyboardInterrupt"
    assert info.value.result.stdout == "working\n"
    assert rig.gateway.calls == [("interrupt", rig.kernel.id)]
    assert execution.done


def test_cancel_of_a_sent_execution_interrupts_it_when_it_starts(rig):
    go = threading.Event()
    rig.add_script(WaitFor(go), busy(), WaitFor(threading.Event()))  # the kernel is busy elsewhere first
    rig.react_to_interrupt()
    execution = rig.kernel.submit("x")

    execution.cancel()
    assert rig.gateway.calls == []  # not started yet: nothing to interrupt
    assert "sent" in repr(execution)
    go.set()
    with pytest.raises(ExecutionError, match="KeyboardInterrupt"):
        execution.result(timeout=5)
    assert rig.gateway.count("interrupt") == 1


def test_cancel_after_the_end_does_nothing(rig):
    rig.add_script(*ok_run())
    execution = rig.kernel.submit("x")
    execution.result(timeout=5)
    execution.cancel()
    assert rig.gateway.calls == []
    assert "done" in repr(execution)


def test_interrupt_and_restart_call_the_gateway(rig):
    rig.kernel.interrupt()
    rig.kernel.restart()
    assert rig.gateway.calls == [("interrupt", rig.kernel.id), ("restart", rig.kernel.id)]


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [b"print(1)", None, 42, ["print(1)"]])
def test_non_str_code_is_invalid(rig, code):
    with pytest.raises(InvalidArgument, match="code must be a str") as info:
        rig.kernel.run(code, timeout=5)
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError):
        rig.kernel.submit(code)
    assert rig.channel.sent == []


@pytest.mark.parametrize("timeout", [0, -1, -0.5, "10", True])
def test_bad_timeout_is_invalid_and_sends_nothing(rig, timeout):
    with pytest.raises(InvalidArgument, match="timeout") as info:
        rig.kernel.run("print(1)", timeout=timeout)
    assert isinstance(info.value, ValueError)
    assert repr(timeout) in str(info.value)
    assert rig.channel.sent == []


def test_closed_kernel_refuses_work(rig):
    rig.kernel.close()
    assert rig.kernel.closed
    assert "closed" in repr(rig.kernel)
    with pytest.raises(SandboxClosed):
        rig.kernel.run("x")
    with pytest.raises(SandboxClosed):
        rig.kernel.submit("x")
    with pytest.raises(SandboxClosed):
        rig.kernel.interrupt()
    with pytest.raises(SandboxClosed):
        rig.kernel.restart()
    assert rig.channel.sent == []


def test_close_twice_is_fine_and_deletes_the_kernel_once(rig):
    rig.kernel.close()
    rig.kernel.close()
    assert rig.gateway.calls == [("delete", rig.kernel.id)]
    assert rig.channel.close_calls == 1
    assert not rig.gateway.closed


def test_close_as_context_manager_and_close_gateway(make_rig):
    rig = make_rig(delete_on_close=False, close_gateway=True)
    with rig.kernel as kernel:
        assert kernel is rig.kernel
        assert "open" in repr(kernel)
    assert rig.kernel.closed
    assert rig.gateway.calls == [("close", "")]  # no delete: this object did not create it


def test_close_ignores_a_gateway_that_is_already_gone(rig):
    rig.gateway.delete_error = ChannelError("connection refused")
    rig.kernel.close()
    assert rig.kernel.closed


def test_close_fails_a_running_execution(rig):
    started = threading.Event()
    rig.add_script(*hanging_script(started))
    execution = rig.kernel.submit("x")
    assert started.wait(5)
    rig.kernel.close()
    with pytest.raises(SandboxClosed, match="closed while the code ran"):
        execution.result(timeout=5)


def test_send_failure_unregisters_the_execution(rig):
    rig.channel.send_error = ChannelError("connection reset")  # the websocket broke as we sent
    with pytest.raises(ChannelError, match="connection reset"):
        rig.kernel.submit("x")
    assert rig.channel.routes == []


def test_user_error_is_not_a_pybox_kernel_error(rig):
    rig.add_script(busy(), error("SystemExit", "3", []), reply("error"), idle())
    with pytest.raises(ExecutionError) as info:
        rig.kernel.run("raise SystemExit(3)", timeout=5)
    assert not isinstance(info.value, KernelError)
    assert isinstance(info.value, PyboxError)


# -- pybox's own queue: one execution in the kernel at a time -------------------------------


def test_cancel_of_a_finished_execution_does_nothing_to_the_next(rig):
    rig.add_script(*ok_run(stdout("a\n")))
    rig.add_script(busy(), Delay(1.0), stdout("b\n"), reply("ok", 2), idle())  # sleeps 1 s, prints
    rig.react_to_interrupt()  # an interrupt would end B with KeyboardInterrupt
    first = rig.kernel.submit("a")
    assert wait_until(lambda: first.done)  # finished in the kernel; nobody read it
    first.cancel()
    result = rig.kernel.run("time.sleep(1); print('b')", timeout=5)
    assert result.stdout == "b\n" and result.error is None
    assert rig.gateway.calls == []
    assert first.result().stdout == "a\n"


def test_a_deadline_passing_in_the_queue_means_the_code_is_never_sent(rig):
    release = threading.Event()
    rig.add_script(busy(), stdout("a"), WaitFor(release), reply(), idle())
    rig.add_script(*ok_run(stdout("c")))
    first = rig.kernel.submit("a")
    queued = rig.kernel.submit("b")
    started = time.monotonic()
    with pytest.raises(ExecutionTimeout) as info:
        queued.result(timeout=0.2)
    assert time.monotonic() - started < 0.2 + SLACK
    err = info.value
    assert (err.sent, err.started, err.interrupted, err.restarted) == (False, False, False, False)
    assert "never sent" in str(err)
    assert rig.gateway.calls == []  # nothing was interrupted: the kernel runs a
    release.set()
    assert first.result(timeout=5).stdout == "a"
    assert rig.kernel.run("c", timeout=5).stdout == "c"
    assert [r["content"]["code"] for r in rig.channel.requests] == ["a", "c"]  # b never went out


def test_cancel_of_an_execution_queued_in_pybox_never_sends_it(rig):
    release = threading.Event()
    rig.add_script(busy(), WaitFor(release), reply(), idle())
    first = rig.kernel.submit("a")
    queued = rig.kernel.submit("b")
    queued.cancel()
    with pytest.raises(ExecutionError, match="never ran"):
        queued.result(timeout=5)
    release.set()
    first.result(timeout=5)
    assert [r["content"]["code"] for r in rig.channel.requests] == ["a"]
    assert rig.gateway.calls == []


def test_the_watchdog_restarts_a_cell_ignoring_sigint_even_if_nobody_waits(make_rig):
    grace = 0.3
    rig = make_rig(interrupt_grace=grace)
    started = threading.Event()
    rig.add_script(*hanging_script(started, stdout("partial\n")))
    execution = rig.kernel.submit("signal.signal(SIGINT, SIG_IGN); sleep()")
    events = execution.events(timeout=0.3)  # arms the deadline; never iterated
    t0 = time.monotonic()
    assert wait_until(lambda: rig.gateway.count("interrupt") == 1, 0.3 + SLACK)
    assert time.monotonic() - t0 >= 0.25
    assert wait_until(lambda: rig.gateway.count("restart") == 1, grace + SLACK)
    assert time.monotonic() - t0 >= 0.3 + grace - 0.05
    assert execution.done
    with pytest.raises(ExecutionTimeout) as info:
        list(events)
    assert info.value.restarted and info.value.interrupted
    del events


def test_an_interrupt_for_a_timeout_holds_the_next_execution_back_until_it_returned(make_rig):
    rig = make_rig(interrupt_grace=2.0)
    rig.add_script(*hanging_script(threading.Event()))
    rig.add_script(*ok_run(stdout("b")))
    in_rest_call, let_rest_return = threading.Event(), threading.Event()

    def slow_interrupt(kernel_id):
        in_rest_call.set()
        # The kernel settles before the REST call returns (the signal is on its way).
        rig.channel.play(interrupted_run(), parent=rig.channel.requests[0]["header"]["msg_id"])
        let_rest_return.wait(5)

    rig.gateway.on_interrupt = slow_interrupt
    first = rig.kernel.submit("a")
    second = rig.kernel.submit("b")
    first.events(timeout=0.2)
    assert in_rest_call.wait(5)
    assert wait_until(lambda: first.done)
    time.sleep(0.2)
    assert len(rig.channel.requests) == 1  # b is not sent while the interrupt is in flight
    let_rest_return.set()
    assert second.result(timeout=5).stdout == "b"
    with pytest.raises(ExecutionTimeout) as info:
        first.result()
    assert info.value.interrupted and not info.value.restarted


def test_a_reply_that_never_comes_after_idle_still_ends_at_the_deadline(rig):
    rig.add_script(busy(), stdout("x"), idle())  # no execute_reply ever
    with pytest.raises(ExecutionTimeout) as info:
        rig.kernel.run("x", timeout=0.3)
    assert info.value.result.stdout == "x"
    assert rig.gateway.calls == []  # the kernel was idle: nothing to interrupt


def test_malformed_content_is_dropped_and_the_execution_ends_normally(rig):
    rig.add_script(busy(), msg("stream", {"name": "stdout", "text": 5}), msg("display_data", {"data": [1]}),
                   status("busy"), msg("execute_input", {"execution_count": "x"}), stdout("fine"),
                   reply("ok", 3, payload=["not a dict", {"source": "page", "data": "not a dict"}]), idle())
    result = rig.kernel.run("x", timeout=5)
    assert result.stdout == "fine" and result.execution_count == 3 and len(result.outputs) == 1


# -- a websocket that died ------------------------------------------------------------------


def test_the_next_call_after_the_websocket_died_reconnects(rig):
    rig.add_script(busy(), stdout("partial"), Close(OSError("connection reset")))
    with pytest.raises(ChannelError, match="connection reset"):
        rig.kernel.run("x", timeout=5)
    rig.add_script(*ok_run(stdout("again")))
    assert rig.kernel.run("y", timeout=5).stdout == "again"
    assert len(rig.channels) == 2 and rig.channels[0].closed and not rig.channels[1].closed
    # the new websocket waited for iopub (a nudge) before the code was sent
    assert [m["header"]["msg_type"] for m in rig.channels[1].sent][-1] == "execute_request"
    assert "kernel_info_request" in [m["header"]["msg_type"] for m in rig.channels[1].sent]


def test_a_reconnect_the_gateway_refuses_keeps_the_kernel_for_a_later_try(rig):
    rig.add_script(busy(), Close(None))
    with pytest.raises(ChannelError):
        rig.kernel.run("x", timeout=5)
    rig.gateway.connect_error = ChannelError("connection refused")
    with pytest.raises(ChannelError, match="reconnecting failed"):
        rig.kernel.run("y", timeout=5)
    assert not rig.kernel.closed
    rig.gateway.connect_error = None
    rig.add_script(*ok_run(stdout("back")))
    assert rig.kernel.run("z", timeout=5).stdout == "back"


def test_a_kernel_the_gateway_no_longer_has_is_closed(rig):
    rig.add_script(busy(), Close(None))
    with pytest.raises(ChannelError):
        rig.kernel.run("x", timeout=5)
    rig.gateway.connect_error = KernelError("the kernel of ws://... does not exist on the gateway (404)")
    with pytest.raises(KernelError, match="is gone"):
        rig.kernel.run("y", timeout=5)
    assert rig.kernel.closed
    with pytest.raises(SandboxClosed):
        rig.kernel.run("z", timeout=5)


def test_code_that_never_starts_in_a_kernel_the_gateway_dropped_ends_with_kernel_error(rig):
    rig.add_script(WaitFor(threading.Event()))  # sent, and nothing ever comes back
    rig.gateway.gone = True
    started = time.monotonic()
    with pytest.raises(KernelError, match="is gone"):
        rig.kernel.run("x", timeout=0.2)
    assert time.monotonic() - started < 0.2 + SLACK
    assert rig.kernel.closed


def test_an_idle_during_the_restart_does_not_end_the_timeout_early(make_rig):
    """A kernel killed by the restart may publish idle for the cell on its way out: the
    execution still ends restarted, after the restart, and nothing is sent meanwhile."""
    rig = make_rig(interrupt_grace=0.2)
    rig.add_script(*hanging_script(threading.Event()))
    restart_returns = threading.Event()

    def dying_kernel_idles(kernel_id):
        rig.channel.play([idle()], parent=rig.channel.requests[0]["header"]["msg_id"])
        time.sleep(0.3)
        restart_returns.set()

    rig.gateway.on_restart = dying_kernel_idles
    with pytest.raises(ExecutionTimeout) as info:
        rig.kernel.run("trap '' INT; sleep 60", timeout=0.2)
    assert restart_returns.is_set()  # not before the restart was done
    assert info.value.restarted
    rig.add_script(*ok_run(stdout("fresh")))
    assert rig.kernel.run("x", timeout=5).stdout == "fresh"
