"""The pybox command's habits: --json, exit codes, --dry-run, -q/-v, --version."""

from __future__ import annotations

import json
import logging

import pytest
from fakes import FakeBackend, FakeBackendPlugin

import pybox
import pybox.ownership
from pybox.cli import main
from pybox.errors import BackendUnavailable


class DownBackend(FakeBackend):
    name = "down"

    def ping(self):
        raise BackendUnavailable("the engine does not answer", "start it")


class Orphans(FakeBackend):
    """Two containers: one of a dead owner, one of this live process."""

    name = "orphans"
    removed: list[str] = []

    def list_containers(self, labels):
        return ["dead" * 16, "live" * 16]

    def container_labels(self, container_id):
        if container_id.startswith("dead"):
            return {**pybox.ownership.owner_labels(), "pybox.pid": "999999999", "pybox.started": "1"}
        return pybox.ownership.owner_labels()

    def remove(self, container_id):
        type(self).removed.append(container_id)


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"pybox {pybox.__version__}"


def test_backends_json_and_exit_code(fake_plugins, capsys):
    assert main(["backends", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and [b["name"] for b in data["backends"]] == ["fake"]
    assert data["backends"][0]["reachable"] is True and "features" in data["backends"][0]


def test_backends_exits_1_when_no_engine_answers(fake_plugins, capsys, monkeypatch):
    plugins = pybox.plugins.Plugins(load_entry_points=False)
    plugins.register(FakeBackendPlugin(DownBackend), name="down")
    monkeypatch.setattr(pybox.plugins, "_plugins", plugins)
    assert main(["backends"]) == 1
    out = capsys.readouterr().out
    assert "down (default): UNREACHABLE" not in out and "down: UNREACHABLE" in out
    assert "no backend's engine answers" in out
    assert main(["backends", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["backends"][0]["detail"].startswith("the engine does not answer")
    assert main(["backends", "--no-probe"]) == 0


def test_doctor_json(fake_plugins, capsys, monkeypatch):
    monkeypatch.setenv("PYBOX_BACKEND", "fake")
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ready"] and all(check["ok"] for check in data["checks"])
    assert main(["doctor", "--json", "--backend", "missing"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert not data["ready"] and "not installed" in data["checks"][-1]["what"]


def test_cleanup_dry_run_removes_nothing_and_json_lists_orphans(fake_plugins, capsys, monkeypatch):
    fake_plugins.register(FakeBackendPlugin(Orphans), name="orphans-plugin")
    monkeypatch.setattr(Orphans, "removed", [])
    assert main(["cleanup", "--backend", "orphans", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dry_run": True, "orphans": ["dead" * 16]}
    assert Orphans.removed == []
    assert main(["cleanup", "--backend", "orphans"]) == 0
    assert "removed deaddeaddead" in capsys.readouterr().out and Orphans.removed == ["dead" * 16]


def test_verbosity_sets_the_pybox_log_level(fake_plugins, capsys):
    main(["-v", "backends", "--no-probe"])
    assert logging.getLogger("pybox").level == logging.INFO
    main(["-vv", "backends", "--no-probe"])
    assert logging.getLogger("pybox").level == logging.DEBUG
    main(["-q", "backends", "--no-probe"])
    assert logging.getLogger("pybox").level == logging.ERROR
    logging.getLogger("pybox").setLevel(logging.NOTSET)


def test_build_quiet_prints_only_the_tag(fake_plugins, capsys, monkeypatch):
    import pybox.build

    def fake_build(tag, progress, **kwargs):
        progress("Step 1/20 : FROM base")
        return "base"

    monkeypatch.setattr(pybox.build, "build_image", fake_build)
    assert main(["build", "-q", "--tag", "mine:1"]) == 0
    assert capsys.readouterr().out == "mine:1\n"
    assert main(["build", "--tag", "mine:1"]) == 0
    assert "Step 1/20" in capsys.readouterr().out
