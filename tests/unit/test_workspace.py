"""Workspace layout, .env parsing and executor keys (no engine)."""

import pytest

from pybox import InvalidArgument
from pybox.freeact import Workspace, load_env_file, startup_code_for


def test_env_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "# comment\n\nPLAIN=value\nexport EXPORTED=yes\nSINGLE='lit $x #not'\n"
        'DOUBLE="two\\nlines"\nTRAILING=abc # comment\nEMPTY=\n'
    )
    assert load_env_file(env) == {
        "PLAIN": "value", "EXPORTED": "yes", "SINGLE": "lit $x #not", "DOUBLE": "two\nlines",
        "TRAILING": "abc", "EMPTY": "",
    }


def test_env_file_rejects_garbage(tmp_path):
    env = tmp_path / ".env"
    env.write_text("NOT A LINE\n")
    with pytest.raises(InvalidArgument, match=":1:"):
        load_env_file(env)


def test_workspace_layout(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.create("bob")
    assert ws.private_skills_path("bob") == tmp_path / "ws" / "skills" / "private" / "bob"
    assert ws.images_path("bob").is_dir() and ws.shared_skills_path.is_dir()
    assert set(ws.binds("bob").values()) == {"/app/skills/shared", "/app/skills/private/bob"}
    assert str(ws.private_skills_path("bob")) in ws.binds("bob")
    assert not (tmp_path / "ws" / "skills" / "private").stat().st_mode & 0o002  # never world-writable
    assert not ws.private_skills_path("bob").stat().st_mode & 0o002


@pytest.mark.parametrize("key", ["", "..", "a/b", "x" * 65, "../etc", None])
def test_bad_keys(tmp_path, key):
    with pytest.raises(InvalidArgument, match="key"):
        Workspace(tmp_path).private_skills_path(key)


def test_startup_code_compiles():
    code = startup_code_for("alice").replace("%load_ext autoreload\n%autoreload 2\n", "")
    compile(code, "<startup>", "exec")
