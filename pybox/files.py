"""Moving files in and out of a sandbox as tar streams through the engine's archive API.

Streams both ways: uploads are written by a thread into a pipe the engine reads in
chunks; downloads are extracted member by member as the engine sends them. Memory
stays bounded whatever the size. Extraction refuses members that would land outside
the target (absolute names, ``..``, links pointing out, devices).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

from pybox.errors import InvalidArgument, PyboxError, UnsafeArchive
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
    """A file object over an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def extract_stream(chunks: Iterable[bytes], remote: str, local: Path) -> None:
    """Extract a tar stream of the sandbox path ``remote`` so that it becomes ``local``.

    The engine names members after the remote's basename (``dir/...`` or ``file``);
    that first component is replaced by ``local``. A file downloaded onto an existing
    directory goes inside it.
    """
    root_name = PurePosixPath(remote).name
    stream: BinaryIO = _ChunkReader(chunks)  # type: ignore[assignment]
    local = local.expanduser().absolute()
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            relative = _member_path(member.name, root_name)
            if relative is None:
                raise UnsafeArchive(f"archive member {member.name!r} is outside {remote!r}; refused")
            if relative == PurePosixPath("."):
                if member.isreg() and local.is_dir():
                    target = local / root_name
                else:
                    target = local
            else:
                target = local.joinpath(*relative.parts)
            _check_inside(target, local, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isreg():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
                os.chmod(target, member.mode & 0o777)
            elif member.issym() or member.islnk():
                link = PurePosixPath(member.linkname)
                resolved = (target.parent / link) if not link.is_absolute() else None
                if member.islnk() or resolved is None or not _is_inside(resolved, local):
                    raise UnsafeArchive(
                        f"archive member {member.name!r} links to {member.linkname!r}, outside the target; refused"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    target.unlink()
                os.symlink(member.linkname, target)
            else:
                raise UnsafeArchive(f"archive member {member.name!r} is a device or fifo; refused")


def _member_path(name: str, root_name: str) -> PurePosixPath | None:
    """The member's path relative to the downloaded root, or None when it escapes."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    parts = [p for p in path.parts if p != "."]
    if not parts or parts[0] != root_name:
        return None
    return PurePosixPath(*parts[1:]) if len(parts) > 1 else PurePosixPath(".")


def _is_inside(path: Path, root: Path) -> bool:
    resolved = Path(os.path.normpath(path))
    root = Path(os.path.normpath(root))
    return resolved == root or root in resolved.parents


def _check_inside(target: Path, root: Path, name: str) -> None:
    if not _is_inside(target, root):
        raise UnsafeArchive(f"archive member {name!r} would be written outside {root}; refused")
    # A symlink extracted earlier could redirect later members: resolve what exists.
    if target != root and target.parent != root and target.parent.exists():
        if not _is_inside(target.parent.resolve(), root.resolve()):
            raise UnsafeArchive(f"archive member {name!r} would be written outside {root} through a link; refused")


def check_local_path(local: str | os.PathLike[str]) -> Path:
    if not isinstance(local, (str, os.PathLike)) or not str(local).strip():
        raise InvalidArgument(f"local path must be a non-empty path, got {local!r}")
    return Path(local).expanduser()


def check_local_source(local: str | os.PathLike[str]) -> Path:
    path = check_local_path(local)
    if not path.exists():
        raise InvalidArgument(f"local path {str(local)!r} does not exist")
    return path
