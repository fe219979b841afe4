"""Every refusal the decoder makes, as an `AudioError` whose `code` is the API's and whose message says what to send."""

from __future__ import annotations

from ..errors import AudioError
from ..model.config import SAMPLE_RATE

MIN_RATE = 8_000
MAX_RATE = 192_000
MAX_CHANNELS = 64
SUPPORTED = "WAV, FLAC, MP3, Ogg Vorbis/Opus, M4A/AAC, WebM, AIFF, CAF, AMR or WMA"


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
