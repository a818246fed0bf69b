"""Result with max_output: head and tail kept, marker between, memory bounded."""

import pytest

from pybox import DisplayData, InvalidArgument, Result, Stderr, Stdout
from pybox.kernel.kernel import check_max_output


def test_unlimited_keeps_everything():
    result = Result()
    for i in range(1000):
        result.add(Stdout(f"{i}\n"))
    assert result.truncated == 0
    assert result.stdout == "".join(f"{i}\n" for i in range(1000))


def test_head_and_tail_are_kept_with_a_marker():
    result = Result(max_output=100)
    for i in range(1000):
        result.add(Stdout(f"{i:04d}\n"))  # 5 characters each, 5000 in all
    text = result.stdout
    assert text.startswith("0000\n0001\n")
    assert text.endswith("0998\n0999\n")
    assert "[... pybox: 4,900 characters of stdout omitted (max_output=100) ...]" in text
    assert result.truncated == 4900
    assert len(text) < 200


def test_one_big_output_is_split_between_head_and_tail():
    result = Result(max_output=10)
    result.add(Stdout("abcdefghijklmnopqrstuvwxyz"))
    assert result.stdout.startswith("abcde") and result.stdout.endswith("vwxyz")
    assert result.truncated == 16


def test_streams_get_their_own_markers_and_displays_can_be_dropped():
    result = Result(max_output=100)
    result.add(Stdout("o" * 50))
    result.add(Stderr("e" * 500))
    result.add(DisplayData({"text/plain": "d" * 500}))
    result.add(Stdout("end\n"))
    assert "characters of stderr omitted" in result.stderr
    assert "characters of display data omitted" in result.stdout
    assert result.stdout.endswith("end\n")
    assert result.truncated == 500 + 500  # stderr and the display (dropped whole: no partial bundles)


def test_since_returns_outputs_added_after_a_sequence_number():
    result = Result(max_output=1000)
    first = result.add(Stdout("a"))
    result.add(Stdout("b"))
    assert [o.text for o in result.since(first + 1)] == ["b"]
    assert result.next_seq == 2


@pytest.mark.parametrize("value", [0, 99, -1, True, "100", 1.5])
def test_bad_limits(value):
    with pytest.raises(InvalidArgument, match="max_output"):
        check_max_output(value)
