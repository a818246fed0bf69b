"""pytest fixtures for code that uses pybox: sandboxes and kernels for your own tests.

Installed with pybox as a pytest plugin (entry point ``pytest11``); it costs nothing
until a test asks for one of its fixtures:

- ``pybox_sandbox``: a fresh sandbox for one test, removed afterwards;
- ``pybox_session_sandbox``: one sandbox shared by the whole session;
- ``pybox_kernel``: a fresh kernel (own state) in the session's sandbox, closed after
  the test: much cheaper than a sandbox per test;
- ``pybox_session_kernel``: the session sandbox's default kernel (state shared);
- ``pybox_options``: the :class:`~pybox.SandboxOptions` the fixtures use.

``--pybox-backend NAME`` and ``--pybox-image IMAGE`` pick the engine and image
(defaults: ``PYBOX_BACKEND`` or docker, and ``pybox:latest``). When the engine does not
answer, the backend is not installed or the image is missing, the tests that use these
fixtures are skipped with the reason ``pybox doctor`` would give, instead of failing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pybox.errors import BackendError
from pybox.image_contract import DEFAULT_IMAGE
from pybox.kernel import Kernel
from pybox.options import SandboxOptions
from pybox.plugins import get_plugins, resolve_backend_name
from pybox.sandbox import Sandbox

_READINESS = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pybox", "pybox sandboxes for tests")
    group.addoption("--pybox-backend", default=None, metavar="NAME",
                    help="pybox backend of the pybox_* fixtures (default: PYBOX_BACKEND or docker)")
    group.addoption("--pybox-image", default=None, metavar="IMAGE",
                    help=f"sandbox image of the pybox_* fixtures (default: {DEFAULT_IMAGE})")


def _why_not_ready(options: SandboxOptions) -> str:
    """Empty when the backend's engine answers and has the image; else why not, with
    the fix (what ``pybox doctor`` would say)."""
    try:
        name = resolve_backend_name(options.backend)
        backend = get_plugins().backend(name)()
    except BackendError as exc:
        return f"pybox backend not usable: {exc}"
    try:
        backend.ping()
        if not backend.image_exists(options.image):
            return (f"image {options.image} is missing on the {name} backend: build it with "
                    f"`pybox build --backend {name}`" + ("" if options.image == DEFAULT_IMAGE
                                                         else f" --tag {options.image}"))
    except BackendError as exc:
        return f"pybox backend {name!r} not usable: {exc}"
    finally:
        backend.close()
    return ""


def _require_engine(config: pytest.Config, options: SandboxOptions) -> None:
    if _READINESS not in config.stash:  # asked once per session
        config.stash[_READINESS] = _why_not_ready(options)
    reason = config.stash[_READINESS]
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pybox_options(pytestconfig: pytest.Config) -> SandboxOptions:
    """The options of the sandboxes the pybox_* fixtures make (override this fixture to
    change them: limits, network, env...)."""
    return SandboxOptions(image=pytestconfig.getoption("--pybox-image") or DEFAULT_IMAGE,
                          backend=pytestconfig.getoption("--pybox-backend"))


@pytest.fixture(scope="session")
def pybox_session_sandbox(pytestconfig: pytest.Config, pybox_options: SandboxOptions) -> Iterator[Sandbox]:
    """One sandbox for the whole session."""
    _require_engine(pytestconfig, pybox_options)
    with Sandbox(options=pybox_options) as sandbox:
        yield sandbox


@pytest.fixture
def pybox_sandbox(pytestconfig: pytest.Config, pybox_options: SandboxOptions) -> Iterator[Sandbox]:
    """A fresh sandbox for one test, removed afterwards."""
    _require_engine(pytestconfig, pybox_options)
    with Sandbox(options=pybox_options) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def pybox_session_kernel(pybox_session_sandbox: Sandbox) -> Kernel:
    """The session sandbox's default kernel: state shared by every test using it."""
    return pybox_session_sandbox.default_kernel


@pytest.fixture
def pybox_kernel(pybox_session_sandbox: Sandbox) -> Iterator[Kernel]:
    """A fresh kernel (own state, the session sandbox's filesystem) for one test."""
    with pybox_session_sandbox.kernel() as kernel:
        yield kernel
