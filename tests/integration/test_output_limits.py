"""Bounded output: head and tail kept with a marker; 1 GB streamed in bounded memory."""

import os

import pybox

from .conftest import BACKEND, IMAGE


def rss_mb():
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_max_output_keeps_head_and_tail_with_a_marker(sandbox):
    result = sandbox.run("for i in range(100000):\n    print(i)", max_output=10_000)
    assert result.stdout.startswith("0\n1\n2\n")
    assert result.stdout.endswith("99998\n99999\n")
    assert "characters of stdout omitted (max_output=10,000)" in result.stdout
    assert result.truncated == 588890 - 10_000
    assert len(result.stdout) < 10_200
    assert result.text.endswith("99999")


def test_sandbox_wide_max_output_and_stderr_marker():
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, max_output=1000) as sb:
        result = sb.run("import sys\nsys.stderr.write('e' * 5000)\nprint('done')")
        assert "characters of stderr omitted" in result.stderr
        assert result.stdout.endswith("done\n")
        assert sb.run("print('small')").truncated == 0


def test_streaming_a_gigabyte_keeps_client_memory_bounded(sandbox):
    baseline = peak = rss_mb()
    streamed = 0
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)"
    execution = sandbox.submit(code, max_output=1_000_000)
    for chunk in execution.stream(timeout=600):
        streamed += len(chunk)
        peak = max(peak, rss_mb())
    result = execution.result()
    assert streamed == 1 << 30  # every byte reached the streaming consumer
    assert len(result.stdout) < 1_001_000 and result.truncated == (1 << 30) - 1_000_000
    assert peak - baseline < 150, f"client memory grew by {peak - baseline:.0f} MB while streaming 1 GB"
