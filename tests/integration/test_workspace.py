"""freeact's execution environment: workspace, per-key executor, log, .env."""

import json

import pytest

import pybox
from pybox.freeact import execution_environment

from .conftest import BACKEND, IMAGE

pytestmark = pytest.mark.skipif(BACKEND in ("docker-remote", "swarm", "kubernetes"),
                                reason="host bind mounts need a local engine")


def test_execution_environment(tmp_path):
    (tmp_path / ".env").write_text('API_KEY="from dotenv"\n')
    with execution_environment(tmp_path / "ws", key="alice", image=IMAGE, backend=BACKEND,
                                     env_file=tmp_path / ".env", env={"EXTRA": "1"}) as (sandbox, kernel, log):
        assert isinstance(sandbox, pybox.Sandbox)
        result = kernel.run("import os\nprint(os.getcwd(), os.environ['API_KEY'], os.environ['EXTRA'])")
        assert result.text == "/app/skills/private/alice from dotenv 1"

        kernel.run("open('/app/skills/shared/helpers.py', 'w').write('def twice(x):\\n    return 2 * x\\n')")
        assert kernel.run("import helpers\nprint(helpers.twice(21))").text == "42"
        kernel.run("open('mine.py', 'w').write('NAME = 1\\n')")  # the private skills dir is the cwd
        assert (tmp_path / "ws" / "skills" / "private" / "alice" / "mine.py").read_text() == "NAME = 1\n"
        kernel.run("open('/app/skills/shared/helpers.py', 'w').write('def twice(x):\\n    return 3 * x\\n')")
        assert kernel.run("print(helpers.twice(2))").text == "6"  # autoreload picks up edits

        plot = kernel.run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        assert len(plot.image_paths) == 1
        assert plot.image_paths[0].parent == tmp_path / "ws" / "images" / "alice"
        assert plot.image_paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        with pytest.raises(pybox.ExecutionError):
            kernel.run("1 / 0")

    records = [json.loads(line) for line in (tmp_path / "ws" / "logs" / "alice.jsonl").read_text().splitlines()]
    assert records[0]["code"].startswith("import os") and records[0]["error"] is None
    assert records[0]["outputs"]["text"] == "/app/skills/private/alice from dotenv 1"
    assert records[-1]["error"]["ename"] == "ZeroDivisionError"
    assert all(r["duration"] >= 0 and r["key"] == "alice" for r in records)
    assert any(r["outputs"]["images"] for r in records)


def test_a_keys_sandbox_sees_only_its_own_private_skills_and_no_dotenv_unless_asked(tmp_path, monkeypatch):
    from pybox.freeact import Workspace

    space = Workspace(tmp_path / "ws")
    space.create("bob")
    (space.private_skills_path("bob") / "bob_secret.py").write_text("TOKEN = 'bob'\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("LEAKED=yes\n")  # in the cwd, not named: not passed
    with execution_environment(space, key="alice", image=IMAGE, backend=BACKEND) as (sandbox, kernel, log):
        listing = kernel.run("import os\nprint(sorted(os.listdir('/app/skills/private')))").text
        assert listing == "['alice']"
        assert kernel.run("import os\nprint(os.environ.get('LEAKED'))").text == "None"
        kernel.run("open('note.py', 'w').write('x = 1')")  # its own private dir is writable
    assert (space.private_skills_path("alice") / "note.py").exists()
    for directory in (space.shared_skills_path, space.private_skills_path("alice")):
        assert not directory.stat().st_mode & 0o002, f"{directory} is world-writable"
