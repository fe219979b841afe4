"""Any audio users send → the model's input: 16 kHz mono float32 in [-1, 1], or a typed refusal.

The first bytes pick the decoder, never the file name or the client's MIME type (`readers`):
- 16-bit PCM WAV is parsed here and read with numpy: no decoder, and no copy of in-memory bytes;
- other WAV, FLAC, AIFF, CAF and AU go to soundfile (libsndfile);
- Ogg (Vorbis, Opus), MP3, M4A/AAC, WebM/Matroska, AMR, WMA, and anything soundfile cannot open go
  to PyAV (FFmpeg), which may only use audio demuxers: no playlists, no network, no images.
  (libsndfile stops early in some valid Ogg Vorbis files and decodes Opus at half FFmpeg's speed.)
Every decoder hands blocks to `sink.Resampler`, which mixes them to mono, enforces the duration limit
as they arrive (a tiny file that expands to hours stops at the limit, in time and memory),
resamples with soxr HQ as a stream and passes the 16 kHz blocks on as they are ready:
`stream_audio` hands them to its caller (memory bounded by the block size, whatever the length),
and `decode_audio` is `stream_audio` with a caller that joins them (`decode`). `decode_channels`
(`stream_channels`) keeps the channels apart (`sink.ChannelSplitter`): each is resampled as it would be
alone in a mono file; `check_splittable` refuses a mono file for that from its header alone. Every
refusal is an `AudioError` whose `code` is the API's (`refusals`).
A file that holds less than its container declares (an upload cut short, a recorder that crashed)
is refused as `corrupt_audio`, not answered for the part that arrived (`integrity`): PCM containers,
Ogg and MP4 are checked from their headers before decoding, compressed formats against their declared
duration and their last packet once decoded.
"""

from ..model.config import SAMPLE_RATE
from .decode import (
    StreamedAudio,
    check_splittable,
    decode_audio,
    decode_channels,
    processed_wav,
    stream_audio,
    stream_channels,
)
from .inputs import AudioSource
from .refusals import MAX_CHANNELS, MAX_RATE, MIN_RATE, SUPPORTED
from .sink import BlockConsumer

__all__ = [
    "MAX_CHANNELS",
    "MAX_RATE",
    "MIN_RATE",
    "SAMPLE_RATE",
    "SUPPORTED",
    "AudioSource",
    "BlockConsumer",
    "StreamedAudio",
    "check_splittable",
    "decode_audio",
    "decode_channels",
    "processed_wav",
    "stream_audio",
    "stream_channels",
]
