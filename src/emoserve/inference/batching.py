"""Grouping clips into padded batches: similar lengths together, under a padded-samples budget.

`plan_batches` splits a known list of clips (offline, `analyze_batch`); `select_batch` picks the
next batch of a live queue around its oldest request (the engine), so nobody starves.
"""

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


def select_batch(lengths: Sequence[int], anchor: int, max_batch_size: int, max_batch_samples: int,
                 max_padding: float = 1.0) -> list[int]:
    """The anchor clip plus the clips closest to it in length that fit the budget.

    Grows from `anchor` through the length-sorted clips, each step taking the neighbour
    (shorter or longer) that adds the fewest padded samples, while the batch stays within
    `max_batch_size`, `max_batch_samples` (count × longest) and `max_padding` (its padding
    ratio). The anchor alone is always a batch, however long. Returns indices into `lengths`.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    position = order.index(anchor)
    low, high = position, position  # the batch is order[low : high + 1]
    count, longest, total = 1, lengths[anchor], lengths[anchor]

    def fits(new_count: int, new_longest: int, new_total: int) -> bool:
        padded = new_count * new_longest
        return new_count <= max_batch_size and padded <= max_batch_samples \
            and 1.0 - new_total / padded <= max_padding

    while count < max_batch_size:
        candidates = []
        if low > 0:
            shorter = lengths[order[low - 1]]
            candidates.append((longest - shorter, -1, shorter))
        if high + 1 < len(order):
            longer = lengths[order[high + 1]]
            candidates.append(((longer - longest) * count, 1, longer))
        candidates = [c for c in candidates if fits(count + 1, max(longest, c[2]), total + c[2])]
        if not candidates:
            break
        _, side, length = min(candidates)
        if side < 0:
            low -= 1
        else:
            high += 1
        count, longest, total = count + 1, max(longest, length), total + length
    return order[low: high + 1]
