"""The pytest plugin users test their own agents with: options, and skips that say why."""

pytest_plugins = ["pytester"]

USES_FIXTURES = """
def test_sandbox(pybox_sandbox):
    raise AssertionError("must not run without an engine")

def test_kernel(pybox_kernel):
    raise AssertionError("must not run without an engine")

def test_unrelated():
    pass
"""


def test_the_options_are_offered(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--pybox-backend=NAME*", "*--pybox-image=IMAGE*"])


def test_an_unknown_backend_skips_with_the_reason(pytester):
    pytester.makepyfile(USES_FIXTURES)
    result = pytester.runpytest_subprocess("-rs", "--pybox-backend=no-such-backend")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*no pybox backend named 'no-such-backend'*"])


def test_an_engine_that_does_not_answer_skips_with_doctors_hint(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("CONTAINER_HOST", f"unix://{tmp_path}/no-podman-here.sock")
    pytester.makepyfile(USES_FIXTURES)
    result = pytester.runpytest_subprocess("-rs", "--pybox-backend=podman")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*Is the Podman service running?*"])
