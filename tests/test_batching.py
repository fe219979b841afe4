from hypothesis import given
from hypothesis import strategies as st

from emoserve.inference.batching import plan_batches, select_batch

lengths_strategy = st.lists(st.integers(400, 500_000), min_size=1, max_size=60)


def padded(lengths, batch):
    return len(batch) * max(lengths[i] for i in batch)


@given(lengths_strategy, st.integers(1, 16), st.integers(400, 2_000_000))
def test_plan_batches_covers_every_clip_once_within_the_budget(lengths, size, budget):
    batches = plan_batches(lengths, size, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= size
        assert len(batch) == 1 or padded(lengths, batch) <= budget


@given(lengths_strategy, st.data(), st.integers(1, 16), st.integers(400, 2_000_000),
       st.sampled_from([0.1, 0.25, 1.0]))
def test_select_batch_keeps_the_anchor_and_the_limits(lengths, data, size, budget, max_padding):
    anchor = data.draw(st.integers(0, len(lengths) - 1))
    batch = select_batch(lengths, anchor, size, budget, max_padding)
    assert anchor in batch and len(set(batch)) == len(batch)
    assert len(batch) <= size
    if len(batch) > 1:
        assert padded(lengths, batch) <= budget
        assert 1 - sum(lengths[i] for i in batch) / padded(lengths, batch) <= max_padding + 1e-12


def test_select_batch_takes_the_clips_closest_in_length():
    lengths = [16_000, 80_000, 81_000, 160_000, 79_000, 400, 82_000]
    batch = select_batch(lengths, anchor=1, max_batch_size=4, max_batch_samples=10**7)
    assert sorted(batch) == [1, 2, 4, 6]  # the ~5 s clips, not the 1 s, 10 s or 25 ms ones


def test_select_batch_respects_the_padded_budget_and_padding_cap():
    lengths = [80_000, 80_000, 80_000, 40_000]
    assert len(select_batch(lengths, 0, 8, max_batch_samples=160_000)) == 2
    assert select_batch(lengths, 3, 8, 10**7, max_padding=0.1) == [3]  # with any 5 s clip, 2.5 s pads ≥ 12.5%
    assert sorted(select_batch(lengths, 3, 8, 10**7, max_padding=0.25)) == [0, 1, 2, 3]


def test_a_clip_longer_than_the_budget_runs_alone():
    assert select_batch([10**6, 1_000, 1_000], 0, 8, 100_000) == [0]
    assert [0] in plan_batches([10**6, 1_000, 1_000], 8, 100_000)
