"""Judging a container's owner: only a provably gone owner makes an orphan."""

from __future__ import annotations

import time

import pytest

from pybox import ownership
from pybox.ownership import ALIVE, GONE, UNKNOWN, creation_labels, judge_owner, owner_labels, reap_orphans


def labels(**changes: str) -> dict[str, str]:
    found = {**creation_labels()}
    found.update({f"pybox.{k}": v for k, v in changes.items()})
    return found


def test_this_process_is_alive():
    assert judge_owner(owner_labels()) == ALIVE
    assert {"pybox.machine", "pybox.boot", "pybox.pidns", "pybox.pid", "pybox.started"} <= set(owner_labels())
    assert creation_labels()["pybox.created"].isdigit()


def test_a_gone_pid_or_a_reused_one_is_gone():
    assert judge_owner(labels(pid="999999999")) == GONE
    assert judge_owner(labels(pid="1")) == GONE  # alive (init), but another process than recorded


def test_a_previous_boot_is_gone():
    assert judge_owner(labels(boot="00000000-0000-0000-0000-000000000000", pid="1")) == GONE


@pytest.mark.parametrize("changes", [
    {"pidns": "pid:[1]"},                         # another pid namespace (a container, unshare -p)
    {"host": "another-machine"},                  # another machine sharing a remote engine
    {"machine": "0" * 32},                        # same host name, another machine
    {"boot": ""},                                 # labels too thin to judge
])
def test_owners_that_cannot_be_judged_here_are_unknown(changes):
    assert judge_owner(labels(**changes, pid="999999999")) == UNKNOWN


def test_labels_of_an_older_pybox_are_unknown():
    old = {k: v for k, v in labels(pid="999999999").items() if k not in ("pybox.machine", "pybox.boot",
                                                                          "pybox.pidns")}
    assert judge_owner(old) == UNKNOWN


class Engine:
    def __init__(self, containers):
        self.containers = containers
        self.removed: list[str] = []

    def list_containers(self, selector):
        return [c for c, found in self.containers.items() if all(found.get(k) == v for k, v in selector.items())]

    def container_labels(self, container_id):
        return self.containers[container_id]

    def remove(self, container_id):
        self.removed.append(container_id)


def test_the_reaper_removes_only_provable_orphans_and_filters_reach_the_unknown_ones():
    old = str(int(time.time()) - 7200)
    engine = Engine({
        "alive": labels(),
        "gone": labels(pid="999999999"),
        "other-ns-old": labels(pidns="pid:[1]", pid="1", created=old),
        "other-ns-new": labels(pidns="pid:[1]", pid="1"),
        "other-host": {**labels(host="elsewhere", pid="7", created=old)},
    })
    assert reap_orphans(engine) == ["gone"]  # type: ignore[arg-type]
    assert reap_orphans(engine, dry_run=True, older_than=3600) == ["gone", "other-ns-old", "other-host"]  # type: ignore[arg-type]
    assert reap_orphans(engine, dry_run=True, owner="elsewhere") == ["gone", "other-host"]  # type: ignore[arg-type]
    assert reap_orphans(engine, dry_run=True, owner="elsewhere:8") == ["gone"]  # type: ignore[arg-type]
    assert "alive" not in reap_orphans(engine, dry_run=True, older_than=0, owner=ownership.SESSION)  # type: ignore[arg-type]
