"""Make a two-speaker stereo "call" from two espeak-ng voices: the agent on the left, the customer on the right.

    python examples/make_call.py call.wav

Each line is spoken by espeak-ng (`-v en-us` for the agent, `-v en-gb+f3` for the customer) and placed at its
time on its own channel with numpy; soundfile writes the stereo WAV (no sox needed). The customer's last
line starts before the agent has finished, so the call has an overlap. Used by docs/calls.md.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 22_050  # espeak-ng's own rate
AGENT, CUSTOMER = 0, 1
VOICES = {AGENT: "en-us", CUSTOMER: "en-gb+f3"}
SCRIPT = [  # (start in seconds, channel, line)
    (0.5, AGENT, "Thank you for calling. How can I help you today?"),
    (4.0, CUSTOMER, "My internet has been down for three days and nobody has called me back!"),
    (9.0, AGENT, "I am sorry to hear that. Let me look at your account."),
    (12.5, CUSTOMER, "This is the third time I am calling. It is ridiculous."),
    (17.0, AGENT, "I have booked a technician for tomorrow morning."),
    (18.6, CUSTOMER, "Fine. Thank you."),
]


def speak(text: str, voice: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if rate != RATE:
        raise RuntimeError(f"espeak-ng spoke at {rate} Hz, not {RATE}")
    return samples


def make_call() -> np.ndarray:
    """(samples, 2) float32: each line on its speaker's channel, from its start time."""
    lines = [(int(start * RATE), channel, speak(text, VOICES[channel])) for start, channel, text in SCRIPT]
    call = np.zeros((max(first + len(voice) for first, _, voice in lines) + RATE, 2), np.float32)
    for first, channel, voice in lines:
        call[first: first + len(voice), channel] += voice
    return call


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "call.wav")
    sf.write(target, make_call(), RATE, subtype="PCM_16")
    print(f"wrote {target}")
