"""Moving files in and out of a sandbox as tar streams through the engine's archive API.

Streams both ways: uploads are written by a thread into a pipe the engine reads in
chunks; downloads are extracted member by member as the engine sends them. Memory
stays bounded whatever the size. Extraction refuses members that would land outside
the target (absolute names, ``..``, links pointing out, devices).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator
from zlib import error as zlib_error

from pybox.errors import DownloadTooLarge, InvalidArgument, PyboxError, UnsafeArchive
from pybox.image_contract import SANDBOX_GID, SANDBOX_UID

CHUNK = 1 << 20


def upload_stream(local: Path, relative: str) -> Iterator[bytes]:
    """A tar stream that, extracted in the sandbox's /app, puts ``local`` (file or
    directory) at ``relative`` (a path under /app), parents included, owned by the
    sandbox user. Extracting in /app, not /, keeps uploads working where /app is the
    only writable place (a volume on a read-only root filesystem)."""
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=CHUNK) as sink, tarfile.open(
                fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT
            ) as tar:
                parts = PurePosixPath(relative).parts
                for depth in range(1, len(parts)):  # the parents, e.g. out/ for out/file
                    tar.addfile(_dir_info("/".join(parts[:depth])))
                _add(tar, local, "/".join(parts))
        except BaseException as exc:  # reported to the reading side
            errors.append(exc)

    thread = threading.Thread(target=writer, name="pybox-upload", daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                break
            yield chunk
    thread.join()
    if errors:
        error = errors[0]
        if isinstance(error, PyboxError):
            raise error
        raise PyboxError(f"could not read {local} for upload: {error}") from error


def _dir_info(name: str, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid, info.gid = SANDBOX_UID, SANDBOX_GID
    return info


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tar.gettarinfo(str(path), arcname=name)
    info.uid, info.gid = SANDBOX_UID, SANDBOX_GID
    info.uname = info.gname = ""
    if info.isreg():
        with open(path, "rb") as handle:
            tar.addfile(info, handle)
    elif info.isdir():
        tar.addfile(info)
        for child in sorted(path.iterdir()):
            _add(tar, child, f"{name}/{child.name}")
    elif info.issym():
        tar.addfile(info)
    # sockets, devices and fifos are skipped: they cannot be copied meaningfully


class _ChunkReader:
    """A file object over an iterator of byte chunks (for tarfile's stream mode) that
    refuses to read more than ``limit`` bytes and turns stream errors into pybox's."""

    def __init__(self, chunks: Iterable[bytes], limit: int | None, what: str):
        self._chunks = iter(chunks)
        self._buffer = b""
        self._limit = limit
        self._what = what
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            except PyboxError:
                raise
            except Exception as exc:  # the engine's stream broke
                raise PyboxError(f"the archive stream of {self._what} broke: {type(exc).__name__}: {exc}") from exc
            if not isinstance(chunk, (bytes, bytearray)):
                raise PyboxError(f"the archive stream of {self._what} sent {type(chunk).__name__}, not bytes")
            self.total += len(chunk)
            if self._limit is not None and self.total > self._limit:
                raise DownloadTooLarge(self._what, self._limit)
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


#: Default cap of a download's archive stream (headers included), in bytes.
DEFAULT_MAX_DOWNLOAD = 1 << 30

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def extract_stream(chunks: Iterable[bytes], remote: str, local: Path, max_bytes: int | None = DEFAULT_MAX_DOWNLOAD
                   ) -> None:
    """Extract a tar stream of the sandbox path ``remote`` so that it becomes ``local``.

    The engine names members after the remote's basename (``dir/...`` or ``file``);
    that first component is replaced by ``local``. A file downloaded onto an existing
    directory goes inside it; a directory onto an existing directory is merged into it.

    The archive is written by the sandbox, so it is hostile. Layers, each enough on its
    own for what it covers:

    - the standard library's ``data`` extraction filter vets every member (absolute
      names, ``..``, links pointing out, devices, unsafe modes);
    - members are extracted into a fresh directory beside ``local``, walking every path
      one component at a time with ``O_NOFOLLOW``: nothing is ever written through a
      symbolic link, whatever the links extracted before;
    - after extraction every symbolic link is resolved (chains included) and must stay
      inside the download; hard links must name a regular file extracted before;
    - only then is the result moved into place (a merge checks the whole tree first
      and never follows a link in ``local``), so a refused archive leaves nothing
      behind; the stream is capped at ``max_bytes`` (None: no cap).
    """
    root_name = PurePosixPath(remote).name
    local = Path(os.path.abspath(local.expanduser()))
    if local.is_symlink():
        raise UnsafeArchive(f"the download target {local} is a symbolic link; give the real path")
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot create the download target's directory {local.parent}: {exc}") from exc
    staging = Path(tempfile.mkdtemp(prefix=".pybox-download-", dir=local.parent))
    try:
        staged = staging / "root"
        _extract_into(_ChunkReader(chunks, max_bytes, remote), remote, root_name, staged)
        _check_links(staged)
        _move_into_place(staged, local, root_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_into(stream: _ChunkReader, remote: str, root_name: str, staged: Path) -> None:
    root_fd: int | None = None
    directories: list[tuple[tuple[str, ...], int]] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                relative = _member_path(member.name, root_name)
                if relative is None:
                    raise UnsafeArchive(f"archive member {member.name!r} is outside {remote!r}; refused")
                try:  # the standard library's filter: one layer of several
                    member = tarfile.data_filter(member, str(staged.parent))
                except tarfile.FilterError as exc:
                    raise UnsafeArchive(f"archive member {member.name!r} refused: {exc}") from exc
                parts = relative.parts
                if not parts:  # the downloaded root itself
                    if member.isdir():
                        if os.path.lexists(staged) and (staged.is_symlink() or not staged.is_dir()):
                            raise UnsafeArchive(f"archive member {member.name!r} repeats the download's root")
                        staged.mkdir(mode=0o700, exist_ok=True)
                        directories.append(((), member.mode or 0o755))
                    elif member.isreg():
                        if root_fd is not None or staged.exists():
                            raise UnsafeArchive(f"archive member {member.name!r} repeats the download's root")
                        with open(staged, "xb") as sink:
                            _copy(tar, member, sink.fileno())
                    else:
                        raise UnsafeArchive(f"archive member {member.name!r} (the download's root) is a link; refused")
                    continue
                if root_fd is None:
                    if not os.path.lexists(staged):  # an archive without its root's own entry
                        staged.mkdir(mode=0o700)
                        directories.append(((), 0o755))
                    elif not staged.is_dir() or staged.is_symlink():
                        raise UnsafeArchive(f"archive member {member.name!r} is inside the download's root, "
                                            f"which is not a directory; refused")
                    root_fd = os.open(staged, _DIR_FLAGS)
                _extract_member(tar, member, root_fd, parts, directories, root_name)
    except (tarfile.TarError, EOFError, zlib_error) as exc:
        raise UnsafeArchive(f"the archive of {remote!r} from the sandbox is truncated or corrupt: {exc}") from exc
    finally:
        if root_fd is not None:
            os.close(root_fd)
    if not staged.exists() and not staged.is_symlink():
        raise UnsafeArchive(f"the archive of {remote!r} from the sandbox holds nothing for it")
    for parts, mode in reversed(directories):  # modes last: a read-only directory is filled first
        os.chmod(staged.joinpath(*parts), (mode & 0o7777) | 0o700, follow_symlinks=False)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int, parts: tuple[str, ...],
                    directories: list[tuple[tuple[str, ...], int]], root_name: str) -> None:
    if member.isdir():
        os.close(_open_dir(root_fd, parts, member.name))
        directories.append((parts, member.mode or 0o755))
        return
    parent_fd = _open_dir(root_fd, parts[:-1], member.name)
    name = parts[-1]
    try:
        if member.isreg():
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=parent_fd)
            except OSError as exc:  # ELOOP: a link is there; EISDIR: a directory is
                raise UnsafeArchive(f"archive member {member.name!r} would be written over a link or a "
                                    f"directory; refused") from exc
            try:
                _copy(tar, member, fd)
                os.fchmod(fd, member.mode & 0o777 if member.mode is not None else 0o644)
            finally:
                os.close(fd)
        elif member.issym():
            _remove_entry(parent_fd, name, member.name)
            os.symlink(member.linkname, name, dir_fd=parent_fd)
        elif member.islnk():
            # A hard link names an earlier member by its archive path.
            source = _member_path(member.linkname, root_name)
            link_parts = source.parts if source is not None else ()
            if not link_parts:
                raise UnsafeArchive(f"archive member {member.name!r} is a hard link to {member.linkname!r}; refused")
            source_fd = _open_dir(root_fd, link_parts[:-1], member.name)
            try:
                if not stat.S_ISREG(os.stat(link_parts[-1], dir_fd=source_fd, follow_symlinks=False).st_mode):
                    raise UnsafeArchive(f"archive member {member.name!r} hard-links {member.linkname!r}, which is "
                                        f"not a regular file of the download; refused")
                _remove_entry(parent_fd, name, member.name)
                os.link(link_parts[-1], name, src_dir_fd=source_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError as exc:
                raise UnsafeArchive(f"archive member {member.name!r} hard-links {member.linkname!r}, which is not "
                                    f"in the download; refused") from exc
            finally:
                os.close(source_fd)
        else:
            raise UnsafeArchive(f"archive member {member.name!r} is a device or fifo; refused")
    finally:
        os.close(parent_fd)


def _open_dir(root_fd: int, parts: tuple[str, ...], member: str) -> int:
    """A descriptor of the directory ``parts`` under ``root_fd``, made where missing,
    reached without following any symbolic link."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o700, dir_fd=fd)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError as exc:  # ELOOP / ENOTDIR: a link or a file stands where a directory must be
        os.close(fd)
        raise UnsafeArchive(f"archive member {member!r} goes through a link or a file; refused") from exc
    return fd


def _remove_entry(parent_fd: int, name: str, member: str) -> None:
    """Make room for a link: an earlier file or link of the same name goes; a directory
    stays and the member is refused."""
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise UnsafeArchive(f"archive member {member!r} would replace a directory; refused")
    os.unlink(name, dir_fd=parent_fd)


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeArchive(f"archive member {member.name!r} has no data")
    while True:
        block = source.read(CHUNK)
        if not block:
            return
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view):]


def _check_links(staged: Path) -> None:
    """Every symbolic link of the download, resolved now that all are in place (a link
    extracted later can redirect an earlier one), must stay inside it."""
    root = os.path.realpath(staged)
    links = [staged] if staged.is_symlink() else []
    if staged.is_dir() and not staged.is_symlink():
        for dirpath, dirnames, filenames in os.walk(staged):
            links += [Path(dirpath, n) for n in (*dirnames, *filenames) if os.path.islink(os.path.join(dirpath, n))]
    for link in links:
        resolved = os.path.realpath(link)
        if resolved != root and not resolved.startswith(root + os.sep):
            raise UnsafeArchive(f"archive member {link.relative_to(staged.parent)} is a link that resolves outside "
                                f"the download ({os.readlink(link)!r}); refused")


def _move_into_place(staged: Path, local: Path, root_name: str) -> None:
    if not staged.is_dir():  # a file
        target = local / root_name if local.is_dir() else local
        if target.is_dir() and not target.is_symlink():
            raise UnsafeArchive(f"cannot download a file onto the directory {target}")
        os.replace(staged, target)  # replaces a file or a link itself, never what a link points to
        return
    if not os.path.lexists(local):
        os.rename(staged, local)
        return
    if not local.is_dir():
        raise UnsafeArchive(f"cannot download a directory onto {local}, which is not a directory")
    _merge(staged, local, check_only=True)  # every conflict found before anything moves
    _merge(staged, local, check_only=False)


def _merge(source: Path, target: Path, check_only: bool) -> None:
    for entry in os.scandir(source):
        destination = target / entry.name
        existing = os.lstat(destination) if os.path.lexists(destination) else None
        if entry.is_dir(follow_symlinks=False):
            if existing is None:
                if not check_only:
                    os.rename(entry.path, destination)
            elif stat.S_ISDIR(existing.st_mode):
                _merge(Path(entry.path), destination, check_only)
            else:
                raise UnsafeArchive(f"cannot merge the directory {entry.name!r} into {target}: {destination} "
                                    f"exists and is not a directory (or is a link)")
        else:
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise UnsafeArchive(f"cannot replace the directory {destination} with a file")
            if not check_only:
                os.replace(entry.path, destination)


def _member_path(name: str, root_name: str) -> PurePosixPath | None:
    """The member's path relative to the downloaded root, or None when it escapes."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    parts = [p for p in path.parts if p != "."]
    if not parts or parts[0] != root_name:
        return None
    return PurePosixPath(*parts[1:]) if len(parts) > 1 else PurePosixPath(".")


def check_local_path(local: str | os.PathLike[str]) -> Path:
    if not isinstance(local, (str, os.PathLike)) or not str(local).strip():
        raise InvalidArgument(f"local path must be a non-empty path, got {local!r}")
    return Path(local).expanduser()


def check_local_source(local: str | os.PathLike[str]) -> Path:
    path = check_local_path(local)
    if not path.exists():
        raise InvalidArgument(f"local path {str(local)!r} does not exist")
    return path
