"""Grouping clips into padded batches: similar lengths together, under a padded-samples budget."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_samples: int) -> list[list[int]]:
    """Indices of clips, grouped so that each batch pads little and fits the budget.

    Clips are sorted by length; a batch grows while (size × longest clip) stays within
    `max_batch_samples` and size within `max_batch_size`. A clip longer than the budget gets a
    batch of its own, so long clips never blow memory by being padded next to many others.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # ascending order: the newcomer is the longest
        if current and (len(current) + 1 > max_batch_size or (len(current) + 1) * longest > max_batch_samples):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
