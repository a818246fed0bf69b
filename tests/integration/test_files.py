"""Upload and download through the engine's archive API."""

import os

import pytest

import pybox


def test_upload_and_download_round_trip(sandbox, tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("hello")
    payload = os.urandom(3_000_000)
    (source / "sub" / "b.bin").write_bytes(payload)

    sandbox.upload(source, "uploaded/dir")
    listing = sandbox.run("import os\nprint(sorted(os.listdir('/app/uploaded/dir')), os.stat('uploaded').st_uid)")
    assert listing.text == "['a.txt', 'sub'] 1000"
    assert sandbox.run("print(open('uploaded/dir/a.txt').read())").text == "hello"

    sandbox.download("uploaded/dir", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == payload

    sandbox.run("open('made-here.txt', 'w').write('from the sandbox')")
    sandbox.download("/app/made-here.txt", tmp_path / "made.txt")
    assert (tmp_path / "made.txt").read_text() == "from the sandbox"


def test_missing_sandbox_path_and_escaping_paths_are_refused(sandbox, tmp_path):
    with pytest.raises(pybox.BackendError, match="no-such-file"):
        sandbox.download("no-such-file", tmp_path / "x")
    with pytest.raises(pybox.InvalidArgument, match="outside /app"):
        sandbox.upload(tmp_path, "../etc")
    with pytest.raises(pybox.InvalidArgument, match="does not exist"):
        sandbox.upload(tmp_path / "missing", "x")
