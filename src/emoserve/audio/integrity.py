"""Any audio users send → the model's input: 16 kHz mono float32 in [-1, 1], or a typed refusal.

The first bytes pick the decoder, never the file name or the client's MIME type:
- 16-bit PCM WAV is parsed here and read with numpy: no decoder, and no copy of in-memory bytes;
- other WAV, FLAC, AIFF, CAF and AU go to soundfile (libsndfile);
- Ogg (Vorbis, Opus), MP3, M4A/AAC, WebM/Matroska, AMR, WMA, and anything soundfile cannot open go
  to PyAV (FFmpeg), which may only use audio demuxers: no playlists, no network, no images.
  (libsndfile stops early in some valid Ogg Vorbis files and decodes Opus at half FFmpeg's speed.)
Every decoder hands blocks to `Resampler`, which mixes them to mono, enforces the duration limit
as they arrive (a tiny file that expands to hours stops at the limit, in time and memory),
resamples with soxr HQ as a stream and passes the 16 kHz blocks on as they are ready:
`stream_audio` hands them to its caller (memory bounded by the block size, whatever the length),
and `decode_audio` is `stream_audio` with a caller that joins them. Every refusal is an
`AudioError` whose `code` is the API's.
A file that holds less than its container declares (an upload cut short, a recorder that crashed)
is refused as `corrupt_audio`, not answered for the part that arrived: PCM containers, Ogg and MP4
are checked from their headers before decoding, compressed formats against their declared duration
and their last packet once decoded (see "completeness" below).
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError

SAMPLE_RATE = 16_000
MIN_RATE = 8_000
MAX_RATE = 192_000
MAX_CHANNELS = 64

AudioSource = bytes | bytearray | memoryview | str | Path | BinaryIO | np.ndarray
BlockConsumer = Callable[[np.ndarray, int | None], None]  # (16 kHz block, samples expected in all or None)

HEAD_BYTES = 4096  # read once up front: the format's magic, and usually every WAV chunk header
READ_BYTES = 1 << 20  # chunk size when reading a stream that cannot seek
BLOCK_SAMPLES = 1 << 20  # samples read per block (all channels), and most a block makes at 16 kHz: bounds memory
RESAMPLE_FRAMES = 1 << 16  # mono frames gathered before each soxr call: fewer calls, same output
MAX_WAV_CHUNKS = 64  # RIFF chunks walked to find "data" before handing the file to soundfile

SUPPORTED = "WAV, FLAC, MP3, Ogg Vorbis/Opus, M4A/AAC, WebM, AIFF, CAF, AMR or WMA"
ACCEPTED_DEMUXERS = "wav,w64,flac,ogg,aiff,caf,au,mp3,aac,mov,matroska,amr,asf"
PCM_GUID = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
SOUNDFILE_KINDS = {"wav", "w64", "flac", "aiff", "caf", "au"}
FFMPEG_DATA_POINTERS = 8  # AV_NUM_DATA_POINTERS: planes an AVFrame holds inline
SAMPLE_TYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32,
                "dbl": np.float64}  # FFmpeg sample formats, "p" (planar) stripped

PYAV_ERRORS = (av.error.FFmpegError, ValueError, OSError, EOFError, RuntimeError, UnicodeDecodeError, IndexError)
SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError)


def decode_audio(source: AudioSource, *, sample_rate: int | None = None, max_seconds: float | None = None,
                 max_bytes: int | None = None, min_samples: int | None = None) -> np.ndarray:
    """Decode, mix to mono and resample to 16 kHz float32 in [-1, 1], or raise `AudioError`.

    `sample_rate` is the rate of a numpy array (default 16 kHz); encoded audio carries its own.
    `max_bytes` is checked before decoding, `max_seconds` while decoding, `min_samples` (at 16 kHz)
    at the end. Arrays are (samples,), (samples, channels) or (channels, samples).
    """
    blocks: list[np.ndarray] = []
    streamed = stream_audio(source, lambda block, expected: blocks.append(block), sample_rate=sample_rate,
                            max_seconds=max_seconds, max_bytes=max_bytes, min_samples=min_samples)
    samples = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)  # one block: no copy
    if streamed.gain != 1.0:
        samples *= np.float32(streamed.gain)
        np.clip(samples, -1.0, 1.0, out=samples)  # the float32 rounding of the gain
    return samples


@dataclass(frozen=True)
class StreamedAudio:
    """What `stream_audio` handed out, once it is all out."""

    num_samples: int  # at 16 kHz, in all blocks
    gain: float  # below 1.0 where the audio went louder than full scale (float sources, resampling overshoot):
    # the factor that brings its peak to 1.0, which `decode_audio` applies; 1.0 for all other audio


def stream_audio(source: AudioSource, on_block: BlockConsumer, *, sample_rate: int | None = None,
                 max_seconds: float | None = None, max_bytes: int | None = None,
                 min_samples: int | None = None) -> StreamedAudio:
    """`decode_audio` as a stream: 16 kHz mono float32 blocks go to `on_block` as they are decoded.

    Memory holds a few blocks of about a million samples at most (a second of frames for
    compressed audio; a numpy array is one block), whatever the length: hours of audio can be
    written out or analysed as they decode. `on_block(block, expected)` gets each new C-contiguous
    block, which it may keep, and the number of samples the container announces for the whole
    audio (for progress; None when unknown; not a promise). An exception it raises stops decoding
    and comes out unchanged. Refusals may come after some blocks were handed out (a limit passed
    or a NaN midway, too short at the end). Blocks are not rescaled: float audio louder than full
    scale goes past [-1, 1] (see `StreamedAudio.gain`).
    """
    sink = Resampler(max_seconds, on_block)
    if isinstance(source, np.ndarray):
        rate = sample_rate or SAMPLE_RATE
        mono = to_mono(*array_channels(source))
        sink.expect(len(mono) / rate)
        sink.add(mono, rate, source.dtype.kind != "f")
    else:
        with open_input(source, max_bytes) as data:
            decode_encoded(data, sink)
    sink.finish()
    check_length(sink.num_samples, min_samples)
    return StreamedAudio(sink.num_samples, sink.gain)


async def decode_audio_async(source: AudioSource, *, sample_rate: int | None = None,
                             max_seconds: float | None = None, max_bytes: int | None = None,
                             min_samples: int | None = None) -> np.ndarray:
    """`decode_audio` on the decode thread pool, so the event loop keeps serving while it runs.

    soundfile, PyAV and soxr release the GIL in their C code, so decodes run in parallel.
    """
    call = functools.partial(decode_audio, source, sample_rate=sample_rate, max_seconds=max_seconds,
                             max_bytes=max_bytes, min_samples=min_samples)
    return await asyncio.get_running_loop().run_in_executor(decode_pool(), call)


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    """One thread per core: decoding is CPU-bound, more threads would only queue inside the CPU."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="emoserve-decode")


def processed_wav(samples: np.ndarray) -> bytes:
    """The 16 kHz mono PCM16 WAV of what the model heard."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ---- checks and errors ----

def check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"the sample rate {rate} Hz is not supported: send audio sampled between "
                         f"{MIN_RATE // 1000} kHz and {MAX_RATE // 1000} kHz (16 kHz is best)",
                         code="unsupported_format")


def check_channels(channels: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"the audio has {channels} channels: send 1 to {MAX_CHANNELS} channels (mono is best)",
                         code="unsupported_format")


def check_length(num_samples: int, min_samples: int | None) -> None:
    if num_samples == 0:
        raise AudioError("the audio contains no samples (is it cut short?): send a recording with sound in it",
                         code="empty_audio")
    if min_samples is not None and num_samples < min_samples:
        raise AudioError(
            f"the audio is too short: {num_samples / SAMPLE_RATE * 1000:.0f} ms; the model needs at least "
            f"{min_samples / SAMPLE_RATE * 1000:.0f} ms ({min_samples} samples at 16 kHz): send a longer clip",
            code="too_short", details={"min_samples": min_samples})


def too_long(max_seconds: float) -> AudioError:
    return AudioError(f"the audio is longer than the limit of {max_seconds:g} s: cut it into shorter clips, "
                      f"or send it through the upload API (/v1/upload) for long audio",
                      code="audio_too_long", details={"max_seconds": max_seconds})


def too_large(size: int, max_bytes: int) -> AudioError:
    return AudioError(f"the audio is {describe_size(size)}, more than the limit of {describe_size(max_bytes)}: "
                      f"send a shorter or more compressed clip, or use the upload API (/v1/upload)",
                      code="payload_too_large", details={"max_bytes": max_bytes})


def describe_size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 100_000 else f"{num_bytes} bytes"


def corrupt(what: str) -> AudioError:
    return AudioError(f"the audio is corrupt or truncated ({what}): send the complete file", code="corrupt_audio")


def cut_short(decoded: float | None, declared: float | None, ending: str = "") -> AudioError:
    """The file holds less than it should: an upload cut off, a recorder that died before closing the file.

    `ending`, where no length is declared: how the file ends ("inside an Ogg page").
    """
    if decoded is not None and declared is not None:
        what = f"{decoded:.2f} s decoded of {declared:.2f} s declared"
    else:
        what = f"it ends {ending}" + (f", after {decoded:.2f} s" if decoded is not None else "")
    return AudioError(f"the audio file appears cut short ({what}): re-export the recording, or upload the complete "
                      f"file again", code="corrupt_audio",
                      details={"decoded_seconds": decoded and round(decoded, 3),
                               "declared_seconds": declared and round(declared, 3)})


def unsupported(what: str) -> AudioError:
    return AudioError(f"the audio format is not supported ({what}): send {SUPPORTED}", code="unsupported_format")


# ---- samples: mixing, limits, resampling ----

def array_channels(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """The array and its channel axis; the channel axis is the short one ((channels, samples) from torchaudio)."""
    if samples.dtype.kind not in "fiu":
        raise AudioError(f"audio arrays hold numbers; got dtype {samples.dtype}", code="unsupported_format")
    if samples.ndim == 1:
        return samples[:, None], 1
    if samples.ndim != 2:
        raise AudioError(f"audio arrays are (samples,), (samples, channels) or (channels, samples); "
                         f"got shape {samples.shape}", code="unsupported_format")
    if samples.shape[1] > MAX_CHANNELS >= samples.shape[0]:
        return samples, 0
    return samples, 1


def to_mono(samples: np.ndarray, channel_axis: int) -> np.ndarray:
    """Float32 mean of the channels of a 2-D array; integers scaled to [-1, 1); NaN/Inf refused."""
    check_channels(samples.shape[channel_axis])
    return mix(samples.T if channel_axis == 1 else samples, samples.dtype)


def mix(rows: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """The mean of equally long channel rows as new float32 samples; the rows are not modified."""
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are refused just below
            mono = rows[0].astype(np.float32)
            for row in rows[1:]:
                mono += row
        if not np.isfinite(mono).all():
            raise AudioError("the audio contains NaN or infinite samples: send finite audio", code="corrupt_audio")
        if len(rows) > 1:
            mono *= np.float32(1 / len(rows))
        return mono
    scale = np.float32(1 / (len(rows) * 2.0 ** (dtype.itemsize * 8 - 1)))
    mono = np.multiply(rows[0], scale, dtype=np.float32)  # one pass: integers in, scaled float32 out
    for row in rows[1:]:
        mono += np.multiply(row, scale, dtype=np.float32)
    if dtype.kind == "u":
        mono -= np.float32(1.0)  # unsigned samples centre on half their range
    return mono


class Resampler:
    """Mono blocks at their source rate in, 16 kHz blocks out to a consumer; the duration limit is checked as
    blocks arrive.

    A source rate may change mid-stream (chained Ogg, odd MP3s): each run of one rate is resampled
    on its own and the runs follow each other.
    """

    def __init__(self, max_seconds: float | None, on_block: BlockConsumer):
        self.max_seconds = max_seconds
        self.on_block = on_block
        self.done_seconds = 0.0  # of the runs already finished
        self.rate = 0
        self.frames = 0  # in the current run
        self.stream: soxr.ResampleStream | None = None
        self.pending: list[np.ndarray] = []
        self.pending_frames = 0
        self.in_range = True  # integer samples, not resampled: within [-1, 1) by construction
        self.peak = 0.0  # of the blocks handed out since the audio may pass full scale
        self.num_samples = 0  # handed out
        self.expected_samples: int | None = None

    def expect(self, seconds: float) -> None:
        """The length the container announces, passed on with every block for progress."""
        self.expected_samples = round(seconds * SAMPLE_RATE) if seconds > 0 else None

    @property
    def seconds(self) -> float:
        return self.done_seconds + (self.frames / self.rate if self.rate else 0.0)

    def frames_left(self, rate: int) -> int | None:
        """Frames at `rate` that still fit under the limit (None: no limit), so readers ask for no more."""
        if self.max_seconds is None:
            return None
        return max(0, round((self.max_seconds - self.seconds) * rate))

    def check_room(self, frames: int, rate: int) -> None:
        """Refuse before decoding when the length is known up front (a WAV header)."""
        if self.max_seconds is not None and self.seconds + frames / rate > self.max_seconds + 0.5 / rate:
            raise too_long(self.max_seconds)

    def add(self, mono: np.ndarray, rate: int, from_integers: bool) -> None:
        """`from_integers`: mixed from integer samples, so within [-1, 1) until resampled."""
        self.in_range &= from_integers and rate == SAMPLE_RATE
        if rate != self.rate:
            check_rate(rate)
            self.end_run()
            self.rate = rate
            self.stream = None if rate == SAMPLE_RATE else \
                soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self.check_room(len(mono), rate)
        self.frames += len(mono)
        self.pending.append(mono)
        self.pending_frames += len(mono)
        if self.pending_frames >= RESAMPLE_FRAMES:
            self.flush(last=False)

    def flush(self, last: bool) -> None:
        """Resample what is pending; `last` also drains soxr's delay line, which needs a call even when empty."""
        if not self.pending and (self.stream is None or not last):
            return
        block = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending or [np.zeros(0, np.float32)])
        self.pending, self.pending_frames = [], 0
        resampled = block if self.stream is None else self.stream.resample_chunk(block, last=last)
        if len(resampled):
            self.emit(resampled)

    def emit(self, block: np.ndarray) -> None:
        if not self.in_range:
            peak = max(float(block.max()), -float(block.min()))
            if not math.isfinite(peak):  # finite float samples near 3e38 that resampling pushed over
                raise AudioError("the audio's sample values are far out of range: send normal audio",
                                 code="corrupt_audio")
            self.peak = max(self.peak, peak)
        self.num_samples += len(block)
        self.on_block(block, self.expected_samples)

    def end_run(self) -> None:
        if self.rate:
            self.flush(last=True)
            self.done_seconds += self.frames / self.rate
        self.frames = 0

    @property
    def has_audio(self) -> bool:
        return self.frames > 0 or self.done_seconds > 0

    def finish(self) -> None:
        self.end_run()

    @property
    def gain(self) -> float:
        """What brings audio louder than full scale down to a peak of 1.0: scaled, not clipped, since clipping
        distorts and the model normalises each clip anyway."""
        return 1 / self.peak if self.peak > 1.0 else 1.0


# ---- encoded input: bytes, paths, file objects ----

@dataclass
class EncodedInput:
    file: BinaryIO  # seekable, starts at offset 0
    size: int
    head: bytes
    buffer: memoryview | None  # the whole input when it is in memory
    path: str | None  # when it is a file on disk (libsndfile reads it natively)


@contextmanager
def open_input(source: AudioSource, max_bytes: int | None) -> Iterator[EncodedInput]:
    """A seekable view of the input whose size is checked before any decoding."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield in_memory(bytes(source) if not isinstance(source, bytes) else source, max_bytes)
    elif isinstance(source, (str, Path)):
        try:
            file = open(source, "rb")  # noqa: SIM115 (closed by the with below, after the checks)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise AudioError(f"no such audio file: {source}", code="not_found") from e
        with file:
            size = os.fstat(file.fileno()).st_size
            check_size(size, max_bytes)
            yield EncodedInput(file, size, file.read(HEAD_BYTES), None, str(source))
    elif hasattr(source, "read"):
        yield from_file_object(source, max_bytes)
    else:
        raise TypeError(f"audio must be bytes, a path, a binary file object or a numpy array, not {type(source)}")


def check_size(size: int, max_bytes: int | None) -> None:
    if size == 0:
        raise AudioError("the audio is empty (0 bytes): send a recording", code="empty_audio")
    if max_bytes is not None and size > max_bytes:
        raise too_large(size, max_bytes)


def in_memory(data: bytes, max_bytes: int | None) -> EncodedInput:
    check_size(len(data), max_bytes)
    return EncodedInput(io.BytesIO(data), len(data), data[:HEAD_BYTES], memoryview(data), None)


def from_file_object(file: BinaryIO, max_bytes: int | None) -> EncodedInput:
    """A seekable file at its start is decoded in place (streamed); anything else is read once, up to the limit.

    A file object positioned past its start is decoded from where it stands.
    """
    seekable = getattr(file, "seekable", lambda: False)()
    if seekable and file.tell() == 0:
        size = file.seek(0, io.SEEK_END)
        file.seek(0)
        check_size(size, max_bytes)
        head = file.read(HEAD_BYTES)
        file.seek(0)
        return EncodedInput(file, size, head, None, None)
    chunks, size = [], 0
    while chunk := file.read(READ_BYTES):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise too_large(size, max_bytes)
        chunks.append(chunk)
    return in_memory(b"".join(chunks), max_bytes)


def sniff(head: bytes) -> str | None:
    """The container the first bytes announce, or None."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"riff" and head[24:28] == b"wave":
        return "w64"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # layer bits 00: ADTS AAC, else MPEG audio
    magic = {b"fLaC": "flac", b"OggS": "ogg", b"caff": "caf", b".snd": "au", b"ID3": "id3",
             b"\x1a\x45\xdf\xa3": "matroska", b"#!AMR": "amr", b"\x30\x26\xb2\x75": "asf"}
    return next((kind for prefix, kind in magic.items() if head.startswith(prefix)), None)


def decode_encoded(data: EncodedInput, sink: Resampler) -> None:
    kind = sniff(data.head)
    check_data_held(data, kind)
    declared = declared_length(data, kind)
    end = 0.0  # where FFmpeg's last frame ends, on the stream's clock
    if kind == "wav" and (layout := pcm16_wav_layout(data)) is not None:
        read_pcm16_wav(data, layout, sink)
    elif kind not in SOUNDFILE_KINDS or not read_with_soundfile(data, sink):
        data.file.seek(0)
        # where libsndfile failed midway (a damaged FLAC frame), what it decoded has been passed on: FFmpeg resumes
        end = read_with_pyav(data, sink, known=kind is not None, skip_frames=sink.frames, declared=declared)
    check_declared_length(declared, max(sink.seconds, end))


def block_frames(channels: int, rate: int) -> int:
    """Frames per read: at most BLOCK_SAMPLES values in, and (8 kHz doubles) at most BLOCK_SAMPLES out."""
    return max(1, min(BLOCK_SAMPLES // channels, BLOCK_SAMPLES * rate // SAMPLE_RATE))


# ---- 16-bit PCM WAV: header parsed here, samples read with numpy ----

def read_pcm16_wav(data: EncodedInput, layout: tuple[int, int, int, int], sink: Resampler) -> None:
    offset, frames, channels, rate = layout
    check_channels(channels)
    check_rate(rate)
    sink.check_room(frames, rate)
    sink.expect(frames / rate)
    block = block_frames(channels, rate)
    for start in range(0, frames, block):
        count = min(block, frames - start) * channels
        position = offset + start * channels * 2
        if data.buffer is not None:
            samples = np.frombuffer(data.buffer, dtype="<i2", count=count, offset=position)
        else:
            samples = np.empty(count, dtype="<i2")
            data.file.seek(position)
            samples = samples[:data.file.readinto(samples) // (2 * channels) * channels]
        sink.add(to_mono(samples.reshape(-1, channels), channel_axis=1), rate, from_integers=True)


def pcm16_wav_layout(data: EncodedInput) -> tuple[int, int, int, int] | None:
    """(data offset, frames, channels, rate) when the RIFF chunks describe 16-bit PCM, else None."""
    if data.head[:4] != b"RIFF" or (wav := wav_data(data)) is None or len(wav.fmt) < 16:
        return None
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", wav.fmt)
    extensible_pcm = tag == 0xFFFE and len(wav.fmt) >= 40 and wav.fmt[24:40] == PCM_GUID
    if not (tag == 1 or extensible_pcm) or bits != 16 or channels == 0 or block_align != 2 * channels:
        return None
    available = data.size - wav.offset
    size = available if wav.size is None else min(wav.size, available)  # a few bytes over: see check_data_held
    return wav.offset, size // block_align, channels, rate


def read_at(data: EncodedInput, position: int, count: int) -> bytes:
    """Up to `count` bytes at `position`; fewer, or none, past the end (where damaged headers point)."""
    if not 0 <= position < data.size:
        return b""
    if position + count <= len(data.head):
        return data.head[position:position + count]
    if data.buffer is not None:
        return bytes(data.buffer[position:position + count])
    data.file.seek(position)
    return data.file.read(count)


# ---- completeness: what the container declares against what the file holds ----
#
# Refused as cut short, before decoding: a PCM container (WAV, RF64, W64, AIFF, CAF, AU) whose data chunk
# declares more than the file holds; an Ogg file that ends inside a page; an MP4 file that ends inside a box.
# After decoding: a FLAC, MP3 (Xing/Info/VBRI), Matroska/WebM or ASF (WMA) file whose decode ends materially
# short of the duration its header declares; any FFmpeg stream whose last packet does not decode, or that
# FFmpeg stops reading with an error (`read_with_pyav`). Lengths a writer did not know (streaming
# placeholders, an MP3 without a Xing header, a live WebM, FLAC with 0 total samples) cannot tell a cut
# between frames from the end: such files are accepted.

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


# ---- soundfile (libsndfile) ----

def read_with_soundfile(data: EncodedInput, sink: Resampler) -> bool:
    """Decode with libsndfile; False when it cannot open the file, fails midway or finds nothing, so PyAV gets a try."""
    data.file.seek(0)
    try:
        sound = sf.SoundFile(data.path or CallbackSafeFile(data.file))
    except SOUNDFILE_ERRORS:
        return False
    with sound:
        check_channels(sound.channels)
        check_rate(sound.samplerate)
        sink.expect(sound.frames / sound.samplerate)
        block = block_frames(sound.channels, sound.samplerate)
        while True:
            left = sink.frames_left(sound.samplerate)
            try:
                samples = sound.read(block if left is None else min(block, left + 1), dtype="float32",
                                     always_2d=True)
            except SOUNDFILE_ERRORS:
                return False
            if not len(samples):
                break
            sink.add(to_mono(samples, channel_axis=1), sound.samplerate, from_integers=False)
    return sink.has_audio


class CallbackSafeFile:
    """A file whose failed seeks return -1 rather than raise.

    libsndfile and FFmpeg call back into Python from C, where a raised exception cannot propagate:
    soundfile prints it, and PyAV stashes it and raises it later from an unrelated call on the same
    thread. Damaged files do ask for impossible seeks (before the start), so report them as C does.
    """

    def __init__(self, file: BinaryIO):
        self.file = file

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self.file.seek(offset, whence)
        except (ValueError, OSError):
            return -1

    def __getattr__(self, name: str):
        return getattr(self.file, name)


# ---- PyAV (FFmpeg) ----

def read_with_pyav(data: EncodedInput, sink: Resampler, known: bool, skip_frames: int = 0,
                   declared: DeclaredLength | None = None) -> float:
    """Decode the first audio stream, skipping damaged packets as players do; returns where its last frame ends (s).

    A stream that ends in a packet cut short or undecodable, or that the demuxer gives up on, was cut:
    refused (`declared`, where the container says how long it is, goes into the message).
    `skip_frames`: leading frames that were decoded and passed on already (by libsndfile).
    """
    try:
        container = av.open(CallbackSafeFile(data.file), mode="r", options={"format_whitelist": ACCEPTED_DEMUXERS},
                            metadata_errors="ignore")
    except PYAV_ERRORS as e:
        raise (corrupt(describe_ffmpeg_error(e)) if known else unsupported("unrecognised content")) from e
    with container:
        if not container.streams.audio:
            raise unsupported("the file has no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise unsupported("its audio codec has no decoder here")
        check_channels(stream.codec_context.channels or 1)
        sink.expect((container.duration or 0) / av.time_base)
        batch = FrameBatch(sink, skip_frames)
        frames = DecodedFrames(container, stream)
        for frame in frames:  # outside the decoder's error handling: the consumer's exceptions pass unchanged
            batch.add(frame)
        batch.flush()
        codec = stream.codec_context.name
        if not sink.has_audio and (frames.cut or frames.failures):
            raise corrupt(frames.cut or f"none of the {frames.failures} {codec} packets could be decoded")
        if frames.cut or frames.broken_end:
            ending = f"where FFmpeg stopped reading it ({frames.cut})" if frames.cut else \
                f"in an incomplete or damaged {codec} packet"
            raise cut_short(max(sink.seconds, frames.end), declared and declared.seconds, ending)
        return frames.end


class DecodedFrames:
    """The frames of one audio stream: damaged packets are counted and skipped, a demuxer error ends it."""

    def __init__(self, container: av.container.InputContainer, stream: av.audio.stream.AudioStream):
        self.container, self.stream = container, stream
        self.failures = 0
        self.cut: str | None = None  # FFmpeg's reason, where reading stopped early
        self.broken_end = False  # the last packet did not decode: cut short by the end of the file, or damaged
        self.last: av.AudioFrame | None = None

    @property
    def end(self) -> float:
        """Seconds: where the last decoded frame ends on the stream's clock (0 where it has none)."""
        frame = self.last
        if frame is None or frame.pts is None or not frame.time_base:
            return 0.0
        return float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate

    def __iter__(self) -> Iterator[av.AudioFrame]:
        try:
            for packet in self.container.demux(self.stream):
                try:
                    frames = self.stream.codec_context.decode(packet)
                    failed = False
                except PYAV_ERRORS:
                    self.failures += 1
                    frames, failed = [], True
                if packet.size:  # not the empty packet that flushes the decoder at the end
                    self.broken_end = failed
                for frame in frames:
                    self.last = frame
                    yield frame
        except PYAV_ERRORS as e:
            self.cut = describe_ffmpeg_error(e)


class FrameBatch:
    """Decoded frames (20-25 ms each) gathered up to a second, then mixed in one numpy call rather than one each.

    Frames are viewed in place (np.frombuffer on FFmpeg's planes), not copied one by one. PyAV finds a
    frame's planes by scanning FFmpeg's pointer array for a NULL, which runs past the channels (into
    garbage, a crash when read) at 8 planar channels and beyond: only the first `channels` planes are
    read, and planar frames of more than 8 channels, where the array lives on the heap, are refused.
    """

    def __init__(self, sink: Resampler, skip_frames: int = 0):
        self.sink = sink
        self.skip_frames = skip_frames
        self.planes: list[list[np.ndarray]] = []  # per frame: one array per plane
        self.layout: tuple[int, str, int] = (0, "", 0)  # rate, sample format, channels
        self.frames = 0

    def add(self, frame: av.AudioFrame) -> None:
        layout = (frame.sample_rate, frame.format.name, frame.layout.nb_channels)
        if layout != self.layout or self.frames >= frame.sample_rate:
            self.flush()
            self.layout = layout
        channels, planar = frame.layout.nb_channels, frame.format.is_planar
        if planar and channels > FFMPEG_DATA_POINTERS:
            raise unsupported(f"compressed audio with {channels} channels: send at most {FFMPEG_DATA_POINTERS}")
        planes = frame.planes[: channels if planar else 1]
        if len(planes) < (channels if planar else 1):
            raise corrupt(f"a frame holds fewer planes than its {channels} channels")
        dtype = SAMPLE_TYPES[frame.format.name.rstrip("p")]
        width = 1 if planar else channels  # values of one frame in one plane
        arrays = [np.frombuffer(plane, dtype, frame.samples * width) for plane in planes]
        skip = min(self.skip_frames, frame.samples)  # frames libsndfile passed on already
        self.skip_frames -= skip
        self.planes.append([array[skip * width:] for array in arrays] if skip else arrays)
        self.frames += frame.samples - skip

    def flush(self) -> None:
        if not self.planes:
            return
        rate, sample_format, channels = self.layout
        rows = [np.concatenate(arrays) for arrays in zip(*self.planes, strict=True)]
        self.planes, self.frames = [], 0
        if sample_format.endswith("p"):
            check_channels(len(rows))
            mono = mix(rows, rows[0].dtype)
        else:
            check_channels(channels)
            mono = to_mono(rows[0].reshape(-1, channels), channel_axis=1)
        self.sink.add(mono, rate, from_integers=rows[0].dtype.kind != "f")


def describe_ffmpeg_error(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
