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


def test_hostile_archives_from_a_real_sandbox_are_refused_and_hard_links_kept(sandbox, tmp_path):
    # Made by code in the sandbox, shipped by the engine's own archive API.
    sandbox.run("import os\nos.makedirs('attack/d1', exist_ok=True)\n"
                "open('attack/a.txt', 'w').write('same')\n"
                "os.link('attack/a.txt', 'attack/hard.txt')\n"
                "os.symlink('a.txt', 'attack/ok-link')")
    sandbox.download("attack", tmp_path / "fine")
    assert (tmp_path / "fine" / "hard.txt").read_text() == "same"
    assert os.stat(tmp_path / "fine" / "hard.txt").st_ino == os.stat(tmp_path / "fine" / "a.txt").st_ino
    assert os.readlink(tmp_path / "fine" / "ok-link") == "a.txt"

    (tmp_path / "outside.txt").write_text("untouched")
    sandbox.run("import os\nos.symlink('..', 'attack/d1/up')\n"
                "os.symlink('d1/up/d1/up/../../outside.txt', 'attack/evil')")
    with pytest.raises(pybox.UnsafeArchive):
        sandbox.download("attack", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    assert (tmp_path / "outside.txt").read_text() == "untouched"
    assert sorted(os.listdir(tmp_path)) == ["fine", "outside.txt"]


def test_downloads_have_a_size_cap(sandbox, tmp_path):
    sandbox.run("open('big.bin', 'wb').write(b'x' * 3_000_000)")
    with pytest.raises(pybox.DownloadTooLarge, match="cap of 1000000 bytes"):
        sandbox.download("big.bin", tmp_path / "big.bin", max_bytes=1_000_000)
    assert not (tmp_path / "big.bin").exists()
    sandbox.download("big.bin", tmp_path / "big.bin")
    assert (tmp_path / "big.bin").stat().st_size == 3_000_000
