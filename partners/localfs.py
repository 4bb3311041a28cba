"""Reading a partner's delivery folder without ever leaving it: no symbolic link is followed, no special file opened."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from partners.errors import ContractError

MAX_DEPTH = 32
LINK_FIX = ("replace the link with the file or folder itself (e.g. `cp -L`), or move it out of the delivery folder: "
            "links are never followed, so nothing outside the folder can be sent by mistake")


@dataclass
class FolderScan:
    """What a delivery folder holds: its regular files (relative '/' paths, with their lstat) and what was refused."""

    files: dict[str, os.stat_result] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)  # {path, reason, detail, fix}


def _link_problem(rel: str, target: str) -> dict[str, str]:
    return {"path": rel, "reason": "symlink", "detail": f"{rel} is a symbolic link (to {target}); it is not delivered",
            "fix": LINK_FIX}


def scan(root: str | Path) -> FolderScan:
    """Every regular file under root (names starting with '.' skipped), found with lstat: links and special files
    (FIFOs, sockets, devices) are listed as refusals, never followed or opened."""
    root = Path(root)
    result = FolderScan()
    stack: list[tuple[str, int]] = [("", 0)]
    while stack:
        prefix, depth = stack.pop()
        with os.scandir(root / prefix if prefix else root) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{prefix}/{entry.name}" if prefix else entry.name
                if entry.is_symlink():
                    try:
                        target = os.readlink(entry.path)
                    except OSError:
                        target = "?"
                    result.refused.append(_link_problem(rel, target))
                elif entry.is_dir(follow_symlinks=False):
                    if depth + 1 >= MAX_DEPTH:
                        result.refused.append({"path": rel, "reason": "folder_too_deep", "detail": f"{rel}: folders "
                                               f"nest deeper than {MAX_DEPTH} levels", "fix": "flatten the folder"})
                    else:
                        stack.append((rel, depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    result.files[rel] = entry.stat(follow_symlinks=False)
                else:
                    result.refused.append({"path": rel, "reason": "not_a_file", "detail": f"{rel} is not a regular "
                                           "file (a FIFO, socket or device)", "fix": "remove it from the folder"})
    result.refused.sort(key=lambda p: p["path"])
    return result


def open_fd(root: str | Path, rel: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor for root/rel, opened one component at a time with O_NOFOLLOW: a link anywhere on the way (even
    one planted after the folder was scanned) is refused as `symlink`, and only a regular file is opened."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ContractError("unsafe_path", f"{rel!r}: not a path inside the delivery folder")
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dirfd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ContractError("symlink", f"{rel}: {part} is a symbolic link or not a folder; {LINK_FIX}",
                                        [_link_problem(rel, "?")]) from e
                raise
            os.close(dirfd)
            dirfd = inner
        try:  # O_NONBLOCK: a FIFO planted under a video's name must not hang the CLI
            fd = os.open(parts[-1], flags | nofollow | os.O_NONBLOCK, mode, dir_fd=dirfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ContractError("symlink", f"{rel} is a symbolic link; {LINK_FIX}", [_link_problem(rel, "?")]) from e
            raise
    finally:
        os.close(dirfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ContractError("not_a_file", f"{rel} is not a regular file: remove it from the folder")
    return fd


def open_read(root: str | Path, rel: str) -> BinaryIO:
    return os.fdopen(open_fd(root, rel), "rb")


def read_bytes(root: str | Path, rel: str, offset: int = 0, size: int = -1) -> bytes:
    with open_read(root, rel) as f:
        f.seek(offset)
        return f.read(size)


def write_bytes(root: str | Path, rel: str, data: bytes) -> None:
    """Write a file of the folder's own (the hash cache) without following a link planted under its name."""
    fd = open_fd(root, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
