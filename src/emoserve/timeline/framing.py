"""The 20 ms grid: how audio is cut into what the model sees, for long files and streams alike.

The model makes frame t of samples [320t, 320t + 400), at t × 0.02 s. A window that starts on a
multiple of 320 samples therefore has frame j equal to frame start/320 + j of the whole audio, so
windows can be stitched into one grid that a single pass would have made. Where two windows
overlap, each keeps the half of the overlap nearer its own centre: the frames with the most
context on both sides. Voiced stretches are cut to at most `max_segment_s` and widened to the
model's minimum length before they reach the model.
"""

from __future__ import annotations

import math

from ..model.config import FRAME_RATE, HOP, RECEPTIVE_FIELD, SAMPLE_RATE

Cut = tuple[int, int]  # [start, end) in samples


# ---- samples ↔ seconds ----


def to_samples(seconds: float) -> int:
    """Whole samples in `seconds` (rounded down): limits and budgets."""
    return int(seconds * SAMPLE_RATE)


def to_seconds(samples: int) -> float:
    """A sample index as seconds, to the microsecond: the times results carry."""
    return round(samples / SAMPLE_RATE, 6)


def frame_time(frame: int) -> float:
    """When frame `frame` starts, in seconds."""
    return round(frame / FRAME_RATE, 6)


def grid_floor(seconds: float) -> int:
    """`seconds` as samples, rounded down to a whole number of frames (a long file's window)."""
    return to_samples(seconds) // HOP * HOP


def grid_round(seconds: float) -> int:
    """`seconds` as samples, rounded to the nearest whole number of frames (overlaps, a stream's window and hop)."""
    return round(seconds * SAMPLE_RATE / HOP) * HOP


# ---- frames and windows ----


def frame_count(num_samples: int) -> int:
    """Frames the model makes of a clip: floor((N − 400) / 320) + 1."""
    return max(0, (num_samples - RECEPTIVE_FIELD) // HOP + 1)


def plan_windows(num_samples: int, window: int, overlap: int) -> list[int]:
    """Window starts: every (window − overlap) samples, and a last one flush with the end.

    Every start is a multiple of 320, so a window's frame j is frame start/320 + j of the whole.
    The last window starts at the first multiple of 320 that lets it reach the end, which keeps its
    overlap with the one before at least `overlap`.
    """
    if num_samples <= window:
        return [0]
    hop = window - overlap
    starts = list(range(0, num_samples - window, hop))
    starts.append(last_window_start(num_samples, window))
    return starts


def last_window_start(num_samples: int, window: int) -> int:
    """The first multiple of 320 from which a window of `window` samples reaches the end (0 if one covers all)."""
    return max(0, -(-(num_samples - window) // HOP) * HOP)


def owned_frames(starts: list[int], num_samples: int, window: int) -> list[tuple[int, int]]:
    """The frames [first, last) each window contributes: overlaps split at their middle."""
    lengths = [min(window, num_samples - s) for s in starts]
    bounds = [0] + [overlap_middle(starts[k], lengths[k], starts[k + 1]) for k in range(len(starts) - 1)]
    return list(zip(bounds, bounds[1:] + [frame_count(num_samples)]))


def overlap_middle(start: int, length: int, next_start: int) -> int:
    """The frame where a window of `length` samples at `start` hands over to the next window.

    Both starts are multiples of 320; frames before the middle of their overlap belong to the
    first window, the rest to the next, so each frame comes from the window where it sits furthest
    from an edge.
    """
    return (next_start // HOP + start // HOP + frame_count(length)) // 2


# ---- voiced stretches → segments for the model ----


def model_cuts(stretches: list[Cut], max_segment_s: float, min_samples: int, num_samples: int) -> list[Cut]:
    """Stretches as the model takes them: each at most `max_segment_s`, at least `min_samples`."""
    return [fit_length(cut, min_samples, num_samples) for cut in split_long(stretches, max_segment_s)]


def split_long(cuts: list[Cut], max_segment_s: float) -> list[Cut]:
    """Cut stretches longer than the limit into equal parts (silero cuts at pauses first; this is the guarantee)."""
    limit = to_samples(max_segment_s)
    out = []
    for start, end in cuts:
        parts = math.ceil((end - start) / limit)
        bounds = [start + (end - start) * i // parts for i in range(parts + 1)]
        out.extend(zip(bounds[:-1], bounds[1:]))
    return out


def fit_length(cut: Cut, min_samples: int, num_samples: int) -> Cut:
    """Widen a stretch shorter than the model's minimum around its centre, within the audio."""
    start, end = cut
    if end - start >= min_samples:
        return cut
    start = min(max(0, (start + end - min_samples) // 2), num_samples - min_samples)
    return start, start + min_samples
