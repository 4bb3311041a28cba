"""Opening partner bytes safely: a regular file we open ourselves, its container sniffed and allow-listed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Iterator

from ingest.errors import DecodeError

# FFmpeg demuxer names; playlists, concat lists, images and raw streams are never among them.
DEFAULT_FORMATS = frozenset({"mov", "matroska", "avi", "mpegts"})
_ALIASES = {"mp4": "mov", "m4v": "mov", "quicktime": "mov", "mkv": "matroska", "webm": "matroska", "ts": "mpegts"}
_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
HEAD_BYTES = 1024


def normalize_formats(formats) -> frozenset[str]:
    """Container names as FFmpeg's demuxers spell them (mp4 -> mov, webm -> matroska)."""
    return frozenset(_ALIASES.get(f.lower(), f.lower()) for f in formats)


def sniff_format(head: bytes) -> str | None:
    """The container the magic bytes say, as an FFmpeg demuxer name, or None when it is none we accept."""
    if len(head) >= 8 and head[4:8] in _MP4_BOXES:
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    for packet in (188, 192):  # MPEG-TS, and M2TS with its 4-byte timecode prefix
        start = 0 if packet == 188 else 4
        if len(head) > start + 2 * packet and all(head[start + k * packet] == 0x47 for k in range(3)):
            return "mpegts"
    return None


def describe_magic(head: bytes) -> str:
    """A short human guess at what a refused file is, for the rejection detail."""
    known = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"ID3": "an MP3 audio file",
             b"fLaC": "a FLAC audio file", b"OggS": "an Ogg file", b"GIF8": "a GIF image", b"%PDF": "a PDF",
             b"#EXTM3U": "an HLS playlist", b"ffconcat": "an ffconcat list", b"PK\x03\x04": "a zip archive"}
    for magic, name in known.items():
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "a WAV audio file"
    return "not a recognized video container"


def open_regular(path: str | Path) -> IO[bytes]:
    """Open a regular file for reading without following a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as e:
        raise DecodeError(path, "not_video", "no such file; check the path") from e
    except OSError as e:  # ELOOP: a symbolic link
        raise DecodeError(path, "not_video", f"cannot be opened as a regular file ({e.strerror}); "
                                             f"deliver the file itself, not a link") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DecodeError(path, "not_video", "is not a regular file; deliver a video file")
    return os.fdopen(fd, "rb")


def _top_level_boxes(f, size: int) -> Iterator[tuple[bytes, int, int]]:
    """(kind, offset, declared size) of an MP4/MOV's top-level boxes; stops where the structure makes no sense."""
    offset = 0
    while offset + 8 <= size:
        f.seek(offset)
        header = f.read(16)
        box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
        if box_size == 1 and len(header) >= 16:
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:  # extends to the end of the file
            box_size = size - offset
        if box_size < 8:
            return
        yield kind, offset, box_size
        offset += box_size


def mp4_has_video_track(path: str | Path, size: int, bound: int = 64 << 20) -> bool:
    """Whether an MP4/MOV's index declares a video track (a 'vmhd' box in 'moov'), whatever FFmpeg made of it."""
    with open_regular(path) as f:
        for kind, offset, box_size in _top_level_boxes(f, size):
            if kind == b"moov":
                f.seek(offset)
                return b"vmhd" in f.read(min(box_size, bound))
    return False


def mp4_truncation(path: str | Path, size: int) -> str | None:
    """For an MP4/MOV: why its top-level boxes say it was cut short, or None when they add up."""
    seen = []
    with open_regular(path) as f:
        for kind, offset, box_size in _top_level_boxes(f, size):
            seen.append(kind)
            if offset + box_size > size:
                return (f"the {kind.decode('latin-1')!r} box ends at byte {offset + box_size} but the file has "
                        f"{size} bytes")
    if b"moov" not in seen and b"mdat" in seen:
        return "it has media data but no 'moov' index (the upload stopped before the end)"
    return None


def open_container(path: str | Path, allowed_formats=DEFAULT_FORMATS, max_pixels: int = 4096 * 4096):
    """(av container, its raw file, the demuxer name) for a video file, or a DecodeError naming why not.

    max_pixels also bounds the decoders FFmpeg runs while it reads the stream headers (find_stream_info): a header
    that claims 16000x16000 is then reported at once instead of being decoded for many seconds.
    """
    import av

    path = str(path)
    raw = open_regular(path)
    try:
        size = os.fstat(raw.fileno()).st_size
        if size == 0:
            raise DecodeError(path, "empty_file", "the file is empty (0 bytes); upload it again")
        head = raw.read(HEAD_BYTES)
        raw.seek(0)
        fmt = sniff_format(head)
        allowed = normalize_formats(allowed_formats)
        if fmt is None or fmt not in allowed:
            what = describe_magic(head) if fmt is None else f"a {fmt} container"
            raise DecodeError(path, "not_video", f"is {what}; accepted containers: {', '.join(sorted(allowed))}")
        if fmt == "mov" and (why := mp4_truncation(path, size)):
            raise DecodeError(path, "truncated", f"is truncated: {why}; upload the complete file")
        try:
            container = av.open(raw, mode="r", format=fmt, options={"max_pixels": str(max_pixels)})
        except av.error.FFmpegError as e:
            raise DecodeError(path, "corrupt", f"the {fmt} container cannot be read ({e}); re-export the file") from e
        return container, raw, fmt
    except BaseException:
        raw.close()
        raise
