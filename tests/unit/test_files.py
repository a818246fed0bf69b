"""Tar streaming for upload/download: round trips and refusal of unsafe archives."""

import io
import os
import tarfile

import pytest

from pybox.errors import UnsafeArchive
from pybox.files import extract_stream, upload_stream


def tar_bytes(*members):
    """Members: (TarInfo, data or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def chunks(data, size=7000):
    return [data[i : i + size] for i in range(0, len(data), size)]


def file_info(name, mode=0o644):
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def link_info(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_upload_stream_places_a_directory_at_the_path_under_app(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.txt").write_text("A")
    (tmp_path / "src" / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    data = b"".join(upload_stream(tmp_path / "src", "in/dir"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["in"].isdir()
        assert members["in/dir/a.txt"].uid == 1000
        assert tar.extractfile("in/dir/sub/b.bin").read() == (tmp_path / "src" / "sub" / "b.bin").read_bytes()


def test_upload_stream_is_streamed_in_chunks(tmp_path):
    (tmp_path / "big").write_bytes(os.urandom(5 * 1024 * 1024))
    sizes = [len(c) for c in upload_stream(tmp_path / "big", "big")]
    assert len(sizes) > 3 and max(sizes) <= 1 << 20


def test_download_of_a_directory_replaces_the_root_name(tmp_path):
    data = tar_bytes((file_info("outdir/x/y.txt"), b"yy"), (file_info("outdir/z.txt"), b"zz"))
    extract_stream(chunks(data), "/app/outdir", tmp_path / "got")
    assert (tmp_path / "got" / "x" / "y.txt").read_text() == "yy"
    assert (tmp_path / "got" / "z.txt").read_text() == "zz"


def test_download_of_a_file_onto_a_directory_goes_inside(tmp_path):
    extract_stream(chunks(tar_bytes((file_info("f.txt"), b"F"))), "/app/f.txt", tmp_path)
    assert (tmp_path / "f.txt").read_text() == "F"
    extract_stream(chunks(tar_bytes((file_info("f.txt"), b"G"))), "/app/f.txt", tmp_path / "renamed.txt")
    assert (tmp_path / "renamed.txt").read_text() == "G"


@pytest.mark.parametrize(
    "member",
    [
        (file_info("/etc/evil"), b"x"),
        (file_info("d/../../evil"), b"x"),
        (file_info("other/evil"), b"x"),
        (link_info("d/link", "/etc/passwd"), None),
        (link_info("d/link", "../../outside"), None),
        (link_info("d/hard", "/etc/passwd", tarfile.LNKTYPE), None),
    ],
    ids=["absolute", "dotdot", "not-under-root", "symlink-absolute", "symlink-escaping", "hardlink"],
)
def test_unsafe_members_are_refused(tmp_path, member):
    data = tar_bytes((file_info("d/ok"), b"ok"), member)
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchive):
        extract_stream(chunks(data), "/app/d", target)
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "outside").exists()


def test_a_link_inside_the_target_is_kept(tmp_path):
    data = tar_bytes((file_info("d/real.txt"), b"R"), (link_info("d/alias", "real.txt"), None))
    extract_stream(chunks(data), "/app/d", tmp_path / "t")
    assert os.readlink(tmp_path / "t" / "alias") == "real.txt"
    assert (tmp_path / "t" / "alias").read_text() == "R"


def test_a_member_written_through_an_earlier_link_is_refused(tmp_path):
    (tmp_path / "outside").mkdir()
    data = tar_bytes((link_info("d/sneaky", "../outside"), None), (file_info("d/sneaky/evil"), b"x"))
    with pytest.raises(UnsafeArchive):
        extract_stream(chunks(data), "/app/d", tmp_path / "t")
    assert not (tmp_path / "outside" / "evil").exists()
