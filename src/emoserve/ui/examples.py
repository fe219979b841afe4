"""Example clips that work offline: spoken by espeak-ng once, then kept in the model cache.

No recordings ship with the package; without espeak-ng the UI simply shows no examples.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

PAUSE_S = 1.2  # between the sentences of the long example: what voice-activity detection cuts at


@dataclass(frozen=True)
class Example:
    label: str  # what the UI lists
    filename: str
    sentences: tuple[str, ...]
    voice: tuple[str, ...]  # espeak-ng options: voice, speed, pitch, amplitude
    granularity: str
    long_file: bool


EXAMPLES = (
    Example("Good news (whole clip)", "good-news.wav",
            ("We did it! I can't believe it, we actually won the whole thing!",),
            ("-v", "en-us+f3", "-s", "175", "-p", "75"), "utterance", False),
    Example("Complaint (timeline)", "complaint.wav",
            ("Stop it. I told you three times already. Do not touch my things!",),
            ("-v", "en-us+m3", "-s", "185", "-p", "30", "-a", "180"), "frame", False),
    Example("A 30 s story (long file, voiced segments)", "story.wav",
            ("I finally got the letter this morning.", "They said no. After all that work, they just said no.",
             "I sat in the kitchen for an hour.", "Then my sister called, and she had the best idea.",
             "We are going to start our own company!", "Honestly, I have never been this excited."),
            ("-v", "en-gb+f2", "-s", "150", "-p", "50"), "utterance", True),
)


def espeak(text: str, voice: tuple[str, ...]) -> tuple[np.ndarray, int]:
    wav = subprocess.run(["espeak-ng", *voice, "--stdout", text], check=True, capture_output=True, timeout=30).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return samples, rate


def speak(example: Example, path: Path) -> None:
    """The example's sentences, with pauses between them, written atomically to `path`."""
    parts = []
    rate = 0
    for sentence in example.sentences:
        samples, rate = espeak(sentence, example.voice)
        parts += [samples, np.zeros(int(PAUSE_S * rate), np.float32)]
    partial = path.with_suffix(".part")
    sf.write(partial, np.concatenate(parts[:-1]), rate, format="WAV", subtype="PCM_16")
    os.replace(partial, path)


def example_clips(directory: Path) -> list[tuple[Example, Path]]:
    """The examples that exist or can be made now; none (logged once) without espeak-ng."""
    missing = [e for e in EXAMPLES if not (directory / e.filename).exists()]
    if missing and shutil.which("espeak-ng") is None:
        log.info("web UI: no example clips (install espeak-ng to have spoken examples)")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        for example in missing:
            try:
                speak(example, directory / example.filename)
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("web UI: could not make the example %s with espeak-ng: %s", example.filename, e)
    return [(e, directory / e.filename) for e in EXAMPLES if (directory / e.filename).exists()]
