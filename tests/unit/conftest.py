"""Fixtures of the unit tests; the fakes themselves are in fakes.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackend, FakeBackendPlugin, FakeGateway, Rig, ScriptedChannel

import pybox.plugins
from pybox.kernel import Kernel
from pybox.plugins import Plugins

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # A hang in a threaded unit test should fail fast, not after the global 600 s.
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(20))


@pytest.fixture
def make_rig():
    """Factory of Rigs; every kernel it made is closed at the end of the test."""
    rigs: list[Rig] = []

    def make(*, interrupt_grace: float = 0.3, explain_death=None, delete_on_close: bool = True,
             close_gateway: bool = False, kernel_id: str | None = None) -> Rig:
        gateway = FakeGateway()
        channels: list[ScriptedChannel] = []

        def factory(*args: Any, **kwargs: Any) -> ScriptedChannel:
            if gateway.connect_error is not None:
                raise gateway.connect_error
            channel = ScriptedChannel(*args, **kwargs)
            if channels:
                channel._scripts = channels[0]._scripts  # one script queue across reconnections
            channels.append(channel)
            return channel

        kernel = Kernel(gateway, kernel_id or uuid.uuid4().hex, interrupt_grace=interrupt_grace,
                        explain_death=explain_death, delete_on_close=delete_on_close,
                        close_gateway=close_gateway, channel_factory=factory)
        rig = Rig(kernel, channels[0], gateway, channels)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.kernel.close()


@pytest.fixture
def rig(make_rig) -> Rig:
    return make_rig()


@pytest.fixture
def fake_plugins(monkeypatch) -> Plugins:
    """The process-wide plugins replaced by ones holding only the 'fake' backend
    (no entry points loaded); FakeBackend's recorded instances start empty."""
    plugins = Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(), name="fake-plugin")
    monkeypatch.setattr(pybox.plugins, "_plugins", plugins)
    monkeypatch.setattr(FakeBackend, "instances", [])
    monkeypatch.delenv("PYBOX_BACKEND", raising=False)
    return plugins
