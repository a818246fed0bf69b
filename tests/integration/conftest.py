"""Integration tests run against a real engine and the built sandbox image.

The backend is PYBOX_TEST_BACKEND (default: docker); the image pybox.DEFAULT_IMAGE
or PYBOX_TEST_IMAGE. `.ci/run` starts the engine and builds the image first.
"""

import os

import pytest

import pybox

BACKEND = os.environ.get("PYBOX_TEST_BACKEND", "docker")
IMAGE = os.environ.get("PYBOX_TEST_IMAGE", pybox.DEFAULT_IMAGE)


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def sandbox():
    """One sandbox shared by a module's tests (each test leaves it usable)."""
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        yield sb


@pytest.fixture
def fresh_sandbox():
    """A sandbox of its own, for tests that break or restart kernels."""
    with pybox.Sandbox(image=IMAGE, backend=BACKEND) as sb:
        yield sb
