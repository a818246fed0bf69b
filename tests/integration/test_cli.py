"""The pybox command against the real engine."""

import os
import subprocess
import sys

from .conftest import BACKEND, IMAGE


def pybox_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pybox", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_backends_lists_the_backend_under_test_as_reachable():
    out = pybox_cli("backends")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith(f"{BACKEND}:") or line.startswith(f"{BACKEND} "))
    assert "reachable" in header and "UNREACHABLE" not in header
    assert "from: pybox" in out.stdout


def test_doctor_is_happy_when_engine_and_image_are_there():
    out = pybox_cli("doctor", "--backend", BACKEND, "--image", IMAGE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pybox is ready" in out.stdout


def test_doctor_explains_a_missing_image():
    out = pybox_cli("doctor", "--backend", BACKEND, "--image", "pybox-doctor-no-such-image:0")
    assert out.returncode == 1
    assert "pybox build" in out.stdout


def test_doctor_explains_an_unreachable_docker_engine(tmp_path):
    out = pybox_cli("doctor", "--backend", "docker", env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert out.returncode == 1
    assert "cannot reach the Docker engine" in out.stdout and "fix:" in out.stdout
