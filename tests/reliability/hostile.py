"""A generated corpus of broken and malicious media files, each named .mp4 and tagged with why it is hostile."""

from __future__ import annotations

import gzip
import io
import os
import struct
import sys
import wave
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ingest.synth import VideoSpec, png_bytes, write_audio_only, write_video

# reasons the probe may give for a file that is not a usable video at all
UNREADABLE = frozenset({"not_video", "empty_file", "truncated", "corrupt", "decode_failed", "no_video_stream",
                        "unsupported_codec"})
HUGE_SIDE = 16000  # FFmpeg still believes this (its own bound is ~16k x 16k); above the probe's 4096 x 4096
_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"edts", b"udta"}


@dataclass(frozen=True)
class HostileFile:
    """One file of the corpus: what it is, where it lies, and what the probe may answer."""

    name: str
    family: str  # empty, truncated, garbage, wrong_magic, corrupt_atom, absurd_size, endless, polyglot, playlist, link
    path: Path
    reasons: frozenset[str]  # DecodeError reasons the probe may give
    probe_may_accept: bool = False  # a real video whose refusal is the contract's job (e.g. a 10-hour duration)
    note: str = ""


# --------------------------------------------------------------------------- MP4 boxes


@dataclass(frozen=True)
class Box:
    kind: bytes
    offset: int
    size: int
    header: int  # 8, or 16 for a 64-bit size

    @property
    def payload(self) -> int:
        return self.offset + self.header


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """Every box of an MP4, depth first, descending into the usual container boxes."""
    end = len(data) if end is None else end
    found, offset = [], start
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[offset + 8:offset + 16])[0], 16
        elif size == 0:
            size = end - offset
        if size < header:
            break
        box = Box(kind, offset, size, header)
        found.append(box)
        if kind in _CONTAINER_BOXES:
            found.extend(mp4_boxes(data, box.payload, offset + size))
        offset += size
    return found


def find_box(data: bytes, kind: bytes) -> Box:
    return next(b for b in mp4_boxes(data) if b.kind == kind)


def replace_box(data: bytes, kind: bytes, new_box: bytes) -> bytes:
    """Replace the first box of `kind` with new_box (header included), fixing every ancestor's size.

    Valid for files whose moov follows mdat (chunk offsets do not move), as PyAV writes them.
    """
    boxes = mp4_boxes(data)
    target = next(b for b in boxes if b.kind == kind)
    delta = len(new_box) - target.size
    out = bytearray(data[:target.offset] + new_box + data[target.offset + target.size:])
    for box in boxes:
        if box.offset < target.offset and box.offset + box.size >= target.offset + target.size and box.header == 8:
            struct.pack_into(">I", out, box.offset, box.size + delta)
    return bytes(out)


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


# --------------------------------------------------------------------------- H.264 parameter sets


class _Bits:
    """An RBSP bit reader with exp-Golomb codes."""

    def __init__(self, data: bytes):
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def u(self, n: int) -> int:
        value = int(self.bits[self.pos:self.pos + n], 2) if n else 0
        self.pos += n
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bits[self.pos] == "0":
            zeros += 1
            self.pos += 1
        self.pos += 1
        return (1 << zeros) - 1 + self.u(zeros)


def _ue_bits(value: int) -> str:
    code = f"{value + 1:b}"
    return "0" * (len(code) - 1) + code


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def sps_with_size(sps_nal: bytes, width: int, height: int) -> bytes:
    """The same SPS NAL unit (header byte included) declaring width x height (multiples of 16), without its VUI.

    Dropping the VUI makes room for the longer size codes: the result is never longer than the original, and is
    padded with zero bytes to the same length, so it can replace the original in place inside any container.
    """
    rbsp = _unescape(sps_nal[1:])
    bits = _Bits(rbsp)
    profile = bits.u(8)
    bits.u(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        if bits.ue() == 3:  # chroma_format_idc
            bits.u(1)
        bits.ue()
        bits.ue()
        bits.u(1)
        if bits.u(1):
            raise ValueError("SPS with scaling matrices: not rewritten")
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        raise ValueError("SPS with pic_order_cnt_type 1: not rewritten")
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_allowed
    head = bits.bits[:bits.pos]
    bits.ue()
    bits.ue()
    if not bits.u(1):  # frame_mbs_only_flag
        raise ValueError("interlaced SPS: not rewritten")
    bits.u(1)  # direct_8x8_inference
    if bits.u(1):
        raise ValueError("SPS with cropping: not rewritten")
    body = head + _ue_bits(width // 16 - 1) + _ue_bits(height // 16 - 1) + "1" + "1" + "0" + "0" + "1"
    body += "0" * (-len(body) % 8)  # frame_mbs_only, direct_8x8, no cropping, no VUI, stop bit, alignment
    new = sps_nal[:1] + _escape(int(body, 2).to_bytes(len(body) // 8, "big"))
    if len(new) > len(sps_nal):
        raise ValueError(f"the rewritten SPS needs {len(new)} bytes, the original has {len(sps_nal)}")
    return new + bytes(len(sps_nal) - len(new))


def first_sps(annexb: bytes) -> bytes:
    """The first SPS NAL unit (header byte included, escaped) of an Annex B stream."""
    for nal in annexb.split(b"\x00\x00\x01")[1:]:
        if nal and nal[0] & 0x1F == 7:
            return nal.rstrip(b"\x00")
    raise ValueError("no SPS in the stream")


def with_sps_size(container: bytes, sps: bytes, width: int, height: int) -> bytes:
    """A container file whose every copy of the SPS now declares width x height; nothing else moves."""
    if sps not in container:
        raise ValueError("the SPS is not in the container")
    return container.replace(sps, sps_with_size(sps, width, height))


# --------------------------------------------------------------------------- MPEG-TS timestamps


def ts_spread_timestamps(data: bytes, factor: int) -> bytes:
    """An MPEG-TS whose PES timestamps are multiplied by factor (frames hours apart), everything else the same."""
    out = bytearray(data)
    for start in range(0, len(out) - 187, 188):
        packet = out[start:start + 188]
        if packet[0] != 0x47 or not packet[1] & 0x40:  # payload_unit_start only
            continue
        adaptation = (packet[3] >> 4) & 0x3
        offset = 4 + (1 + packet[4] if adaptation in (2, 3) else 0)
        if packet[offset:offset + 3] != b"\x00\x00\x01" or packet[offset + 3] < 0xE0:
            continue  # not a video PES
        flags = packet[offset + 7] >> 6
        field = offset + 9
        for present in ((flags & 2), (flags & 1) if flags == 3 else 0):
            if not present:
                continue
            raw = packet[field:field + 5]
            value = (((raw[0] >> 1) & 7) << 30) | (raw[1] << 22) | ((raw[2] >> 1) << 15) | (raw[3] << 7) | (raw[4] >> 1)
            value = (value * factor) % (1 << 33)
            prefix = raw[0] & 0xF0
            out[start + field:start + field + 5] = bytes([
                prefix | ((value >> 29) & 0x0E) | 1, (value >> 22) & 0xFF, ((value >> 14) & 0xFE) | 1,
                (value >> 7) & 0xFF, ((value << 1) & 0xFE) | 1])
            field += 5
    return bytes(out)


# --------------------------------------------------------------------------- other formats


def jpeg_bytes(width: int = 16, height: int = 16) -> bytes:
    import av

    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24").reformat(
        format="yuvj420p")
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode()])


def gif_bytes() -> bytes:
    """A 1x1 GIF89a."""
    return (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
            b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def pdf_bytes() -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
            b"trailer<</Root 1 0 R>>\n%%EOF\n")


def zip_bytes(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("video.mp4", member)
    return buffer.getvalue()


def wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the corpus


def make_corpus(directory: str | Path, seed: int = 0, outside: str | Path | None = None) -> list[HostileFile]:
    """Write the corpus under directory; `outside` is a folder standing for files a partner must never reach."""
    directory = Path(directory)
    work = directory / "_sources"
    work.mkdir(parents=True, exist_ok=True)
    outside = Path(outside) if outside else directory / "_outside"
    outside.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    good = write_video(work / "good.mp4", VideoSpec(frames=20))
    data = good.read_bytes()
    secret_video = write_video(outside / "secret.mp4", VideoSpec(frames=20, seed=7))
    secret_text = outside / "secret.txt"
    secret_text.write_text("partner A's private notes\n")
    ts = write_video(work / "good.ts", VideoSpec(frames=20), container_format="mpegts").read_bytes()
    mkv = write_video(work / "good.mkv", VideoSpec(frames=20), container_format="matroska").read_bytes()
    annexb = write_video(work / "good.h264", VideoSpec(frames=10), container_format="h264").read_bytes()

    corpus: list[HostileFile] = []

    def add(name: str, family: str, payload: bytes, reasons=UNREADABLE, **kw) -> None:
        path = directory / f"{name}.mp4"
        path.write_bytes(payload)
        corpus.append(HostileFile(name, family, path, frozenset(reasons), **kw))

    def add_path(name: str, family: str, path: Path, reasons=UNREADABLE, **kw) -> None:
        corpus.append(HostileFile(name, family, path, frozenset(reasons), **kw))

    # empty and truncated
    add("empty", "empty", b"", {"empty_file"})
    for cut in (1, 7, 12, 40):
        add(f"truncated_at_byte_{cut}", "truncated", data[:cut])
    for pct in (5, 25, 50, 75, 95, 99):
        add(f"truncated_at_{pct}pct", "truncated", data[:len(data) * pct // 100], {"truncated", "corrupt"})
    add("truncated_last_byte", "truncated", data[:-1], {"truncated", "corrupt"})
    add("truncated_mkv_header", "truncated", mkv[:120])
    add("truncated_ts_header", "truncated", ts[:188 * 2 + 10])

    # garbage, some of it behind a container's magic so it gets past sniffing
    for k in range(3):
        add(f"garbage_{k}", "garbage", rng.integers(0, 256, 4096 + k * 777, dtype=np.uint8).tobytes())
    add("zeros", "garbage", bytes(65536))
    add("ones", "garbage", b"\xff" * 4096)
    add("ftyp_then_garbage", "garbage", data[:32] + rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    add("ebml_then_garbage", "garbage", b"\x1a\x45\xdf\xa3" + rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    add("riff_avi_then_garbage", "garbage",
        b"RIFF" + struct.pack("<I", 8192) + b"AVI " + rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    ts_garbage = bytearray(rng.integers(0, 256, 188 * 40, dtype=np.uint8).tobytes())
    for k in range(40):
        ts_garbage[k * 188] = 0x47
    add("ts_sync_then_garbage", "garbage", bytes(ts_garbage))

    # wrong magic: other kinds of file named .mp4
    with open(sys.executable, "rb") as f:
        elf = f.read(8192)
    others = {
        "png": png_bytes(), "jpeg": jpeg_bytes(), "gif": gif_bytes(), "pdf": pdf_bytes(), "zip": zip_bytes(data),
        "gzip": gzip.compress(data, mtime=0), "elf": elf, "wav": wav_bytes(),
        "mp3_id3": b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2048), "html": b"<html><script>alert(1)</script></html>",
        "json": b'{"recordings": []}', "sqlite": b"SQLite format 3\x00" + bytes(4080),
    }
    for kind, payload in others.items():
        add(f"{kind}_as_mp4", "wrong_magic", payload, {"not_video"})
    add_path("audio_only", "wrong_magic", write_audio_only(directory / "audio_only.mp4"), {"no_video_stream"})

    # corrupt boxes of a real MP4
    def patched(kind: bytes, at: int, raw: bytes) -> bytes:
        target = find_box(data, kind)
        out = bytearray(data)
        out[target.offset + at:target.offset + at + len(raw)] = raw
        return bytes(out)

    stsd = find_box(data, b"stsd")
    add("stsd_garbled", "corrupt_atom", patched(b"stsd", 12, rng.integers(0, 256, 40, dtype=np.uint8).tobytes()))
    stco = find_box(data, b"stco")
    entries = struct.unpack(">I", data[stco.payload + 4:stco.payload + 8])[0]
    add("stco_past_end", "corrupt_atom", patched(b"stco", 16, struct.pack(">I", 0xFFFFFF00) * entries))
    stsz = find_box(data, b"stsz")
    samples = struct.unpack(">I", data[stsz.payload + 8:stsz.payload + 12])[0]
    add("stsz_huge_samples", "corrupt_atom", patched(b"stsz", 20, struct.pack(">I", 0x7FFFFFF0) * samples))
    add("stsz_count_absurd", "corrupt_atom", patched(b"stsz", 16, struct.pack(">I", 0x3FFFFFFF)))
    stts = find_box(data, b"stts")
    add("stts_zero_samples", "corrupt_atom", patched(b"stts", 16, struct.pack(">I", 0)), probe_may_accept=True,
        note="the time table says no frames while the size table lists 20: the probe measures a wrong duration")
    add("stts_absurd_count", "corrupt_atom", patched(b"stts", 16, struct.pack(">II", 0xFFFFFFFF, 0xFFFFFFFF)),
        UNREADABLE | {"decode_timeout"}, probe_may_accept=True,
        note="4 billion samples of 4 billion ticks each: the probe measures a zero duration")
    mdat = find_box(data, b"mdat")
    zeroed = bytearray(data)
    zeroed[mdat.payload:mdat.offset + mdat.size] = bytes(mdat.size - mdat.header)
    add("mdat_zeroed", "corrupt_atom", bytes(zeroed))
    noisy = bytearray(data)
    noisy[mdat.payload:mdat.offset + mdat.size] = rng.integers(0, 256, mdat.size - mdat.header, dtype=np.uint8).tobytes()
    add("mdat_random", "corrupt_atom", bytes(noisy))
    add("moov_size_huge", "corrupt_atom", patched(b"moov", 0, struct.pack(">I", 0xFFFFFFF0)))
    add("moov_size_tiny", "corrupt_atom", patched(b"moov", 0, struct.pack(">I", 9)))
    add("moov_renamed", "corrupt_atom", patched(b"moov", 4, b"moox"))
    add("moov_64bit_size_absurd", "corrupt_atom",
        data[:find_box(data, b"moov").offset] + struct.pack(">I4sQ", 1, b"moov", 1 << 62)
        + data[find_box(data, b"moov").payload:])
    add("trak_size_zero", "corrupt_atom", patched(b"trak", 0, struct.pack(">I", 0)), probe_may_accept=True,
        note="size 0 means 'to the end of the parent': FFmpeg reads the track whole")
    add("mdat_size_zero_to_eof", "corrupt_atom", patched(b"mdat", 0, struct.pack(">I", 0)),
        note="size 0 means 'to the end of the file': the index after it is swallowed")
    add("hdlr_not_video", "corrupt_atom", patched(b"hdlr", 16, b"soun"))
    add("stsd_codec_unknown", "corrupt_atom", patched(b"stsd", 20, b"zzzz"))

    # absurd declared sizes: the SPS itself says 16000 x 16000 (the slices are a tiny picture's)
    sps = first_sps(annexb)
    size_reasons = {"resolution_too_large"}
    for ext, payload in (("ts", ts), ("mkv", mkv), ("mp4", data)):
        add(f"sps_{HUGE_SIDE}px_in_{ext}", "absurd_size", with_sps_size(payload, sps, HUGE_SIDE, HUGE_SIDE),
            size_reasons | {"decode_timeout"}, note="a refusal; resolution_too_large is the right reason")
    add("sps_64x65520_in_ts", "absurd_size", with_sps_size(ts, sps, 64, 65520), size_reasons, probe_may_accept=True,
        note="4.2 Mpixels pass the probe's pixel bound; the contract's 7680-pixel side bound refuses it")
    mjpeg = write_video(work / "m.avi", VideoSpec(frames=3, codec="mjpeg", pix_fmt="yuvj420p"),
                        container_format="avi").read_bytes()
    huge_jpeg = bytearray(mjpeg)
    at = 0
    while (at := huge_jpeg.find(b"\xff\xc0", at + 1)) > 0:  # every frame's start-of-frame marker
        struct.pack_into(">HH", huge_jpeg, at + 5, HUGE_SIDE, HUGE_SIDE)
    add(f"mjpeg_{HUGE_SIDE}px_in_avi", "absurd_size", bytes(huge_jpeg), size_reasons | UNREADABLE)
    tkhd = find_box(data, b"tkhd")
    add("tkhd_display_huge", "absurd_size",
        patched(b"tkhd", tkhd.size - 8, struct.pack(">II", 0xFFFF0000, 0xFFFF0000)), size_reasons,
        probe_may_accept=True, note="only the track header's display size is absurd; the picture is 64x64")
    add("stsd_entry_huge", "absurd_size", patched(b"stsd", 16 + 8 + 24, struct.pack(">HH", 0xFFFF, 0xFFFF)),
        size_reasons | UNREADABLE, probe_may_accept=True,
        note="the sample entry's size is absurd; the SPS (which decoders trust) says 64x64")

    # endless and huge: timestamps hours apart, a sparse tail of zeros, an index of millions of samples
    add("ts_timestamps_10_hours", "endless", ts_spread_timestamps(ts, 20000), UNREADABLE, probe_may_accept=True,
        note="20 frames spread over ~11 hours: a real stream the contract's duration bound refuses")
    sparse = directory / "ts_sparse_4gib_tail.mp4"
    with open(sparse, "wb") as f:
        f.write(ts)
        f.truncate(len(ts) + (4 << 30))  # 4 GiB of zeros that take no disk
    add_path("ts_sparse_4gib_tail", "endless", sparse, UNREADABLE | {"decode_timeout"}, probe_may_accept=True,
             note="a real stream then 4 GiB of zeros: must not hang past the bound")
    many = 2_000_000
    stsz_big = box(b"stsz", struct.pack(">III", 0, 0, many) + struct.pack(">I", 1) * many)
    bomb = replace_box(data, b"stsz", stsz_big)
    bomb = replace_box(bomb, b"stts", box(b"stts", struct.pack(">III", 0, 1, many) + struct.pack(">I", 512)))
    add("index_bomb_2m_samples", "endless", bomb, UNREADABLE | {"decode_timeout"})

    # polyglots: two formats in one file
    add("png_then_mp4", "polyglot", png_bytes() + data, {"not_video"})
    add("html_then_mp4", "polyglot", b"<html><body>hi</body></html>\n" + data, {"not_video"})
    add("mp4_then_zip", "polyglot", data + zip_bytes(b"payload"), UNREADABLE, probe_may_accept=True,
        note="a whole valid MP4 with a zip appended: the video part is real")
    add("mp4_with_html_in_free_box", "polyglot",
        data + box(b"free", b"<html><script>alert(1)</script></html>"), UNREADABLE,
        probe_may_accept=True, note="a valid MP4 whose 'free' box holds HTML: inert for a video pipeline")
    add("ts_with_m3u8_head", "polyglot", b"#EXTM3U\n" + ts, {"not_video"})

    # playlists and references to local files
    add("hls_local_video", "playlist",
        f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{secret_video}\n#EXT-X-ENDLIST\n".encode(),
        {"not_video"})
    add("hls_file_url", "playlist", f"#EXTM3U\n#EXTINF:1.0,\nfile://{secret_text}\n#EXT-X-ENDLIST\n".encode(),
        {"not_video"})
    add("ffconcat_local_video", "playlist", f"ffconcat version 1.0\nfile '{secret_video}'\n".encode(), {"not_video"})
    add("ffconcat_relative", "playlist", b"ffconcat version 1.0\nfile '../_outside/secret.mp4'\n", {"not_video"})
    add("dash_mpd", "playlist",
        f'<?xml version="1.0"?><MPD><Period><AdaptationSet><Representation><BaseURL>{secret_video}</BaseURL>'
        f"</Representation></AdaptationSet></Period></MPD>".encode(), {"not_video"})
    add("sdp", "playlist", b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n",
        {"not_video"})
    # an MP4 whose data reference points at a file outside (the mov demuxer can follow 'alis'/'url ' drefs)
    location = str(secret_video).encode() + b"\x00"
    dref = box(b"dref", struct.pack(">II", 0, 1) + box(b"url ", struct.pack(">I", 0) + location))
    external = replace_box(data, b"dref", dref)
    zero_mdat = bytearray(external)
    m = find_box(external, b"mdat")
    zero_mdat[m.payload:m.offset + m.size] = bytes(m.size - m.header)  # its own bytes are useless
    add("dref_external_file", "playlist", bytes(zero_mdat))

    # links and special files
    links = {"symlink_to_secret_video": secret_video, "symlink_to_etc_passwd": Path("/etc/passwd"),
             "symlink_to_dev_zero": Path("/dev/zero"), "symlink_dangling": outside / "missing.mp4"}
    for name, target in links.items():
        path = directory / f"{name}.mp4"
        os.symlink(target, path)
        add_path(name, "link", path, {"not_video"})
    folder = directory / "directory.mp4"
    folder.mkdir()
    add_path("directory", "link", folder, {"not_video"})
    fifo = directory / "fifo.mp4"
    os.mkfifo(fifo)
    add_path("fifo", "link", fifo, {"not_video", "decode_timeout"})
    (directory / "dir_link.mp4").symlink_to(outside, target_is_directory=True)
    add_path("symlink_to_outside_dir", "link", directory / "dir_link.mp4", {"not_video"})
    return corpus


def good_video(directory: str | Path) -> Path:
    """The good file the corpus derives from (a control: it must be accepted)."""
    return Path(directory) / "_sources" / "good.mp4"
