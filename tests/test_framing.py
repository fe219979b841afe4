"""The 20 ms grid shared by long files and streams: frames, windows, and the cuts the model takes."""

from emoserve.model.config import HOP
from emoserve.timeline.framing import (
    fit_length,
    frame_count,
    frame_time,
    grid_floor,
    grid_round,
    model_cuts,
    owned_frames,
    plan_windows,
    split_long,
    to_seconds,
)

from .samples import SAMPLE_RATE


def test_frames_follow_the_models_stride_and_receptive_field():
    assert [frame_count(n) for n in (0, 399, 400, 719, 720, 16_000)] == [0, 0, 1, 1, 2, 49]
    assert frame_time(49) == 0.98 and to_seconds(24_000) == 1.5


def test_lengths_in_seconds_land_on_whole_frames():
    assert grid_floor(30.0) == 480_000 and grid_floor(1.0390625) == 16_320  # 16 625 samples: 51.95 frames
    assert grid_round(1.0390625) == 16_640 and grid_round(0.5) == 8_000
    assert all(value % HOP == 0 for value in (grid_floor(1.234), grid_round(1.234)))


def test_window_plan_starts_on_the_frame_grid_and_covers_the_file():
    for num_samples in (480_000, 480_001, 1_000_000, 1_234_567, 9_600_000):
        starts = plan_windows(num_samples, 480_000, 64_000)
        assert all(s % HOP == 0 for s in starts)
        assert starts[0] == 0 and starts[-1] + 480_000 >= num_samples
        overlaps = [a + 480_000 - b for a, b in zip(starts, starts[1:])]
        assert all(o >= 64_000 for o in overlaps)
        owned = owned_frames(starts, num_samples, 480_000)
        assert owned[0][0] == 0 and owned[-1][1] == frame_count(num_samples)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(owned, owned[1:]))  # a partition of [0, T)
        for (first, last), start in zip(owned, starts):  # every frame a window gives, it computed
            assert start // HOP <= first and last <= start // HOP + frame_count(min(480_000, num_samples - start))


def test_long_segments_are_split_into_equal_parts_under_the_limit():
    parts = split_long([(0, 75 * SAMPLE_RATE), (80 * SAMPLE_RATE, 90 * SAMPLE_RATE)], 30.0)
    seconds = [(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in parts]
    assert seconds == [(0, 25), (25, 50), (50, 75), (80, 90)]


def test_short_stretches_are_widened_to_the_models_minimum_within_the_audio():
    assert fit_length((1_000, 1_100), 400, 10_000) == (850, 1_250)
    assert fit_length((0, 100), 400, 10_000) == (0, 400)
    assert fit_length((9_950, 10_000), 400, 10_000) == (9_600, 10_000)
    assert model_cuts([(0, 100), (1_000, 70_000)], 2.0, 400, 70_000) == [(0, 400), (1_000, 24_000),
                                                                         (24_000, 47_000), (47_000, 70_000)]
