"""Voice activity: silero-vad's probabilities block by block, and silero's rules as one incremental machine."""

import numpy as np
import pytest
import torch
from silero_vad import get_speech_timestamps_from_probs

from emoserve.config import LongformConfig, VadConfig
from emoserve.timeline.vad import SpeechDetector, SpeechSegmenter, VadOptions, silero_sequence_model, speech_regions

from .samples import SAMPLE_RATE, noise, sweep

# ---- probabilities ----


@pytest.mark.parametrize("block", [7_919, 100])  # not multiples of 512; and shorter than a frame
def test_speech_detector_fed_in_blocks_equals_silero_in_one_pass(block):
    wav = np.concatenate([sweep(2.3), noise(20_011, seed=1), sweep(1.7, f0=300)])
    detector = SpeechDetector()
    for start in range(0, len(wav), block):
        detector.feed(wav[start: start + block])
    ours = detector.finish()
    reference = silero_sequence_model().audio_forward(wav)
    assert len(ours) == -(-len(wav) // 512)
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_loading_silero_keeps_the_thread_count_of_torch():
    silero_sequence_model.cache_clear()
    before = torch.get_num_threads()
    silero_sequence_model()
    assert torch.get_num_threads() == before


# ---- stretches: silero's rules, incrementally and to the end ----


def random_probs(rng, n: int) -> np.ndarray:
    """Runs of silence, speech and the undecided band between silero's two thresholds."""
    out = []
    while len(out) < n:
        level = [0.02, 0.95, 0.42][int(rng.integers(3))]
        out += list(np.clip(level + rng.normal(0, 0.08, int(rng.integers(1, 60))), 0, 1))
    return np.array(out[:n], np.float32)


def random_options(rng) -> VadOptions:
    vad = VadConfig(threshold=float(rng.choice([0.3, 0.5, 0.7])), min_speech_ms=int(rng.choice([0, 100, 250])),
                    min_silence_ms=int(rng.choice([0, 100, 300, 700])),
                    speech_pad_ms=int(rng.choice([0, 30, 100, 400])))
    return VadOptions.of(LongformConfig(max_segment_s=float(rng.choice([1.0, 2.0, 30.0])), vad=vad))


def silero_regions(probs: np.ndarray, num_samples: int, options: VadOptions) -> list[tuple[int, int]]:
    """silero's own function over the whole audio (what `longform.speech_regions` called before it ran ours)."""
    stamps = get_speech_timestamps_from_probs(
        probs.tolist(), sampling_rate=SAMPLE_RATE, threshold=options.threshold,
        min_speech_duration_ms=options.min_speech_ms, max_speech_duration_s=options.max_speech_s,
        min_silence_duration_ms=options.min_silence_ms, speech_pad_ms=options.speech_pad_ms,
        audio_length_samples=num_samples)
    return [(s["start"], s["end"]) for s in stamps]


@pytest.mark.parametrize("seed", range(40))
def test_segmenter_fed_in_pieces_equals_silero_over_the_whole_stream(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 1500))
    probs = random_probs(rng, n)
    num_samples = 512 * (n - 1) + int(rng.integers(1, 513))
    options = random_options(rng)
    segmenter = SpeechSegmenter(options)
    found, position = [], 0
    while position < n - 3:
        step = int(rng.integers(1, 50))
        found += segmenter.push(probs[position: min(position + step, n - 3)])
        position = min(position + step, n - 3)
    found += segmenter.finish(probs[position:], num_samples)
    assert found == silero_regions(probs, num_samples, options)


@pytest.mark.parametrize("seed", range(40))
def test_the_regions_of_a_whole_file_are_silero_s_at_both_ends_of_its_last_block(seed):
    """A file's last block holds 1 to 512 samples: the segmenter run to the end equals silero for all of them."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 1500))
    probs = random_probs(rng, n)
    options = random_options(rng)
    for num_samples in (512 * (n - 1) + 1, 512 * n):
        assert speech_regions(probs, num_samples, options) == silero_regions(probs, num_samples, options)


def test_a_stretch_is_final_as_soon_as_its_silence_is_long_enough():
    options = LongformConfig(vad=VadConfig(min_silence_ms=320, speech_pad_ms=64, min_speech_ms=100))
    segmenter = SpeechSegmenter(VadOptions.of(options))
    assert segmenter.push(np.full(20, 0.9)) == []  # speech
    assert segmenter.push(np.full(10, 0.01)) == []  # 320 ms of silence is seen at the 11th block
    assert segmenter.push(np.full(1, 0.01)) == [(0, 20 * 512 + 1024)]

