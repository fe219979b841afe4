"""Per-client budgets: requests and failed keys, per client, held only as long as their window."""

from __future__ import annotations

import types

import limits.storage.memory
import pytest

from emoserve.errors import EmoserveError
from emoserve.throttle import Throttle


@pytest.fixture
def clock(monkeypatch):
    """The time `limits`' memory storage sees, moved by the test (its sweeps run on a real timer thread)."""
    now = types.SimpleNamespace(value=1_000_000.0)
    monkeypatch.setattr(limits.storage.memory, "time", types.SimpleNamespace(time=lambda: now.value))
    return now


def test_a_spent_budget_refuses_with_the_seconds_left_and_other_clients_keep_theirs():
    throttle = Throttle(requests_per_minute=2, auth_failures_per_minute=0)
    throttle.take_request("a")
    throttle.take_request("a")
    with pytest.raises(EmoserveError) as refused:
        throttle.take_request("a")
    assert refused.value.code == "rate_limited" and 1 <= refused.value.details["retry_after"] <= 60
    throttle.take_request("b")


def test_failed_keys_are_counted_per_address_and_refuse_even_before_the_key_is_checked():
    throttle = Throttle(requests_per_minute=0, auth_failures_per_minute=2)
    for _ in range(2):
        throttle.check_sign_in("10-guesses")
        throttle.sign_in_failed("10-guesses")
    with pytest.raises(EmoserveError) as refused:
        throttle.check_sign_in("10-guesses")
    assert refused.value.code == "rate_limited" and "retry in" in refused.value.message
    throttle.check_sign_in("another-address")


def test_zero_turns_a_budget_off():
    throttle = Throttle(requests_per_minute=0, auth_failures_per_minute=0)
    for _ in range(100):
        throttle.take_request("a")
        throttle.sign_in_failed("a")
    throttle.check_sign_in("a")
    assert len(throttle.storage.storage) == 0


def test_clients_of_past_windows_are_forgotten(clock):
    throttle = Throttle(requests_per_minute=5, auth_failures_per_minute=5)
    for n in range(5000):  # as many source addresses as an attacker likes
        throttle.take_request(f"client-{n}")
        throttle.sign_in_failed(f"client-{n}")
    assert len(throttle.storage.storage) == 10000
    throttle.storage.timer.join()  # the sweep of those hits is done
    clock.value += 61  # their windows are over
    throttle.take_request("late")  # the next hit schedules a sweep
    throttle.storage.timer.join()
    storage = throttle.storage
    assert len(storage.storage) == len(storage.expirations) == 1 and len(storage.locks) <= 1
    throttle.take_request("client-0")  # a fresh window: its old count is gone
