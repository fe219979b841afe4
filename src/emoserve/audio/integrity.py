"""Completeness: what a container declares against what the file holds.

A file that holds less than its container declares (an upload cut short, a recorder that crashed)
is refused as `corrupt_audio`, not answered for the part that arrived.

Refused as cut short, before decoding: a PCM container (WAV, RF64, W64, AIFF, CAF, AU) whose data chunk
declares more than the file holds; an Ogg file that ends inside a page; an MP4 file that ends inside a box.
After decoding: a FLAC, MP3 (Xing/Info/VBRI), Matroska/WebM or ASF (WMA) file whose decode ends materially
short of the duration its header declares; any FFmpeg stream whose last packet does not decode, or that
FFmpeg stops reading with an error (`read_with_pyav`). Lengths a writer did not know (streaming
placeholders, an MP3 without a Xing header, a live WebM, FLAC with 0 total samples) cannot tell a cut
between frames from the end: such files are accepted.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .inputs import EncodedInput, read_at
from .refusals import cut_short

LOSSLESS_SLACK_S = 0.01  # PCM and FLAC: a cut that loses no more changes nothing, and covers writers that count
# their own header into the data size
LOSSY_SLACK_S, LOSSY_SLACK_FRACTION = 0.25, 0.05  # lossy codecs: encoder priming and padding, rounding to frames
WAV_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x80000000, 0x7FFFFF00}  # data sizes written before the length was known:
# nothing yet, FFmpeg to a pipe, arecord to stdout (and its size of -2)
SOX_UNKNOWN_SIZE = 0x7FFFF000  # SoX to a pipe, rounded down to whole blocks
UNKNOWN_64 = {0, (1 << 64) - 1}  # RF64 ds64 and W64 sizes of a stream
AU_SAMPLE_BYTES = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 8, 27: 1}  # µ-law, PCM 8-32, float, double, A-law
ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
MATROSKA_SEGMENT, MATROSKA_INFO, MATROSKA_CLUSTER = 0x18538067, 0x1549A966, 0x1F43B675
MATROSKA_SCALE, MATROSKA_DURATION = 0x2AD7B1, 0x4489
MATROSKA_PREFIX = 1 << 16  # Matroska's Info comes before the first cluster, in the first kilobytes
MAX_HEADER_CHUNKS = 64  # chunks, boxes or elements walked to find what a header declares
OGG_CAPTURE = b"OggS\x00"  # capture pattern and version of every Ogg page
OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header, table of segment sizes, 255 segments of 255 bytes
OGG_USUAL_TAIL = 1 << 14  # holds the last two pages of most files: encoders write pages of 4-8 kB
MAX_MP4_BOXES = 100_000  # top-level boxes walked: a fragmented MP4 has two a fragment; more is not a recording


@dataclass(frozen=True)
class DeclaredData:
    """Where a PCM container's samples start, the bytes its header says follow, and the seconds they hold."""

    offset: int
    size: int | None  # None: a placeholder written before the length was known
    seconds: float | None  # None where the header does not give the rate of its bytes


@dataclass(frozen=True)
class DeclaredLength:
    """The duration a compressed container's header declares."""

    seconds: float
    exact: bool  # lossless (FLAC): the decode gives exactly this much; lossy codecs pad and prime


def check_data_held(data: EncodedInput, kind: str | None) -> None:
    """Refuse, before decoding, a PCM container, an Ogg or an MP4 file that the end of the file cuts short."""
    if kind == "ogg":
        if ogg_ends_inside_a_page(data):
            raise cut_short(None, None, "inside an Ogg page")
        return
    if kind == "mp4":
        if (box := mp4_box_cut(data)) is not None:
            raise cut_short(None, None, f"inside {box}")
        return
    reader = PCM_CONTAINERS.get(kind or "")
    declared = reader(data) if reader is not None else None
    if declared is None or not declared.size or declared.seconds is None or not math.isfinite(declared.seconds):
        return
    held = max(0, data.size - declared.offset)
    missing = (declared.size - held) / declared.size * declared.seconds
    if missing > LOSSLESS_SLACK_S:
        raise cut_short(declared.seconds - missing, declared.seconds)


def check_declared_length(declared: DeclaredLength | None, decoded: float) -> None:
    """Refuse a decode that ended materially short of the duration its container declares."""
    if declared is None:
        return
    slack = LOSSLESS_SLACK_S if declared.exact else max(LOSSY_SLACK_S, LOSSY_SLACK_FRACTION * declared.seconds)
    if declared.seconds - decoded > slack:
        raise cut_short(decoded, declared.seconds)


def unpack_at(data: EncodedInput, layout: str, position: int) -> tuple | None:
    raw = read_at(data, position, struct.calcsize(layout))
    return struct.unpack(layout, raw) if len(raw) == struct.calcsize(layout) else None


@dataclass(frozen=True)
class ChunkFormat:
    """How an IFF-style container (RIFF, Wave64, AIFF, CAF) lays out the headers of its chunks."""

    first: int  # where the first chunk starts
    id_size: int  # 4, or a 16-byte GUID whose first 4 bytes name the chunk (Wave64)
    size_format: str  # of the size field, for struct
    counts_header: bool  # the size includes the chunk's own header (Wave64)
    align: int  # chunks start at multiples of it (2: a pad byte after odd sizes)


RIFF_CHUNKS = ChunkFormat(12, 4, "<I", False, 2)
RIFX_CHUNKS = AIFF_CHUNKS = ChunkFormat(12, 4, ">I", False, 2)  # big-endian RIFF is laid out as AIFF is
W64_CHUNKS = ChunkFormat(40, 16, "<Q", True, 8)
CAF_CHUNKS = ChunkFormat(8, 4, ">q", False, 1)


def chunks(data: EncodedInput, layout: ChunkFormat) -> Iterator[tuple[bytes, int, int]]:
    """(name, size of its body as declared, where its body starts) of the first chunks, up to a header the file
    cuts; a negative size (CAF's "up to the end", a Wave64 size too small for its header) is the last."""
    position = layout.first
    header_size = layout.id_size + struct.calcsize(layout.size_format)
    for _ in range(MAX_HEADER_CHUNKS):
        header = read_at(data, position, header_size)
        if len(header) < header_size:
            return
        size = struct.unpack(layout.size_format, header[layout.id_size:])[0] - layout.counts_header * header_size
        yield header[:4], size, position + header_size
        if size < 0:
            return
        position += header_size + size + -size % layout.align


@dataclass(frozen=True)
class WavData:
    """A WAV's fmt chunk (its first 40 bytes), and where its samples start and how many bytes it declares."""

    fmt: bytes
    offset: int
    size: int | None  # None: a placeholder written before the length was known


def wav_data(data: EncodedInput) -> WavData | None:
    """The data chunk of RIFF, RIFX (big-endian), RF64 and BW64 (sizes past 4 GB in a ds64 chunk) WAV."""
    order = ">" if data.head[:4] == b"RIFX" else "<"
    fmt, ds64_size = b"", None
    for name, size, body in chunks(data, RIFX_CHUNKS if order == ">" else RIFF_CHUNKS):
        if name == b"fmt ":
            fmt = read_at(data, body, min(size, 40))
        elif name == b"ds64" and (sizes := unpack_at(data, "<QQ", body)) is not None:
            ds64_size = sizes[1]
        elif name == b"data":
            block_align = struct.unpack(order + "H", fmt[12:14])[0] if len(fmt) >= 14 else 0
            if size == 0xFFFFFFFF and ds64_size is not None:
                known = ds64_size not in UNKNOWN_64
                size = ds64_size
            else:
                known = size not in WAV_UNKNOWN_SIZES and not (block_align and size == SOX_UNKNOWN_SIZE // block_align
                                                                * block_align)
            return WavData(fmt, body, size if known else None)
    return None


def w64_data(data: EncodedInput) -> WavData | None:
    """The data chunk of Sony Wave64: 16-byte GUID chunk ids, 64-bit sizes that count the 24-byte header."""
    fmt = b""
    for name, size, body in chunks(data, W64_CHUNKS):
        if name == b"fmt ":
            fmt = read_at(data, body, min(max(size, 0), 40))
        elif name == b"data":
            return WavData(fmt, body, size if size >= 0 and size + 24 not in UNKNOWN_64 else None)
    return None


def wav_declared(wav: WavData | None, order: str = "<") -> DeclaredData | None:
    if wav is None or wav.size is None or len(wav.fmt) < 12:
        return None
    bytes_per_second = struct.unpack(order + "I", wav.fmt[8:12])[0]
    return DeclaredData(wav.offset, wav.size, wav.size / bytes_per_second if bytes_per_second else None)


def aiff_declared(data: EncodedInput) -> DeclaredData | None:
    """AIFF and AIFC: the SSND chunk's bytes, and the sample frames and rate of the COMM chunk."""
    seconds = None
    for name, size, body in chunks(data, AIFF_CHUNKS):
        if name == b"COMM" and (comm := unpack_at(data, ">hIhHQ", body)) is not None:
            _, frames, _, exponent, mantissa = comm
            shift = (exponent & 0x7FFF) - 16383 - 63  # an 80-bit extended float: 15 bits of exponent
            rate = math.ldexp(mantissa, shift) if shift < 64 else math.inf
            seconds = frames / rate if frames and 0 < rate < math.inf else None
        elif name == b"SSND":
            skip = (unpack_at(data, ">I", body) or (0,))[0]  # the SSND offset field
            known = size not in (0, 0xFFFFFFFF) and size >= 8 + skip
            return DeclaredData(body + 8 + skip, size - 8 - skip if known else None, seconds)
    return None


def caf_declared(data: EncodedInput) -> DeclaredData | None:
    """CAF: the data chunk's bytes (-1: up to the end of the file), in packets of the desc chunk's size."""
    seconds_per_byte = None
    for name, size, body in chunks(data, CAF_CHUNKS):
        if name == b"desc" and (desc := unpack_at(data, ">dIIII", body)) is not None:
            rate, _, _, bytes_per_packet, frames_per_packet = desc
            if 0 < rate < math.inf and bytes_per_packet:
                seconds_per_byte = frames_per_packet / bytes_per_packet / rate
        elif name == b"data":
            size = size - 4 if size >= 4 else None  # after its 4-byte edit count
            seconds = size * seconds_per_byte if size is not None and seconds_per_byte else None
            return DeclaredData(body + 4, size, seconds)
    return None


def au_declared(data: EncodedInput) -> DeclaredData | None:
    """Sun/NeXT AU: a 24-byte big-endian header; a data size of 0xFFFFFFFF means "up to the end of the file"."""
    if len(data.head) < 24:
        return None
    offset, size, encoding, rate, channels = struct.unpack(">IIIII", data.head[4:24])
    width = AU_SAMPLE_BYTES.get(encoding, 0) * rate * channels
    return DeclaredData(offset, None if size == 0xFFFFFFFF else size, size / width if width else None)


PCM_CONTAINERS: dict[str, Callable[[EncodedInput], DeclaredData | None]] = {
    "wav": lambda data: wav_declared(wav_data(data), ">" if data.head[:4] == b"RIFX" else "<"),
    "w64": lambda data: wav_declared(w64_data(data)),
    "aiff": aiff_declared,
    "caf": caf_declared,
    "au": au_declared,
}


def ogg_ends_inside_a_page(data: EncodedInput) -> bool:
    """Whether the file ends inside an Ogg page, which FFmpeg drops without a word.

    Read from the end, in constant time: the last two pages lie in the last 2 × 64 kB (usually in the
    last 16 kB, read first), where pages are found by their capture pattern ("OggS", which audio bytes
    may spell too).
    """
    for window in (OGG_USUAL_TAIL, 2 * OGG_MAX_PAGE):
        start = max(0, data.size - window)
        tail = read_at(data, start, data.size - start)
        candidate = tail.find(OGG_CAPTURE)
        while candidate != -1:
            verdict = ogg_pages_run_past_the_end(tail, candidate, real=start == 0 and candidate == 0)
            if verdict is not None:
                return verdict
            candidate = tail.find(OGG_CAPTURE, candidate + 1)
        if start == 0:
            break
    return False


def ogg_pages_run_past_the_end(tail: bytes, position: int, real: bool) -> bool | None:
    """Follows the pages from `position` to the end of the file: whether the last one runs past it.

    A page is real where it starts as the one before it ends (or where it is the file's first, `real`);
    None where `position` turns out to be no page: a capture pattern inside audio bytes.
    """
    while True:
        end = ogg_page_end(tail, position)
        if end is None or end > len(tail):
            return True if real else None
        if end == len(tail):
            return False
        if not OGG_CAPTURE.startswith(tail[end:end + len(OGG_CAPTURE)]):
            return False if real else None  # bytes after the last page that are no page: not a cut
        position, real = end, True


def ogg_page_end(tail: bytes, position: int) -> int | None:
    """Where the page at `position` ends (27 bytes of header, a table of segment sizes, the segments); None
    where the end of the file cuts its header."""
    if len(tail) < position + 27 or len(tail) < position + 27 + tail[position + 26]:
        return None
    segments = tail[position + 26]
    return position + 27 + segments + sum(tail[position + 27: position + 27 + segments])


def mp4_box_cut(data: EncodedInput) -> str | None:
    """The top-level MP4 box that runs past the end of the file ("its 'mdat' box"), if one does.

    The media data (mdat) of a file cut short, or its index (moov) where that comes last, as phones
    write it. A box of size 0 runs to the end by definition: such a file cannot tell. The walk stops
    after MAX_MP4_BOXES, so that a hostile file of tiny boxes costs a bounded time.
    """
    position, box_type = 0, ""
    for _ in range(MAX_MP4_BOXES):
        if position >= data.size:
            return describe_box(box_type) if position > data.size else None
        header = read_at(data, position, 16)
        if len(header) < 8:
            return "a box header"
        size, box_type = struct.unpack(">I", header[:4])[0], header[4:8].decode("latin-1")
        if size == 1:
            if len(header) < 16:
                return describe_box(box_type)
            size = struct.unpack(">Q", header[8:])[0]
        if size < 8:  # 0: up to the end; 1 to 7: not a box, damage that FFmpeg judges
            return None
        position += size
    return None


def describe_box(box_type: str) -> str:
    return f"its {box_type!r} box" + (" (the index)" if box_type == "moov" else "")


def declared_length(data: EncodedInput, kind: str | None) -> DeclaredLength | None:
    """The duration a FLAC, MP3, Matroska or ASF header declares; None where it declares none.

    (MP4 declares it too, but a cut always breaks its chain of boxes first: `mp4_box_cut`.)
    """
    start = id3v2_length(data.head) if kind == "id3" else 0
    magic = read_at(data, start, 4)
    if magic == b"fLaC":
        seconds, exact = flac_seconds(data, start), True
    elif len(magic) == 4 and magic[0] == 0xFF and magic[1] & 0xE0 == 0xE0:
        seconds, exact = mpeg_audio_seconds(data, start), False
    elif kind in LENGTH_READERS:
        seconds, exact = LENGTH_READERS[kind](data), False
    else:
        return None
    return DeclaredLength(seconds, exact) if seconds is not None and 0 < seconds < math.inf else None


def id3v2_length(head: bytes) -> int:
    """Bytes of the ID3v2 tag in front of the audio (its size is "synchsafe": 7 bits a byte)."""
    if len(head) < 10:
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F
    return 10 + size + (10 if head[5] & 0x10 else 0)  # the flag for a footer


def flac_seconds(data: EncodedInput, start: int) -> float | None:
    """STREAMINFO (always the first metadata block): 20 bits of rate, ..., 36 bits of total samples (0: unknown)."""
    streaminfo = read_at(data, start + 4, 4 + 18)
    if len(streaminfo) < 22 or streaminfo[0] & 0x7F != 0:
        return None
    packed = int.from_bytes(streaminfo[14:22], "big")
    rate, total = packed >> 44, packed & ((1 << 36) - 1)
    return total / rate if rate and total else None


def mpeg_audio_seconds(data: EncodedInput, start: int) -> float | None:
    """The frame count of the Xing/Info (LAME, FFmpeg) or VBRI (Fraunhofer) header in an MP3's first frame."""
    frame = read_at(data, start, 4 + 32 + 18)
    if len(frame) < 4 + 32 + 18:
        return None
    version, layer, rate_index = frame[1] >> 3 & 3, frame[1] >> 1 & 3, frame[2] >> 2 & 3
    if version == 1 or layer == 0 or rate_index == 3:
        return None
    rate = (44_100, 48_000, 32_000)[rate_index] >> {3: 0, 2: 1, 0: 2}[version]  # MPEG-1, 2, 2.5
    samples_per_frame = {3: 384, 2: 1152, 1: 1152 if version == 3 else 576}[layer]  # layers I, II, III
    mono = frame[3] >> 6 == 3
    side_info = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    xing = frame[4 + side_info: 4 + side_info + 12]
    if xing[:4] in (b"Xing", b"Info") and xing[7] & 1:  # the flag for a frame count
        frames = struct.unpack(">I", xing[8:12])[0]
    elif frame[36:40] == b"VBRI":
        frames = struct.unpack(">I", frame[50:54])[0]
    else:
        return None
    return frames * samples_per_frame / rate


def matroska_seconds(data: EncodedInput) -> float | None:
    """Segment ▸ Info ▸ Duration (a float, in TimestampScale nanoseconds); a live recording has none."""
    prefix = read_at(data, 0, MATROSKA_PREFIX)
    header = ebml_element(prefix, 0)  # the EBML header
    segment = ebml_element(prefix, header[2] + header[1]) if header is not None and header[1] is not None else None
    if segment is None or segment[0] != MATROSKA_SEGMENT:
        return None
    position = segment[2]
    for _ in range(MAX_HEADER_CHUNKS):
        element = ebml_element(prefix, position)
        if element is None or element[0] == MATROSKA_CLUSTER or element[1] is None:
            return None
        element_id, size, body = element
        if element_id == MATROSKA_INFO:
            return matroska_info_seconds(prefix[body: body + size])
        position = body + size
    return None


def matroska_info_seconds(info: bytes) -> float | None:
    scale, duration = 1_000_000, None
    position = 0
    while (element := ebml_element(info, position)) is not None and element[1] is not None:
        element_id, size, body = element
        value = info[body: body + size]
        if element_id == MATROSKA_SCALE and 0 < size <= 8:
            scale = int.from_bytes(value, "big")
        elif element_id == MATROSKA_DURATION and size in (4, 8) and len(value) == size:
            duration = struct.unpack(">f" if size == 4 else ">d", value)[0]
        position = body + size
    return duration * scale / 1e9 if duration is not None else None


def ebml_element(buffer: bytes, position: int) -> tuple[int, int | None, int] | None:
    """(id, size or None when unknown, body position) of the EBML element at `position`; None past the end."""
    if position + 2 > len(buffer) or buffer[position] < 0x10:
        return None
    id_length = 9 - buffer[position].bit_length()  # the leading zeros say how many bytes follow
    size_at = position + id_length
    if size_at >= len(buffer) or buffer[size_at] == 0:
        return None
    size_length = 9 - buffer[size_at].bit_length()
    body = size_at + size_length
    if body > len(buffer):
        return None
    element_id = int.from_bytes(buffer[position:size_at], "big")
    size = int.from_bytes(buffer[size_at:body], "big") & ((1 << (7 * size_length)) - 1)  # without the length marker
    return element_id, None if size == (1 << (7 * size_length)) - 1 else size, body


def asf_seconds(data: EncodedInput) -> float | None:
    """ASF (WMA) File Properties: the play duration (100 ns units) less the preroll (ms); not for broadcasts."""
    position = 30  # after the Header Object's GUID, size, child count and two reserved bytes
    for _ in range(MAX_HEADER_CHUNKS):
        header = read_at(data, position, 24)
        if len(header) < 24:
            return None
        size = struct.unpack("<Q", header[16:])[0]
        if header[:16] == ASF_FILE_PROPERTIES:
            fields = unpack_at(data, "<QQQI", position + 64)
            if fields is None or fields[3] & 1:  # the broadcast flag: durations and sizes are not valid
                return None
            play, _, preroll, _ = fields
            return play / 1e7 - preroll / 1e3 if play else None
        if size < 24:
            return None
        position += size
    return None


LENGTH_READERS: dict[str, Callable[[EncodedInput], float | None]] = {"matroska": matroska_seconds, "asf": asf_seconds}
