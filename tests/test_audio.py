from __future__ import annotations

import faulthandler
import io
import re
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoserve import AudioError
from emoserve.audio import (
    MAX_CHANNELS,
    SAMPLE_RATE,
    StreamedAudio,
    check_splittable,
    decode_audio,
    decode_channels,
    processed_wav,
    stream_audio,
)
from emoserve.audio.inputs import open_input
from emoserve.audio.readers import read_with_pyav
from emoserve.audio.sink import Resampler
from emoserve.errors import InvalidParameterError
from tests.samples import (
    ENCODINGS,
    audio_file,
    encode,
    espeak_available,
    noise,
    soundfile_bytes,
    speech,
    sweep,
    tone,
    wav_bytes,
)

REFUSALS = {"empty_audio", "corrupt_audio", "unsupported_format", "audio_too_long", "payload_too_large", "too_short"}
STEREO_PEAK = 0.375  # tone(channels=2): left at 0.5, right at 0.25, mixed to mono
WAV_SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ALAW", "ULAW"]


def assert_model_input(samples: np.ndarray) -> None:
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert samples.flags.c_contiguous
    assert np.isfinite(samples).all()
    assert np.abs(samples).max(initial=0.0) <= 1.0


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))


def assert_tone(samples: np.ndarray, seconds: float, peak: float, frequency: float = 440.0,
                length_tolerance: float = 0.0, level_tolerance: float = 0.02) -> None:
    """16 kHz mono audio of a sine: its length, pitch and level (the middle half, away from codec edges)."""
    assert_model_input(samples)
    assert abs(len(samples) - seconds * SAMPLE_RATE) <= length_tolerance * SAMPLE_RATE + 1
    middle = samples[len(samples) // 4: 3 * len(samples) // 4]
    assert dominant_frequency(middle) == pytest.approx(frequency, abs=SAMPLE_RATE / len(middle) + 1)
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(peak / np.sqrt(2), rel=level_tolerance)


def refusal(source, **limits) -> AudioError:
    with pytest.raises(AudioError) as caught:
        decode_audio(source, **limits)
    return caught.value


def riff_wav(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"".join(cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1) for cid, data in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def pcm16_fmt(channels: int, rate: int) -> bytes:
    return struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)


class CountingReader(io.RawIOBase):
    """A seekable binary file that counts the bytes decoders read."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.data.readinto(buffer)
        self.bytes_read += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.data.seek(offset, whence)

    def tell(self) -> int:
        return self.data.tell()


class Unseekable(io.RawIOBase):
    """A pipe or socket: read only, once."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.data.readinto(buffer)
        self.bytes_read += count
        return count


@pytest.fixture(scope="module")
def stereo_tone() -> np.ndarray:
    return tone(1.0, 44_100, channels=2)


# ---- formats ----

@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_compressed_format_decodes_to_16khz_mono(encoding, stereo_tone):
    samples = decode_audio(encode(stereo_tone, 44_100, encoding))
    # lossy codecs pad (AAC priming, Vorbis blocks) and shift the level a little; AMR, a speech codec, more
    assert_tone(samples, 1.0, STEREO_PEAK, length_tolerance=0.06, level_tolerance=0.25 if encoding == "amr_nb" else 0.1)


@pytest.mark.parametrize("subtype", WAV_SUBTYPES)
def test_every_wav_encoding_decodes(subtype, stereo_tone):
    samples = decode_audio(wav_bytes(stereo_tone, 44_100, subtype))
    assert_tone(samples, 1.0, STEREO_PEAK, level_tolerance=0.03)


@pytest.mark.parametrize(("file_format", "subtype"), [("AIFF", "PCM_16"), ("FLAC", "PCM_24"), ("CAF", "FLOAT"),
                                                      ("AU", "PCM_16"), ("W64", "PCM_16"), ("WAVEX", "PCM_16"),
                                                      ("RF64", "PCM_16")])
def test_other_libsndfile_containers_decode(file_format, subtype, stereo_tone):
    samples = decode_audio(soundfile_bytes(stereo_tone, 44_100, file_format, subtype))
    assert_tone(samples, 1.0, STEREO_PEAK)


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 32_000, 44_100, 48_000, 96_000, 192_000])
@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_any_rate_from_8_to_192_khz_is_resampled_to_16khz(rate, subtype):
    samples = decode_audio(wav_bytes(tone(0.5, rate, frequency=1_000.0), rate, subtype))
    assert_tone(samples, 0.5, 0.5, frequency=1_000.0)


def test_pcm16_16khz_mono_wav_is_read_exactly():
    pcm = (noise(SAMPLE_RATE, amplitude=0.3) * 32767).astype(np.int16)
    samples = decode_audio(wav_bytes(pcm))
    np.testing.assert_array_equal(samples, pcm / np.float32(32768))


def test_wav_chunks_around_the_data_are_skipped_and_a_streaming_data_size_reads_to_the_end():
    pcm = np.arange(-500, 501, dtype=np.int16)
    odd_chunk = (b"LIST", b"INFOISFT\x05\x00\x00\x00emo\x00\x00")  # odd size: padded
    expected = pcm / np.float32(32768)
    np.testing.assert_array_equal(
        decode_audio(riff_wav((b"fmt ", pcm16_fmt(1, SAMPLE_RATE)), odd_chunk, (b"data", pcm.tobytes()))), expected)
    streaming = riff_wav((b"fmt ", pcm16_fmt(1, SAMPLE_RATE)), (b"data", b""))[:-4] + b"\xff\xff\xff\xff"
    np.testing.assert_array_equal(decode_audio(streaming + pcm.tobytes()), expected)


def test_stereo_is_averaged_to_mono():
    left = tone(0.5, 44_100)
    opposite = np.stack([left, -left], axis=1)
    for subtype in ("PCM_16", "FLOAT"):
        assert np.abs(decode_audio(wav_bytes(opposite, 44_100, subtype))).max() < 1e-3
    assert np.abs(decode_audio(opposite, sample_rate=44_100)).max() < 1e-3


def test_many_channels_are_mixed():
    six = tone(0.5, 48_000, channels=6)
    expected_peak = float(np.mean([0.5 / (c + 1) for c in range(6)]))
    assert_tone(decode_audio(wav_bytes(six, 48_000)), 0.5, expected_peak)


@pytest.mark.parametrize("encoding", ["m4a_aac", "ogg_opus"])
def test_eight_channel_compressed_audio_is_mixed(encoding):
    """7.1 in planar float: PyAV lists a ninth, garbage plane for it, which must never be read."""
    eight = tone(1.0, 48_000, channels=8)
    expected_peak = float(np.mean([0.5 / (c + 1) for c in range(8)]))
    assert_tone(decode_audio(encode(eight, 48_000, encoding)), 1.0, expected_peak, length_tolerance=0.06,
                level_tolerance=0.1)


def test_the_content_decides_the_decoder_not_the_file_name(tmp_path, stereo_tone):
    mp3_named_wav = tmp_path / "clip.wav"
    mp3_named_wav.write_bytes(encode(stereo_tone, 44_100, "mp3"))
    wav_named_mp3 = tmp_path / "clip.mp3"
    wav_named_mp3.write_bytes(wav_bytes(stereo_tone, 44_100))
    assert_tone(decode_audio(mp3_named_wav), 1.0, STEREO_PEAK, level_tolerance=0.1)
    assert_tone(decode_audio(wav_named_mp3), 1.0, STEREO_PEAK)


def test_louder_than_full_scale_float_audio_is_scaled_not_clipped():
    loud = tone(0.5, SAMPLE_RATE, amplitude=4.0)
    samples = decode_audio(wav_bytes(loud, SAMPLE_RATE, "FLOAT"))
    assert np.abs(samples).max() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(samples, loud / 4.0, atol=1e-3)


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    if not espeak_available():
        pytest.skip("needs espeak-ng")
    return speech(rate=SAMPLE_RATE)


@pytest.mark.parametrize("encoding", ["mp3", "webm_opus", "m4a_aac", "ogg_vorbis"])
def test_speech_survives_each_codec(encoding, voice):
    samples = decode_audio(encode(np.stack([voice, voice], axis=1), SAMPLE_RATE, encoding, bit_rate=64_000))
    assert abs(len(samples) - len(voice)) < 0.1 * SAMPLE_RATE
    # at the best alignment: codecs may delay the signal by a few ms that the container does not undo
    n = len(samples) + len(voice)
    correlation = np.fft.irfft(np.fft.rfft(samples, n) * np.conj(np.fft.rfft(voice, n)), n)
    assert correlation.max() / (np.linalg.norm(samples) * np.linalg.norm(voice)) > 0.9


# ---- inputs ----

@pytest.mark.parametrize("encoding", ["pcm16_wav", "float_wav", "flac", "mp3"])
def test_every_kind_of_input_gives_the_same_samples(tmp_path, stereo_tone, encoding):
    data = audio_file(encoding, stereo_tone, 44_100)
    path = tmp_path / "clip"
    path.write_bytes(data)
    expected = decode_audio(data)
    with path.open("rb") as file:
        from_file = decode_audio(file)
    past_junk = io.BytesIO(b"junk" + data)
    past_junk.seek(4)
    for source in (bytearray(data), memoryview(data), str(path), path, io.BytesIO(data), Unseekable(data), past_junk):
        np.testing.assert_array_equal(decode_audio(source), expected)
    np.testing.assert_array_equal(from_file, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "int32", "uint8"])
def test_numpy_arrays_are_scaled_mixed_and_resampled(dtype):
    wave = tone(0.5, 44_100, channels=2)
    if dtype.startswith("int"):
        wave = (wave * np.iinfo(dtype).max).astype(dtype)
    elif dtype == "uint8":
        wave = (wave * 127 + 128).astype(dtype)
    else:
        wave = wave.astype(dtype)
    samples = decode_audio(wave, sample_rate=44_100)
    assert_tone(samples, 0.5, STEREO_PEAK, level_tolerance=0.03)
    np.testing.assert_array_equal(decode_audio(wave.T, sample_rate=44_100), samples)  # (channels, samples)


def test_numpy_default_rate_is_16khz():
    wave = tone(0.25, SAMPLE_RATE)
    np.testing.assert_array_equal(decode_audio(wave), wave)


@pytest.mark.parametrize("bad", [np.zeros(100, dtype=complex), np.zeros(100, dtype=bool), np.zeros((2, 3, 100))])
def test_numpy_arrays_that_are_not_audio_are_refused(bad):
    assert refusal(bad).code == "unsupported_format"


def test_wrong_python_types_are_a_programming_error():
    with pytest.raises(TypeError):
        decode_audio(12345)


# ---- refusals ----

def test_empty_input_is_refused(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for source in (b"", empty, io.BytesIO(), Unseekable(b""), np.zeros(0, np.float32)):
        assert refusal(source).code == "empty_audio"


def test_a_header_without_samples_is_empty_audio():
    assert refusal(riff_wav((b"fmt ", pcm16_fmt(1, SAMPLE_RATE)), (b"data", b""))).code == "empty_audio"


def test_missing_file_is_not_found(tmp_path):
    assert refusal(tmp_path / "nope.wav").code == "not_found"


@pytest.mark.parametrize("data", [np.random.default_rng(0).bytes(5000), b"hello, this is not audio\n" * 100,
                                  b"\x89PNG\r\n\x1a\n" + bytes(2000), b"%PDF-1.7\n" + bytes(2000)])
def test_unknown_content_is_unsupported(data):
    error = refusal(data)
    assert error.code == "unsupported_format"
    assert "WAV" in error.message and "MP3" in error.message


def test_a_container_without_audio_is_unsupported():
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode(None))
    error = refusal(buffer.getvalue())
    assert error.code == "unsupported_format"
    assert "audio stream" in error.message


@pytest.mark.parametrize("source_kind", ["float_wav", "array"])
def test_nan_and_inf_samples_are_corrupt(source_kind):
    wave = tone(0.2, SAMPLE_RATE)
    for bad in (np.nan, np.inf):
        wave[100] = bad
        source = wav_bytes(wave, SAMPLE_RATE, "FLOAT") if source_kind == "float_wav" else wave
        assert refusal(source).code == "corrupt_audio"


@pytest.mark.parametrize("rate", [4_000, 7_999, 192_001, 384_000])
def test_rates_outside_8_to_192_khz_are_refused(rate):
    for source, limits in ((wav_bytes(tone(0.1, rate), rate, "PCM_16"), {}),
                           (wav_bytes(tone(0.1, rate), rate, "FLOAT"), {}),
                           (tone(0.1, rate), {"sample_rate": rate})):
        error = refusal(source, **limits)
        assert error.code == "unsupported_format"
        assert "8 kHz" in error.message and "192 kHz" in error.message


def test_absurd_channel_counts_are_refused():
    too_many = np.zeros((1000, MAX_CHANNELS + 1), np.float32)
    for source in (wav_bytes(too_many, SAMPLE_RATE, "PCM_16"), wav_bytes(too_many, SAMPLE_RATE, "FLOAT"), too_many):
        error = refusal(source)
        assert error.code == "unsupported_format"
        assert f"{MAX_CHANNELS + 1} channels" in error.message


def test_too_short_names_the_minimum():
    error = refusal(tone(0.01, SAMPLE_RATE), min_samples=400)
    assert error.code == "too_short"
    assert "400 samples" in error.message and "25 ms" in error.message
    assert error.details == {"min_samples": 400}
    assert len(decode_audio(tone(0.025, SAMPLE_RATE), min_samples=400)) == 400


# ---- files cut short ----

CUTS = (0.3, 0.6, 0.9)  # of the file's bytes
PCM_CONTAINERS = [("AIFF", "PCM_16"), ("AIFF", "ULAW"), ("CAF", "FLOAT"), ("CAF", "ALAW"), ("AU", "PCM_16"),
                  ("W64", "PCM_16"), ("WAVEX", "PCM_24"), ("RF64", "PCM_16"), ("FLAC", "PCM_24")]
CUT_KINDS = [*ENCODINGS, *(f"wav_{subtype}" for subtype in WAV_SUBTYPES),
             *(f"{file_format}_{subtype}" for file_format, subtype in PCM_CONTAINERS)]
# Every format above declares its length, but FFmpeg's own (experimental) Vorbis encoder writes a Matroska
# Duration far shorter than the audio (0.3 s for 4 s), and FFmpeg drops a Matroska block that the end of the
# file cuts without a word: nothing tells these cuts. (WebM Vorbis from libvorbis carries a true Duration.)
UNDETECTED_CUTS = {"webm_vorbis"}
# Written as a live recorder writes (`encode(streamed=True)`): no length in the header. A cut shows where the
# file then ends inside an Ogg page or a frame that does not decode; FFmpeg drops a cut MP3 frame or Matroska
# block silently. (The ipod muxer cannot write M4A to a pipe; WMA depends on where in an ASF packet the cut
# falls: in the padding, every frame is whole. FFmpeg's Vorbis encoder puts all of its audio in one Ogg page:
# there is no boundary between pages to cut at.)
STREAMED = ["flac", "ogg_opus", "webm_opus", "webm_vorbis", "mp3", "adts_aac", "amr_nb", "wma"]
STREAMED_CUT_SHOWS = {"flac", "ogg_vorbis", "ogg_opus", "adts_aac", "amr_nb"}  # with ogg_vorbis: cut inside its page
STREAMED_CUT_INVISIBLE = {"webm_opus", "webm_vorbis", "mp3"}


@pytest.fixture(scope="module")
def four_seconds() -> np.ndarray:
    return tone(4.0, 44_100, channels=2)


def file_of_kind(kind: str, samples: np.ndarray, rate: int) -> bytes:
    """One of CUT_KINDS: an encoding, "wav_SUBTYPE" or "FORMAT_SUBTYPE" (libsndfile)."""
    if kind in ENCODINGS:
        return encode(samples, rate, kind)
    if kind.startswith("wav_"):
        return wav_bytes(samples, rate, kind.removeprefix("wav_"))
    file_format, subtype = kind.split("_", 1)
    return soundfile_bytes(samples, rate, file_format, subtype)


def assert_cut_short(source, **limits) -> AudioError:
    error = refusal(source, **limits)
    assert error.code == "corrupt_audio" and "appears cut short" in error.message, error
    return error


@pytest.mark.parametrize("kind", CUT_KINDS)
def test_a_file_cut_short_is_corrupt_where_its_format_declares_its_length(kind, four_seconds):
    data = file_of_kind(kind, four_seconds, 44_100)
    assert len(decode_audio(data)) > 3.9 * SAMPLE_RATE
    for keep in CUTS:
        cut = data[: int(len(data) * keep)]
        if kind in UNDETECTED_CUTS:
            assert len(decode_audio(cut)) < (keep + 0.1) * 4.0 * SAMPLE_RATE
        else:
            assert_cut_short(cut)


@pytest.mark.parametrize(("kind", "keep", "decoded"), [("wav_PCM_16", 0.3, 1.2), ("wav_FLOAT", 0.9, 3.6),
                                                       ("AIFF_PCM_16", 0.6, 2.4), ("flac", 0.6, 2.19),
                                                       ("mp3", 0.6, 2.43), ("webm_opus", 0.6, 2.4),
                                                       ("wma", 0.9, 3.67)])
def test_the_refusal_says_how_much_of_the_declared_length_arrived(kind, keep, decoded, four_seconds):
    data = file_of_kind(kind, four_seconds, 44_100)
    error = assert_cut_short(data[: int(len(data) * keep)])
    declared = error.details["declared_seconds"]
    assert declared == pytest.approx(4.0, abs=0.06)  # MP3, Opus and WMA count their padding in
    assert error.details["decoded_seconds"] == pytest.approx(decoded, abs=0.05)
    assert f"{error.details['decoded_seconds']:.2f} s decoded of {declared:.2f} s declared" in error.message
    assert "re-export" in error.message and "upload the complete file again" in error.message


def packet_starts(data: bytes) -> list[int]:
    """Where FFmpeg's packets start in the file: frames, Ogg pages, ASF packets, Matroska blocks."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return sorted({packet.pos for packet in container.demux(audio=0) if packet.size and packet.pos})


@pytest.mark.parametrize("encoding", STREAMED)
def test_a_file_without_a_declared_length_cut_between_frames_is_a_shorter_file(encoding, four_seconds):
    data = encode(four_seconds, 44_100, encoding, streamed=True)
    whole = len(decode_audio(data))
    starts = packet_starts(data)
    for keep in CUTS:
        samples = decode_audio(data[: starts[int(len(starts) * keep)]])
        assert keep - 0.15 < len(samples) / whole < keep + 0.15, keep


@pytest.mark.parametrize("encoding", sorted(STREAMED_CUT_SHOWS | STREAMED_CUT_INVISIBLE))
def test_a_file_without_a_declared_length_cut_inside_a_frame(encoding, four_seconds):
    data = encode(four_seconds, 44_100, encoding, streamed=True)
    for keep in CUTS:
        cut = data[: int(len(data) * keep)]
        if encoding in STREAMED_CUT_SHOWS:
            assert_cut_short(cut)
        else:
            assert 0 < len(decode_audio(cut)) < (keep + 0.1) * 4.0 * SAMPLE_RATE


def data_size_offset(wav: bytes) -> int:
    return wav.index(b"data") + 4


@pytest.mark.parametrize("subtype", WAV_SUBTYPES)
def test_a_wav_written_before_its_length_was_known_reads_to_the_end(subtype, stereo_tone):
    """The data sizes writers leave when they cannot go back: none yet, FFmpeg and arecord to a pipe, SoX."""
    data = wav_bytes(stereo_tone, 44_100, subtype)
    expected = decode_audio(data)
    block_align = struct.unpack_from("<H", data, data.index(b"fmt ") + 8 + 12)[0]
    for placeholder in (0, 0xFFFFFFFF, 0x80000000, 0x7FFFFF00, 0x7FFFF000 // block_align * block_align):
        streamed = bytearray(data)
        struct.pack_into("<I", streamed, data_size_offset(data), placeholder)
        np.testing.assert_array_equal(decode_audio(bytes(streamed)), expected)
        half = decode_audio(bytes(streamed[: len(data) // 2]))  # cut: nothing tells it from the end
        assert abs(len(half) - len(expected) / 2) < 0.01 * SAMPLE_RATE


def au_streaming(data: bytearray) -> None:
    struct.pack_into(">I", data, 8, 0xFFFFFFFF)


def caf_streaming(data: bytearray) -> None:
    struct.pack_into(">q", data, data.index(b"data") + 4, -1)


def w64_streaming(data: bytearray) -> None:
    struct.pack_into("<Q", data, data.index(b"data") + 16, 0)


@pytest.mark.parametrize(("file_format", "unknown_length"), [("AU", au_streaming), ("CAF", caf_streaming),
                                                             ("W64", w64_streaming)])
def test_other_containers_written_before_their_length_was_known_read_to_the_end(file_format, unknown_length,
                                                                                stereo_tone):
    data = bytearray(soundfile_bytes(stereo_tone, 44_100, file_format, "PCM_16"))
    expected = decode_audio(bytes(data))
    unknown_length(data)
    np.testing.assert_array_equal(decode_audio(bytes(data)), expected)
    assert abs(len(decode_audio(bytes(data[: len(data) // 2]))) - len(expected) / 2) < 0.02 * SAMPLE_RATE


def test_a_data_size_that_counts_the_header_in_is_read_as_the_file_end(stereo_tone):
    """Some writers put the file's size (or the RIFF size) in the data chunk: 44 bytes over, no audio missing."""
    data = wav_bytes(stereo_tone, 44_100)
    for size in (len(data), len(data) - 8):
        sloppy = bytearray(data)
        struct.pack_into("<I", sloppy, data_size_offset(data), size)
        np.testing.assert_array_equal(decode_audio(bytes(sloppy)), decode_audio(data))


def test_a_wav_header_that_claims_more_than_the_file_holds_is_corrupt_before_decoding():
    data = bytearray(wav_bytes(tone(1.0, SAMPLE_RATE)))
    struct.pack_into("<I", data, data_size_offset(bytes(data)), 0x7FFFFFF0)  # 18 hours
    blocks = []
    with pytest.raises(AudioError) as caught:
        stream_audio(bytes(data), lambda block, expected: blocks.append(block), max_seconds=30.0)
    assert caught.value.code == "corrupt_audio" and "1.00 s decoded of 67108.86 s declared" in caught.value.message
    assert not blocks
    assert_cut_short(wav_bytes(tone(1.0, SAMPLE_RATE))[:44])  # the header alone


def test_a_big_endian_wav_cut_short_is_corrupt(stereo_tone):
    buffer = io.BytesIO()
    sf.write(buffer, stereo_tone, 44_100, format="WAV", subtype="PCM_16", endian="BIG")
    data = buffer.getvalue()
    assert data[:4] == b"RIFX"
    np.testing.assert_array_equal(decode_audio(data), decode_audio(wav_bytes(stereo_tone, 44_100)))
    assert assert_cut_short(data[: len(data) // 2]).details == {"decoded_seconds": 0.5, "declared_seconds": 1.0}


def test_an_mp3_vbri_header_declares_its_length_too(four_seconds):
    """Fraunhofer's VBRI header, where LAME writes Xing/Info: 36 bytes into the first frame, frames at +14."""
    data = bytearray(encode(four_seconds, 44_100, "mp3"))
    info = data.index(b"Info")
    frames = struct.unpack_from(">I", data, info + 8)[0]
    data[info: info + 18] = b"VBRI" + struct.pack(">HHHII", 1, 0, 0, len(data), frames)
    assert len(decode_audio(bytes(data))) > 3.9 * SAMPLE_RATE
    error = assert_cut_short(bytes(data[: len(data) * 6 // 10]))
    assert error.details["declared_seconds"] == pytest.approx(frames * 1152 / 44_100, abs=0.001)


def test_an_mp4_cut_anywhere_says_which_box_the_file_ends_in(four_seconds):
    """Phones write the index (moov) last; a fragmented MP4 cut between fragments is a valid shorter file."""
    data = encode(four_seconds, 44_100, "m4a_aac")
    assert "inside its 'mdat' box" in assert_cut_short(data[: len(data) // 2]).message
    assert "inside its 'moov' box (the index)" in assert_cut_short(data[:-100]).message
    fragmented = encode(four_seconds, 44_100, "m4a_aac", options={"movflags": "frag_keyframe+empty_moov",
                                                                   "frag_duration": "500000"})
    fragments = [match.start() - 4 for match in re.finditer(b"moof", fragmented)]
    assert len(fragments) > 5
    assert 1.9 * SAMPLE_RATE < len(decode_audio(fragmented[: fragments[4]])) < 2.1 * SAMPLE_RATE
    assert_cut_short(fragmented[: fragments[4] + 100])


@pytest.mark.parametrize("kind", ["pcm16_wav", "float_wav", "flac", "mp3", "ogg_opus", "webm_opus", "m4a_aac"])
def test_every_kind_of_input_refuses_a_cut_file_alike(tmp_path, kind, four_seconds):
    data = audio_file(kind, four_seconds, 44_100)
    cut = data[: len(data) * 6 // 10]
    path = tmp_path / "cut"
    path.write_bytes(cut)
    sources = [cut, bytearray(cut), memoryview(cut), str(path), path, io.BytesIO(cut), Unseekable(cut)]
    messages = {assert_cut_short(source).message for source in sources}
    with path.open("rb") as file:
        messages.add(assert_cut_short(file).message)
    with pytest.raises(AudioError) as caught:
        stream_audio(path, lambda block, expected: None)
    assert messages == {caught.value.message}


def test_streaming_refuses_a_cut_pcm_file_before_its_first_block_and_a_compressed_one_after_its_last():
    """Compressed audio shows its cut at the end: a consumer (longform, jobs) has had blocks, and discards them."""
    wave = tone(30.0, 44_100, channels=2)
    for kind, blocks_before in (("float_wav", False), ("flac", True)):
        data = audio_file(kind, wave, 44_100)
        blocks: list[np.ndarray] = []
        with pytest.raises(AudioError) as caught:
            stream_audio(data[: len(data) * 9 // 10], lambda block, expected, seen=blocks: seen.append(block))
        assert caught.value.code == "corrupt_audio"
        assert bool(blocks) is blocks_before, kind


# ---- limits ----

def test_too_many_bytes_is_refused_before_decoding(tmp_path):
    garbage = bytes(2000)  # undecodable: only a size check can refuse it as too large
    path = tmp_path / "big"
    path.write_bytes(garbage)
    for source in (garbage, path, io.BytesIO(garbage), Unseekable(garbage)):
        error = refusal(source, max_bytes=1000)
        assert error.code == "payload_too_large"
        assert error.details == {"max_bytes": 1000}
    assert decode_audio(wav_bytes(tone(0.1, SAMPLE_RATE)), max_bytes=4000) is not None


def test_a_stream_is_read_only_up_to_the_byte_limit():
    stream = Unseekable(bytes(50 << 20))
    assert refusal(stream, max_bytes=1 << 20).code == "payload_too_large"
    assert stream.bytes_read <= 3 << 20


@pytest.mark.parametrize("source_kind", ["pcm16_wav", "float_wav", "flac", "mp3", "ogg_opus", "m4a_aac", "array"])
def test_duration_limit(source_kind):
    wave = tone(3.0, 44_100)
    source = wave if source_kind == "array" else audio_file(source_kind, wave, 44_100)
    rate = {"sample_rate": 44_100} if source_kind == "array" else {}
    error = refusal(source, max_seconds=2.0, **rate)
    assert error.code == "audio_too_long"
    assert "2 s" in error.message and error.details == {"max_seconds": 2.0}
    assert len(decode_audio(source, max_seconds=3.2, **rate)) > 2.9 * SAMPLE_RATE


def test_exactly_the_limit_is_allowed():
    assert len(decode_audio(wav_bytes(tone(2.0, 44_100), 44_100), max_seconds=2.0)) == 2 * SAMPLE_RATE


@pytest.mark.parametrize("encoding", ["pcm16_wav", "flac", "mp3", "ogg_opus", "webm_opus"])
def test_decoding_stops_at_the_duration_limit(encoding):
    """A minute of audio with a 2 s limit: the decoders read a small part of the file, not all of it.

    (FFmpeg reads some fixed amount more: its 32 KB buffer, the last 64 KB of an Ogg file for its length.)
    """
    wave = tone(60.0, 8_000)
    data = audio_file(encoding, wave, 8_000, bit_rate=64_000)
    reader = CountingReader(data)
    assert refusal(reader, max_seconds=2.0).code == "audio_too_long"
    assert reader.bytes_read < 0.25 * len(data)


def test_an_hour_that_compresses_to_kilobytes_is_refused_in_bounded_memory():
    bomb = soundfile_bytes(np.zeros(3600 * 8_000, np.int16), 8_000, "FLAC")
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        assert refusal(bomb, max_seconds=30.0).code == "audio_too_long"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10e6  # the whole hour at 16 kHz float32 would be 230 MB


# ---- output ----

def test_processed_wav_is_16khz_mono_pcm16_of_the_samples():
    samples = decode_audio(tone(0.5, 44_100), sample_rate=44_100)
    wav = processed_wav(samples)
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    np.testing.assert_allclose(decode_audio(wav), samples, atol=1e-4)


# ---- streaming ----

def stream_blocks(source, **limits) -> tuple[list[np.ndarray], list[int | None], StreamedAudio]:
    """The blocks `stream_audio` hands out, the expected totals that came with them, and its summary."""
    blocks, expected = [], []

    def take(block: np.ndarray, expected_samples: int | None) -> None:
        blocks.append(block)
        expected.append(expected_samples)

    return blocks, expected, stream_audio(source, take, **limits)


@pytest.mark.parametrize("kind", [*ENCODINGS, *(f"wav_{subtype}" for subtype in WAV_SUBTYPES)])
def test_streamed_blocks_join_to_what_decode_audio_returns(kind, stereo_tone):
    if kind.startswith("wav_"):
        data = wav_bytes(stereo_tone, 44_100, kind.removeprefix("wav_"))
    else:
        data = encode(stereo_tone, 44_100, kind)
    blocks, expected, streamed = stream_blocks(data)
    joined = np.concatenate(blocks)
    np.testing.assert_array_equal(joined, decode_audio(data))
    assert streamed == StreamedAudio(len(joined), 1.0)
    for block in blocks:
        assert_model_input(block)
    assert len(set(expected)) == 1  # what the container announced, with every block
    if "vorbis" not in kind:  # FFmpeg's own Vorbis encoder writes wrong timestamps: its files announce nonsense
        assert abs(expected[0] - len(joined)) < 0.1 * SAMPLE_RATE


def test_streamed_blocks_are_not_rescaled_and_the_gain_says_how_decode_audio_scales_them():
    data = wav_bytes(tone(0.5, 44_100, amplitude=4.0), 44_100, "FLOAT")
    blocks, _, streamed = stream_blocks(data)
    joined = np.concatenate(blocks)
    assert np.abs(joined).max() == pytest.approx(4.0, rel=1e-2)
    assert streamed.gain == pytest.approx(1 / np.abs(joined).max())
    np.testing.assert_array_equal(decode_audio(data), np.clip(joined * np.float32(streamed.gain), -1, 1))


@pytest.mark.parametrize(("kind", "rate"), [("pcm16_wav", 16_000), ("flac", 8_000), ("mp3", 8_000)])
def test_streaming_ten_minutes_holds_a_few_blocks_not_the_file(tmp_path, kind, rate):
    """10 minutes are 38.4 MB at 16 kHz float32; streamed, memory stays at a few blocks (a path: nothing in memory)."""
    path = tmp_path / "long"
    path.write_bytes(audio_file(kind, np.tile(tone(1.0, rate), 600), rate))
    seen = []
    tracemalloc.start()
    try:
        streamed = stream_audio(path, lambda block, expected: seen.append(len(block)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert abs(streamed.num_samples - 600 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    assert sum(seen) == streamed.num_samples and len(seen) > 5
    assert peak < 10e6


@pytest.mark.parametrize("encoding", ["pcm16_wav", "float_wav", "flac", "mp3", "ogg_opus", "m4a_aac"])
def test_an_exception_of_the_consumer_comes_out_unchanged(encoding):
    """A full disk under the caller is not a cut in the audio: decoders never take it for one of theirs."""
    full_disk = OSError(28, "No space left on device")
    calls = []

    def write(block: np.ndarray, expected: int | None) -> None:
        calls.append(len(block))
        if len(calls) == 1:  # once only: a decoder that swallowed it could not be rescued by the next block
            raise full_disk

    with pytest.raises(OSError) as caught:
        stream_audio(audio_file(encoding, tone(3.0, 44_100), 44_100), write)
    assert caught.value is full_disk


def test_a_flac_that_libsndfile_gives_up_on_midway_is_finished_by_ffmpeg():
    """libsndfile passes its first block on, then loses sync at a damaged frame: FFmpeg takes over where it stopped,
    skipping the damaged frame, and the whole comes out as FFmpeg alone decodes it."""
    data = bytearray(soundfile_bytes(np.tile(tone(1.0, 44_100, channels=2), (20, 1)), 44_100, "FLAC"))
    data[len(data) * 4 // 5] ^= 0xFF
    data = bytes(data)
    with sf.SoundFile(io.BytesIO(data)) as sound:
        assert len(sound.read(524_288)) == 524_288  # stream_audio's first block of 44.1 kHz stereo
        with pytest.raises(sf.LibsndfileError):
            sound.read()
    alone = []
    sink = Resampler(None, lambda block, expected: alone.append(block))
    with open_input(data, None) as source:
        read_with_pyav(source, sink, known=True)
    sink.finish()
    blocks, _, _ = stream_blocks(data)
    assert len(blocks) > 1
    np.testing.assert_array_equal(np.concatenate(blocks), np.concatenate(alone))
    assert 19.0 * SAMPLE_RATE < len(np.concatenate(blocks)) < 20.0 * SAMPLE_RATE
    # damaged, and shorter than its STREAMINFO says: FFmpeg's last frame ends at 18 of 20 s
    assert assert_cut_short(data[: len(data) * 9 // 10]).details["decoded_seconds"] == pytest.approx(18.0, abs=0.1)


# ---- never a crash, a hang or an unexpected exception ----

def fuzz_seeds() -> list[bytes]:
    wave = np.stack([tone(0.3, 22_050), noise(6615, amplitude=0.2)], axis=1)
    seeds = [encode(wave, 22_050, encoding) for encoding in ENCODINGS]
    seeds += [encode(tone(0.3, 48_000, channels=8), 48_000, encoding) for encoding in ("m4a_aac", "ogg_opus")]
    seeds += [wav_bytes(wave, 22_050, subtype) for subtype in ("PCM_16", "PCM_24", "FLOAT", "ULAW")]
    return seeds + [soundfile_bytes(wave, 22_050, "AIFF", "PCM_16"), soundfile_bytes(wave, 22_050, "CAF", "PCM_16")]


SEEDS = fuzz_seeds()
MAGICS = [b"RIFF\x00\x00\x00\x00WAVE", b"fLaC", b"OggS", b"ID3\x04", b"\xff\xfb", b"\xff\xf1",
          b"\x00\x00\x00\x1cftypM4A ", b"\x1a\x45\xdf\xa3", b"FORM\x00\x00\x00\x00AIFF", b"caff", b"#!AMR"]


def decodes_or_refuses(data: bytes) -> None:
    try:
        samples = decode_audio(data, max_seconds=5.0, max_bytes=1 << 20)
    except AudioError as error:
        assert error.code in REFUSALS
    else:
        assert_model_input(samples)


@pytest.fixture
def watchdog():
    """A hang in C code cannot be interrupted: dump the stacks and exit instead of stalling the suite."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@FUZZ
@given(data=st.one_of(st.binary(max_size=3000), st.sampled_from(MAGICS).flatmap(
    lambda magic: st.binary(max_size=3000).map(lambda tail: magic + tail))))
def test_fuzz_random_bytes(watchdog, data):
    decodes_or_refuses(data)


@FUZZ
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=40),
       cut=st.floats(0.05, 1.0))
def test_fuzz_mutated_and_truncated_files(watchdog, seed, edits, cut):
    data = bytearray(seed)
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    decodes_or_refuses(bytes(data[: max(1, int(cut * len(data)))]))


@FUZZ
@given(seed=st.sampled_from(SEEDS), magic=st.sampled_from(MAGICS), keep=st.integers(0, 64))
def test_fuzz_wrong_headers(watchdog, seed, magic, keep):
    decodes_or_refuses(magic + seed[keep:])


# ---- channels kept apart (channels=split) ----

def stereo_pair(rate: int) -> np.ndarray:
    """Two different signals, (n, 2) float32: a sweep on the left, noise on the right."""
    left = sweep(0.7, rate)
    right = noise(len(left), seed=3, amplitude=0.3)
    return np.stack([left, right], axis=1).astype(np.float32)


def mono_of_each(make_file, stereo: np.ndarray) -> list[np.ndarray]:
    return [decode_audio(make_file(np.ascontiguousarray(stereo[:, k]))) for k in range(stereo.shape[1])]


SPLIT_FILES = {
    "pcm16_wav_44k": lambda samples: wav_bytes(samples, 44_100),
    "float_wav_48k": lambda samples: wav_bytes(samples, 48_000, "FLOAT"),
    "flac_22k": lambda samples: soundfile_bytes(samples, 22_050, "FLAC"),
    "pcm16_wav_16k": lambda samples: wav_bytes(samples, SAMPLE_RATE),
}
SPLIT_RATES = {"pcm16_wav_44k": 44_100, "float_wav_48k": 48_000, "flac_22k": 22_050, "pcm16_wav_16k": SAMPLE_RATE}


@pytest.mark.parametrize("kind", list(SPLIT_FILES))
def test_each_kept_channel_is_that_channel_alone_as_a_mono_file(kind):
    stereo = stereo_pair(SPLIT_RATES[kind])
    channels = decode_channels(SPLIT_FILES[kind](stereo))
    assert channels.dtype == np.float32 and channels.shape[0] == 2
    for row, alone in zip(channels, mono_of_each(SPLIT_FILES[kind], stereo), strict=True):
        np.testing.assert_array_equal(row, alone)  # exact: the same steps
    assert not np.allclose(channels[0], channels[1], atol=1e-2)


def test_ffmpeg_planar_and_numpy_channels_are_kept_as_mono_files_of_each():
    stereo = stereo_pair(44_100)
    channels = decode_channels(encode(stereo, 44_100, "flac"), max_seconds=5)
    alone = [decode_audio(encode(np.ascontiguousarray(stereo[:, k]), 44_100, "flac")) for k in range(2)]
    np.testing.assert_allclose(channels, np.stack(alone), rtol=0, atol=1e-5)
    as_rows = decode_channels(np.ascontiguousarray(stereo.T), sample_rate=44_100)  # (channels, samples)
    np.testing.assert_allclose(as_rows, np.stack([decode_audio(stereo[:, k].copy(), sample_rate=44_100)
                                                  for k in range(2)]), rtol=0, atol=1e-5)


def test_each_kept_channel_gets_its_own_gain():
    loud, quiet = tone(0.5, SAMPLE_RATE, amplitude=4.0), tone(0.5, SAMPLE_RATE, amplitude=0.5)
    channels = decode_channels(np.stack([loud, quiet], axis=1))
    np.testing.assert_array_equal(channels[0], decode_audio(loud))
    np.testing.assert_array_equal(channels[1], decode_audio(quiet))
    assert np.abs(channels[1]).max() == pytest.approx(0.5, abs=1e-3)


def test_many_channels_are_all_kept_up_to_the_limit():
    six = tone(0.5, 48_000, channels=6)
    channels = decode_channels(wav_bytes(six, 48_000))
    assert channels.shape == (6, SAMPLE_RATE // 2)
    for c, row in enumerate(channels):
        assert_tone(row, 0.5, 0.5 / (c + 1))
    too_many = np.zeros((1000, MAX_CHANNELS + 1), np.float32)
    with pytest.raises(AudioError) as caught:
        decode_channels(too_many)
    assert caught.value.code == "unsupported_format"


def test_splitting_a_mono_file_is_an_invalid_parameter_that_says_it_has_one_channel():
    with pytest.raises(InvalidParameterError, match="one channel") as caught:
        decode_channels(wav_bytes(tone(0.5)))
    assert caught.value.code == "invalid_parameter"


HEADER_FILES = {**SPLIT_FILES, **{kind: (lambda samples, kind=kind: encode(samples, 44_100, kind))
                                   for kind in ("mp3", "ogg_opus", "m4a_aac", "wma")}}


@pytest.mark.parametrize("kind", list(HEADER_FILES))
def test_a_mono_file_is_refused_for_splitting_from_its_header_without_decoding(kind, monkeypatch):
    stereo = stereo_pair(SPLIT_RATES.get(kind, 44_100))
    make = HEADER_FILES[kind]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the audio was decoded")

    monkeypatch.setattr("emoserve.audio.decode.decode_encoded", no_decoding)
    with pytest.raises(InvalidParameterError, match="one channel") as caught:
        check_splittable(make(np.ascontiguousarray(stereo[:, 0])))
    assert caught.value.code == "invalid_parameter"
    check_splittable(make(stereo))


def test_splitting_checks_what_no_header_describes_only_when_decoding():
    check_splittable(b"these are my meeting notes, not a recording " * 20)  # the decoder refuses it later
    check_splittable(np.zeros((1000, 2), np.float32))
    with pytest.raises(InvalidParameterError, match="one channel"):
        check_splittable(np.zeros(1000, np.float32))


def test_kept_channels_keep_the_duration_limit():
    with pytest.raises(AudioError) as caught:
        decode_channels(wav_bytes(tone(2.0, 44_100, channels=2), 44_100), max_seconds=1.0)
    assert caught.value.code == "audio_too_long"
