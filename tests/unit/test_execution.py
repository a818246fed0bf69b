"""Running code in a Kernel over a scripted channel: outputs, errors, images, routing."""

from __future__ import annotations

import threading

import pytest
from fakes import (
    Delay,
    Set,
    WaitFor,
    busy,
    display,
    error,
    execute_input,
    execute_result,
    idle,
    msg,
    ok_run,
    png_base64,
    reply,
    stderr,
    stdout,
)

from pybox import (
    DisplayData,
    ErrorOutput,
    ExecuteResult,
    ExecutionError,
    Result,
    Stderr,
    Stdout,
)

ANSI_TB = [
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
    "\x1b[0;31mValueError\x1b[0m                                Traceback (most recent call last)",
    "Cell \x1b[0;32mIn[3], line 2\x1b[0m\n"
    "\x1b[1;32m----> 2\x1b[0m \x1b[38;5;28;01mraise\x1b[39;00m ValueError(\x1b[38;5;124m\"bad\"\x1b[39m)",
    "\x1b[0;31mValueError\x1b[0m: bad",
]


# -- the end of an execution is status idle, not execute_reply --------------------------


def test_stream_after_execute_reply_is_collected(rig):
    rig.add_script(
        busy(), execute_input("print('a'); print('b')", 4),
        stdout("a\n"),
        reply("ok", 4),
        Delay(0.05),
        stdout("b\n"),          # ipykernel 7 sends stream output after the reply
        stderr("warn\n"),
        idle(),
    )
    result = rig.kernel.run("print('a'); print('b')", timeout=5)

    assert result.stdout == "a\nb\n"
    assert result.stderr == "warn\n"
    assert result.text == "a\nb"
    assert result.execution_count == 4
    assert result.error is None
    assert result.duration > 0
    assert [type(o) for o in result.outputs] == [Stdout, Stdout, Stderr]


def test_execution_is_not_done_before_idle(rig):
    reply_sent, finish = threading.Event(), threading.Event()
    rig.add_script(busy(), stdout("x"), reply("ok", 1), Set(reply_sent), WaitFor(finish), stdout("y"), idle())
    execution = rig.kernel.submit("x")

    assert reply_sent.wait(5)
    events = execution.events(timeout=5)
    assert next(events) == Stdout("x")
    assert not execution.done
    finish.set()
    assert list(events) == [Stdout("y")]
    assert execution.done


def test_duration_measures_the_execution(rig):
    rig.add_script(busy(), stdout("x"), reply(), idle())
    result = rig.kernel.run("x", timeout=5)
    assert 0 < result.duration < 5


def test_request_is_a_jupyter_execute_request(rig):
    rig.add_script(*ok_run())
    rig.kernel.run("1 + 1", timeout=5)

    (request,) = rig.channel.requests
    assert request["header"]["msg_type"] == "execute_request"
    assert request["content"]["code"] == "1 + 1"
    assert request["channel"] == "shell"
    # the execution's route is removed when it ends
    assert request["header"]["msg_id"] in rig.channel.unregistered
    assert rig.channel.routes == []


# -- routing: each execution sees exactly its own messages --------------------------------


def test_two_kernels_interleaved_each_get_their_own_outputs(make_rig):
    first, second = make_rig(), make_rig()
    a1_sent, b1_sent = threading.Event(), threading.Event()
    first.add_script(busy(), stdout("A1 "), Set(a1_sent), WaitFor(b1_sent), stdout("A2 "),
                     execute_result({"text/plain": "'A'"}), reply("ok", 1), idle())
    second.add_script(WaitFor(a1_sent), busy(), stdout("B1 "), Set(b1_sent), stdout("B2 "),
                      execute_result({"text/plain": "'B'"}), reply("ok", 7, ), idle())

    results: dict[str, Result] = {}

    def run(name, rig):
        results[name] = rig.kernel.run(f"code {name}", timeout=5)

    threads = [threading.Thread(target=run, args=(n, r)) for n, r in (("a", first), ("b", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert results["a"].stdout == "A1 A2 "
    assert results["a"].text == "A1 A2 \n'A'"
    assert results["a"].execution_count == 1
    assert results["b"].stdout == "B1 B2 "
    assert results["b"].text == "B1 B2 \n'B'"
    assert results["b"].execution_count == 7


def test_two_executions_in_one_kernel_are_sent_one_after_the_other(rig):
    a_running, release_a = threading.Event(), threading.Event()
    rig.add_script(busy(), stdout("a1 "), Set(a_running), WaitFor(release_a), stderr("a-err"),
                   stdout("a2 "), reply("ok", 1), idle())
    rig.add_script(busy(), stdout("b1 "), stdout("b2 "), reply("ok", 2), idle())

    first = rig.kernel.submit("a")
    second = rig.kernel.submit("b")
    assert first.msg_id != second.msg_id
    assert a_running.wait(5)
    assert [r["content"]["code"] for r in rig.channel.requests] == ["a"]  # b waits in pybox
    assert "queued" in repr(second)
    release_a.set()

    result_b = second.result(timeout=5)
    result_a = first.result(timeout=5)
    assert [r["content"]["code"] for r in rig.channel.requests] == ["a", "b"]
    assert result_a.stdout == "a1 a2 "
    assert result_a.stderr == "a-err"
    assert result_a.execution_count == 1
    assert result_b.stdout == "b1 b2 "
    assert result_b.stderr == ""
    assert result_b.execution_count == 2


def test_a_reply_after_idle_reaches_its_execution_while_the_next_one_runs(rig):
    b_started = threading.Event()
    rig.add_script(busy(), stdout("a"), idle(), WaitFor(b_started), reply("ok", 1))  # reply last
    rig.add_script(busy(), Set(b_started), stdout("b"), reply("ok", 2), idle())
    first = rig.kernel.submit("a")
    second = rig.kernel.submit("b")
    assert first.result(timeout=5).execution_count == 1
    assert second.result(timeout=5).stdout == "b"
    assert rig.channel.routes == []


def test_messages_for_other_or_no_parent_are_ignored(rig):
    rig.add_script(
        busy(),
        stdout("noise from someone else\n", parent="another-client-msg-id"),
        idle(parent="another-client-msg-id"),          # must not end our execution
        reply("error", 9, parent="another-client-msg-id", ename="X", evalue="", traceback=[]),
        stdout("ours\n"),
        stdout("no parent\n", parent=None),
        msg("comm_msg", {"data": {}}),                  # bookkeeping message: no output
        busy(parent="yet-another"),
        reply("ok", 3),
        idle(),
    )
    result = rig.kernel.run("print('ours')", timeout=5)

    assert result.stdout == "ours\n"
    assert result.execution_count == 3
    assert result.error is None
    assert len(result.outputs) == 1
    # the channel handed the strangers to the kernel, which ignored them
    assert len(rig.channel.unrouted) == 5


# -- errors -------------------------------------------------------------------------------


def test_iopub_error_raises_execution_error_without_ansi(rig):
    rig.add_script(
        busy(), stdout("before\n"),
        error("ValueError", "bad", ANSI_TB),
        reply("error", 3, ename="ValueError", evalue="bad", traceback=ANSI_TB),
        idle(),
    )
    with pytest.raises(ExecutionError) as info:
        rig.kernel.run("print('before'); raise ValueError('bad')", timeout=5)

    err = info.value
    assert err.ename == "ValueError"
    assert err.evalue == "bad"
    assert str(err) == "ValueError: bad"
    assert "\x1b" not in err.traceback
    assert "----> 2 raise ValueError(\"bad\")" in err.traceback
    assert err.traceback.endswith("ValueError: bad")
    assert err.result is not None
    assert err.result.stdout == "before\n"
    assert err.result.execution_count == 3


def test_check_false_returns_the_error_in_the_result(rig):
    rig.add_script(busy(), stdout("partial"), error("ZeroDivisionError", "division by zero", ANSI_TB[:1]),
                   reply("error", 2), idle())
    result = rig.kernel.run("1/0", timeout=5, check=False)

    assert isinstance(result.error, ExecutionError)
    assert result.error.ename == "ZeroDivisionError"
    assert result.error.evalue == "division by zero"
    assert result.error.result is result
    assert result.stdout == "partial"
    assert isinstance(result.outputs[-1], ErrorOutput)
    assert "error=ZeroDivisionError" in repr(result)


def test_error_reply_without_iopub_error_is_an_error(rig):
    rig.add_script(busy(), reply("error", 5, ename="RuntimeError", evalue="no iopub", traceback=ANSI_TB), idle())
    with pytest.raises(ExecutionError) as info:
        rig.kernel.run("x", timeout=5)
    assert info.value.ename == "RuntimeError"
    assert info.value.evalue == "no iopub"
    assert "\x1b" not in info.value.traceback


def test_error_reply_without_iopub_error_with_check_false(rig):
    rig.add_script(busy(), reply("error", 5, ename="RuntimeError", evalue="no iopub", traceback=[]), idle())
    result = rig.kernel.run("x", timeout=5, check=False)
    assert result.error is not None and result.error.ename == "RuntimeError"


def test_events_and_result_do_not_raise_twice_for_the_same_error(rig):
    rig.add_script(busy(), error("KeyError", "'k'", []), reply("error", 1), idle())
    execution = rig.kernel.submit("d['k']")
    outputs = list(execution.events(timeout=5))   # a user error is an output here, not raised
    assert outputs == [ErrorOutput("KeyError", "'k'", "")]
    with pytest.raises(ExecutionError):
        execution.result()
    assert execution.result(check=False).error.ename == "KeyError"


# -- rich outputs -------------------------------------------------------------------------


def test_display_data_png_becomes_a_pil_image(rig):
    png = png_base64((7, 5))
    rig.add_script(*ok_run(
        stdout("plotting\n"),
        display({"image/png": png, "text/plain": "<Figure size 7x5 with 1 Axes>"}),
        execute_result({"text/plain": "42"}, 1),
    ))
    result = rig.kernel.run("plot()", timeout=5)

    assert len(result.images) == 1
    assert result.images[0].size == (7, 5)
    assert result.images[0].format == "PNG"
    assert result.images[0].getpixel((0, 0)) == (255, 0, 0)
    # the figure's text/plain is not text; the result's is
    assert "Figure" not in result.text
    assert result.text == "plotting\n42"
    assert [d.get("text/plain") for d in result.data] == ["<Figure size 7x5 with 1 Axes>", "42"]
    assert "images=1" in repr(result)


def test_execute_result_and_text_display_go_into_text(rig):
    rig.add_script(*ok_run(
        stdout("no newline"),
        display({"text/plain": "shown"}),
        execute_result({"text/plain": "'value'", "text/html": "<b>value</b>"}, 1),
    ))
    result = rig.kernel.run("x", timeout=5)
    assert result.text == "no newline\nshown\n'value'"
    assert result.stdout == "no newline"


def test_events_yield_typed_outputs_in_order(rig):
    png = png_base64((3, 2))
    rig.add_script(*ok_run(
        stdout("out\n"),
        stderr("err\n"),
        display({"image/png": png, "text/plain": "<img>"}),
        execute_result({"text/plain": "1"}, 1),
        error("NameError", "name 'y' is not defined", ANSI_TB),
    ))
    events = list(rig.kernel.submit("x").events(timeout=5))

    assert [type(e) for e in events] == [Stdout, Stderr, DisplayData, ExecuteResult, ErrorOutput]
    assert events[0].text == "out\n"
    assert events[1].text == "err\n"
    assert events[2].has_image and events[2].image.size == (3, 2)
    assert events[3].text == "1" and events[3].execution_count == 1
    assert events[4].ename == "NameError" and "\x1b" not in events[4].traceback


def test_stream_yields_chunks_incrementally(rig):
    first_seen = threading.Event()
    rig.add_script(busy(), stdout("first\n"), WaitFor(first_seen), stderr("second\n"),
                   display({"image/png": png_base64(), "text/plain": "<img>"}),
                   display({"text/plain": "table"}),
                   execute_result({"text/plain": "3"}, 1), reply("ok", 1), idle())
    execution = rig.kernel.submit("x")
    chunks = execution.stream(timeout=5)

    # The script is blocked until we have the first chunk: it cannot come from the end.
    assert next(chunks) == "first\n"
    assert not execution.done
    first_seen.set()
    assert list(chunks) == ["second\n", "table\n", "3\n"]
    assert execution.done


def test_outputs_are_replayed_for_later_consumers(rig):
    rig.add_script(*ok_run(stdout("a"), stdout("b")))
    execution = rig.kernel.submit("x")
    assert "".join(execution.stream(timeout=5)) == "ab"
    assert list(execution.events()) == [Stdout("a"), Stdout("b")]
    assert execution.result().stdout == "ab"
