"""`pybox build` with a backend that does not build images: refused at once, with the
backend's advice, before a base image is made (debootstrap) or pulled."""

import pytest
from fakes import FakeBackend, FakeBackendPlugin

import pybox.build
from pybox.cli import main as cli_main
from pybox.errors import UnsupportedOperation


class AdvisingBackend(FakeBackend):
    name = "fakeadvice"
    unsupported_hints = {"build": "load the image into every node instead"}


@pytest.fixture
def no_base(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a base image was chosen for a backend that cannot build")

    monkeypatch.setattr(pybox.build, "_choose_base", refuse)


def test_a_backend_without_build_image_is_refused_before_a_base_is_made(fake_plugins, no_base):
    assert "build_image" not in vars(FakeBackend)
    with pytest.raises(UnsupportedOperation, match="the fake backend cannot build images: build the image with"):
        pybox.build.build_image("pybox-never:1", backend="fake", ca_bundle=None, progress=lambda line: None)


def test_the_backends_advice_is_given(fake_plugins, no_base, capsys):
    fake_plugins.register(FakeBackendPlugin(AdvisingBackend), name="advising-plugin")
    assert cli_main(["build", "--backend", "fakeadvice", "--no-ca-bundle", "-q"]) == 1
    assert "the fakeadvice backend cannot build images: load the image into every node instead" in \
        capsys.readouterr().err
