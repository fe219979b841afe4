"""Any audio users send → the model's input (moved here from emoserve/audio.py; split in the next commit)."""

from .integrity import *  # noqa: F403
from .integrity import (  # noqa: F401
    MAX_CHANNELS,
    SAMPLE_RATE,
    AudioSource,
    Resampler,
    StreamedAudio,
    decode_audio,
    decode_audio_async,
    open_input,
    processed_wav,
    read_with_pyav,
    stream_audio,
)
