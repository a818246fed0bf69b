"""pybox build --dependencies: the user's packages in the image."""

import os
import subprocess
import sys

import pytest

import pybox

from .conftest import BACKEND

pytestmark = [
    pytest.mark.skipif(BACKEND == "docker-remote", reason="a full build on the remote engine takes minutes"),
    pytest.mark.skipif(BACKEND == "kubernetes", reason="the kubernetes backend does not build images (build with a "
                                                       "local engine, then load or push the image)"),
]

TAG = "pybox-deps-test:latest"


def test_build_with_dependencies(tmp_path):
    if BACKEND == "swarm":
        pytest.skip("the swarm backend does not build images (test_swarm checks it refuses at once)")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# extra packages\ntabulate==0.9.0\n")
    out = subprocess.run([sys.executable, "-m", "pybox", "build", "--backend", BACKEND, "--tag", TAG,
                          "--dependencies", str(requirements)], capture_output=True, text=True, timeout=900,
                         env={**os.environ})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{TAG} built" in out.stdout  # progress is shown
    with pybox.Sandbox(image=TAG, backend=BACKEND) as sb:
        assert sb.run("import tabulate\nprint(tabulate.__version__)").text == "0.9.0"


def test_build_refuses_a_missing_dependencies_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pybox", "build", "--backend", BACKEND, "--tag", TAG,
                          "--dependencies", str(tmp_path / "missing.txt")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert "missing.txt" in out.stderr and "not a file" in out.stderr
