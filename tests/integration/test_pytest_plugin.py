"""The pytest plugin against a real engine: a user's test file using the fixtures."""

pytest_plugins = ["pytester"]

from .conftest import BACKEND, IMAGE  # noqa: E402


def test_the_fixtures_give_working_sandboxes_and_kernels(pytester):
    pytester.makepyfile("""
        def test_sandbox(pybox_sandbox):
            assert pybox_sandbox.run("print(6 * 7)").text == "42"

        def test_kernels_have_their_own_state(pybox_kernel, pybox_session_sandbox):
            pybox_kernel.run("x = 1")
            assert pybox_session_sandbox.run("print('x' in dir())").text == "False"

        def test_session_kernel_keeps_state_across_tests_a(pybox_session_kernel):
            pybox_session_kernel.run("kept = 5")

        def test_session_kernel_keeps_state_across_tests_b(pybox_session_kernel):
            assert pybox_session_kernel.run("print(kept)").text == "5"
    """)
    result = pytester.runpytest_subprocess(f"--pybox-backend={BACKEND}", f"--pybox-image={IMAGE}", "-p",
                                           "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_a_missing_image_skips_with_the_build_command(pytester):
    pytester.makepyfile("""
        def test_sandbox(pybox_sandbox):
            raise AssertionError("must not run")
    """)
    result = pytester.runpytest_subprocess("-rs", f"--pybox-backend={BACKEND}", "--pybox-image=pybox-no-such:0")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*image pybox-no-such:0 is missing*pybox build --backend*"])
