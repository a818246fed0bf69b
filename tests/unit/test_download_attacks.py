"""Downloads never escape their target: archives written by a hostile sandbox, run
against the real filesystem. Every refused archive must leave the host as it was."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybox.errors import DownloadTooLarge, PyboxError, UnsafeArchive
from pybox.files import extract_stream


def member(name, kind="file", data=b"x", target="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.mode = mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = mode if mode != 0o644 else 0o755
    elif kind == "sym":
        info.type, info.linkname = tarfile.SYMTYPE, target
    elif kind == "hard":
        info.type, info.linkname = tarfile.LNKTYPE, target
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        info.size = len(data)
    return info, (data if kind == "file" else None)


def archive(*members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` with its type, mode and content (links not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = os.lstat(path)
            content = os.readlink(path) if stat.S_ISLNK(info.st_mode) else (
                path.read_bytes() if stat.S_ISREG(info.st_mode) else None)
            found[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), content)
    return found


@pytest.fixture
def host(tmp_path):
    """A host tree around the download target: files an attacker would love to reach."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0")
    (tmp_path / "etc" / "passwd").chmod(0o640)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    (tmp_path / "work").mkdir()
    return tmp_path


def refused(host: Path, data: bytes, remote: str = "/app/d", target: str = "work/out",
            match: str | None = None) -> None:
    before = snapshot(host)
    with pytest.raises(UnsafeArchive, match=match):
        extract_stream([data], remote, host / target)
    assert snapshot(host) == before, "a refused archive changed the host"


def test_a_chain_of_links_that_is_lexically_inside_cannot_reach_out(host):
    refused(host, archive(
        member("d", "dir"), member("d/d1", "dir"),
        member("d/d1/up", "sym", target=".."),  # resolves to d itself: fine alone
        member("d/evil", "sym", target="d1/up/d1/up/../../../../etc/passwd"),
    ), match="outside")


def test_nothing_is_written_through_a_link_extracted_before(host):
    refused(host, archive(
        member("d", "dir"),
        member("d/up", "sym", target="../../../etc"),
    ), match="outside")
    refused(host, archive(
        member("d", "dir"),
        member("d/here", "sym", target="."),
        member("d/here/x", data=b"through a link"),
    ), match="goes through a link")


def test_a_later_link_cannot_redirect_an_earlier_one_out(host):
    refused(host, archive(
        member("d", "dir"),
        member("d/late", "sym", target="X/../../../etc/passwd"),  # X missing: lexically out already
    ))
    refused(host, archive(
        member("d", "dir"),
        member("d/early", "sym", target="X/../z"),  # lexically inside while X does not exist
        member("d/X", "sym", target="."),          # now early resolves to d/../z: outside
    ), match="outside")


def test_a_regular_member_landing_on_a_link_is_refused(host):
    refused(host, archive(
        member("d", "dir"),
        member("d/a", "sym", target="b"),
        member("d/a", data=b"would follow a to b"),
    ), match="over a link")


def test_the_target_itself_may_not_be_a_link(host):
    (host / "work" / "link").symlink_to(host / "etc")
    refused(host, archive(member("d", "dir"), member("d/passwd", data=b"owned")), target="work/link",
            match="symbolic link")


def test_hard_links_inside_the_target_are_kept_and_outside_refused(host):
    extract_stream([archive(member("d", "dir"), member("d/a", data=b"same"), member("d/b", "hard", target="d/a"))],
                   "/app/d", host / "work" / "out")
    a, b = host / "work" / "out" / "a", host / "work" / "out" / "b"
    assert b.read_bytes() == b"same" and os.stat(a).st_ino == os.stat(b).st_ino
    refused(host, archive(member("d", "dir"), member("d/b", "hard", target="etc/passwd")), target="work/out2")
    refused(host, archive(member("d", "dir"), member("d/b", "hard", target="../etc/passwd")), target="work/out3")
    refused(host, archive(member("d", "dir"), member("d/l", "sym", target="x"), member("d/b", "hard", target="d/l")),
            target="work/out4")


def test_devices_absolute_names_and_dotdot_are_refused(host):
    refused(host, archive(member("d", "dir"), member("d/f", "fifo")))
    refused(host, archive(member("/etc/passwd", data=b"owned")))
    refused(host, archive(member("d", "dir"), member("d/../../etc/passwd", data=b"owned")))
    refused(host, archive(member("d", "dir"), member("d/abs", "sym", target="/etc/passwd")))
    refused(host, archive(member("other/x", data=b"not the requested path")))


def test_a_refused_archive_leaves_nothing_half_written(host):
    data = archive(member("d", "dir"), *[member(f"d/f{i}", data=b"a" * 1000) for i in range(20)],
                   member("d/zz", "sym", target="/etc"))
    refused(host, data)
    assert not (host / "work" / "out").exists()
    assert os.listdir(host / "work") == []  # no staging directory left either


def test_the_size_cap_refuses_big_downloads_and_writes_nothing(host):
    data = archive(member("d", "dir"), member("d/big", data=os.urandom(300_000)))
    before = snapshot(host)
    with pytest.raises(DownloadTooLarge, match="cap of 100000 bytes"):
        extract_stream([data[i:i + 8192] for i in range(0, len(data), 8192)], "/app/d", host / "work" / "out",
                       max_bytes=100_000)
    assert snapshot(host) == before
    extract_stream([data], "/app/d", host / "work" / "out", max_bytes=None)
    assert len((host / "work" / "out" / "big").read_bytes()) == 300_000


def test_truncated_and_garbled_streams_are_pybox_errors(host):
    data = archive(member("d", "dir"), member("d/f", data=b"y" * 5000))
    refused(host, data[:1500], match="truncated or corrupt")
    refused(host, b"\x00garbage" * 200, match="truncated or corrupt|holds nothing")

    def broken():
        yield data[:700]
        raise ConnectionResetError("the engine went away")

    with pytest.raises(PyboxError, match="broke"):
        extract_stream(broken(), "/app/d", host / "work" / "out")
    with pytest.raises(PyboxError, match="not bytes"):
        extract_stream(["text"], "/app/d", host / "work" / "out")


def test_modes_are_made_safe_and_host_modes_are_untouched(host):
    extract_stream([archive(member("d", "dir"), member("d/suid", data=b"#!", mode=0o4777))], "/app/d",
                   host / "work" / "out")
    assert stat.S_IMODE(os.stat(host / "work" / "out" / "suid").st_mode) & 0o7000 == 0
    assert stat.S_IMODE(os.stat(host / "etc" / "passwd").st_mode) == 0o640


def test_a_merge_never_follows_a_link_in_the_target_and_checks_everything_first(host):
    out = host / "work" / "out"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    (out / "cfg").symlink_to(host / "etc")  # the user's own link where the archive has a directory
    refused(host, archive(member("d", "dir"), member("d/a.txt", data=b"new"), member("d/cfg", "dir"),
                          member("d/cfg/passwd", data=b"owned")), match="not a directory")
    assert not (out / "a.txt").exists()  # nothing moved: the conflict was found first
    extract_stream([archive(member("d", "dir"), member("d/a.txt", data=b"new"))], "/app/d", out)
    assert (out / "a.txt").read_text() == "new" and (out / "keep.txt").read_text() == "kept"


def test_a_file_download_onto_a_link_replaces_the_link_not_its_target(host):
    (host / "work" / "f").symlink_to(host / "home" / "notes.txt")
    extract_stream([archive(member("f", data=b"downloaded"))], "/app/f", host / "work")
    assert (host / "home" / "notes.txt").read_text() == "mine"
    assert not (host / "work" / "f").is_symlink() and (host / "work" / "f").read_text() == "downloaded"


# -- property-based: any archive, no raw exception, no write outside the target ----------

NAMES = st.sampled_from(["d", "d/a", "d/b", "d/a/b", "d/sub", "d/sub/x", "d/../x", "/etc/x", "x", "d/.", "d//a",
                         "d/a/../b", "d/sub/../../etc"])
TARGETS = st.sampled_from(["a", "b", "sub", "..", "../..", "/etc", "/", "d/a", "sub/../..", ".", "a/b",
                           "../../../etc/passwd", "sub/x"])
MEMBERS = st.lists(st.tuples(NAMES, st.sampled_from(["file", "dir", "sym", "hard", "fifo"]), TARGETS,
                             st.binary(max_size=64), st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o777])),
                   max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=MEMBERS, cut=st.one_of(st.none(), st.integers(min_value=0, max_value=4000)))
def test_fuzz_extraction_never_escapes_and_never_raises_raw(tmp_path, members, cut):
    root = tmp_path / f"case{os.urandom(4).hex()}"
    (root / "outside").mkdir(parents=True)
    (root / "outside" / "secret").write_text("s")
    (root / "dest").mkdir()
    data = archive(*(member(name, kind, data, target, mode) for name, kind, target, data, mode in members))
    if cut is not None:
        data = data[:cut]
    before = snapshot(root / "outside")
    try:
        extract_stream([data], "/app/d", root / "dest" / "out")
    except PyboxError:
        assert not (root / "dest" / "out").exists() or (root / "dest" / "out").is_dir()
    assert snapshot(root / "outside") == before
    listing = os.listdir(root / "dest")
    assert set(listing) <= {"out"}, listing  # no staging directory left behind
    for dirpath, dirnames, filenames in os.walk(root / "dest"):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                assert os.path.realpath(path).startswith(str((root / "dest" / "out").resolve())), path
