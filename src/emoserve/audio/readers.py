"""The decoders: the first bytes pick one, never the file name or the client's MIME type.

16-bit PCM WAV is parsed here and read with numpy (no decoder, no copy of in-memory bytes); other
WAV, FLAC, AIFF, CAF and AU go to soundfile (libsndfile); the rest, and what soundfile cannot open,
to PyAV (FFmpeg) with audio demuxers only. Each hands its blocks to the sink: `Resampler` (mixed) or
`ChannelSplitter` (channels kept).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf

from ..model.config import SAMPLE_RATE
from .inputs import EncodedInput, sniff
from .integrity import DeclaredLength, check_data_held, check_declared_length, declared_length, wav_data
from .refusals import check_channels, check_rate, corrupt, cut_short, unsupported
from .sink import ChannelSplitter, Resampler

Sink = Resampler | ChannelSplitter  # mixed to mono, or each channel kept

BLOCK_SAMPLES = 1 << 20  # samples read per block (all channels), and most a block makes at 16 kHz: bounds memory
ACCEPTED_DEMUXERS = "wav,w64,flac,ogg,aiff,caf,au,mp3,aac,mov,matroska,amr,asf"
PCM_GUID = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
SOUNDFILE_KINDS = {"wav", "w64", "flac", "aiff", "caf", "au"}
FFMPEG_DATA_POINTERS = 8  # AV_NUM_DATA_POINTERS: planes an AVFrame holds inline
SAMPLE_TYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32,
                "dbl": np.float64}  # FFmpeg sample formats, "p" (planar) stripped

PYAV_ERRORS = (av.error.FFmpegError, ValueError, OSError, EOFError, RuntimeError, UnicodeDecodeError, IndexError)
SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError)


def decode_encoded(data: EncodedInput, sink: Sink) -> None:
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


def declared_channels(data: EncodedInput) -> int | None:
    """The channel count the container declares, from its header (and FFmpeg's probe), without decoding the
    audio; None when no reader can tell."""
    kind = sniff(data.head)
    if kind == "wav" and (layout := pcm16_wav_layout(data)) is not None:
        return layout[2]
    if kind in SOUNDFILE_KINDS:
        data.file.seek(0)
        try:
            with sf.SoundFile(data.path or CallbackSafeFile(data.file)) as sound:
                return sound.channels
        except SOUNDFILE_ERRORS:
            pass
    data.file.seek(0)
    try:
        with av.open(CallbackSafeFile(data.file), mode="r", options={"format_whitelist": ACCEPTED_DEMUXERS},
                     metadata_errors="ignore") as container:
            streams = container.streams.audio
            if not streams or streams[0].codec_context is None:
                return None
            return streams[0].codec_context.channels or None
    except PYAV_ERRORS:
        return None


def block_frames(channels: int, rate: int) -> int:
    """Frames per read: at most BLOCK_SAMPLES values in, and (8 kHz doubles) at most BLOCK_SAMPLES out."""
    return max(1, min(BLOCK_SAMPLES // channels, BLOCK_SAMPLES * rate // SAMPLE_RATE))


# ---- 16-bit PCM WAV: header parsed here, samples read with numpy ----

def read_pcm16_wav(data: EncodedInput, layout: tuple[int, int, int, int], sink: Sink) -> None:
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
        sink.add_frames(samples.reshape(-1, channels), 1, rate, from_integers=True)


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


# ---- soundfile (libsndfile) ----

def read_with_soundfile(data: EncodedInput, sink: Sink) -> bool:
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
            sink.add_frames(samples, 1, sound.samplerate, from_integers=False)
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

def read_with_pyav(data: EncodedInput, sink: Sink, known: bool, skip_frames: int = 0,
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

    def __init__(self, sink: Sink, skip_frames: int = 0):
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
        from_integers = rows[0].dtype.kind != "f"
        if sample_format.endswith("p"):
            self.sink.add_rows(rows, rate, from_integers)
        else:
            self.sink.add_frames(rows[0].reshape(-1, channels), 1, rate, from_integers)


def describe_ffmpeg_error(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
