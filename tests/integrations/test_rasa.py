"""The Rasa action with rasa_sdk's own Tracker and CollectingDispatcher, against a live emoserve.

rasa-sdk pins pydantic < 2.14 and websockets < 16, older than the project's environment, so it is
not a dev dependency: these tests run in their own venv (tests/integrations/run_isolated.sh) and
are skipped elsewhere.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("rasa_sdk")

from rasa_sdk import Tracker  # noqa: E402
from rasa_sdk.events import FollowupAction, SlotSet  # noqa: E402
from rasa_sdk.executor import CollectingDispatcher  # noqa: E402

from emoserve.integrations.rasa import ActionAnalyzeEmotion, parse_rules  # noqa: E402

from .live import analyze_directly, serve_directory, serve_in_subprocess, tone_wav  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with serve_in_subprocess() as base:
        yield base


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "voice.wav"
    path.write_bytes(tone_wav(1.5))
    return path


def tracker(slots=None, metadata=None) -> Tracker:
    latest = {"text": "/voice", "intent": {"name": "voice_message"}, "entities": [], "metadata": metadata or {}}
    return Tracker("user-1", slots or {}, latest, [], False, None, {}, "action_listen")


def run(action, tracker_):
    dispatcher = CollectingDispatcher()
    events = asyncio.run(action.run(dispatcher, tracker_, {}))
    return events, dispatcher.messages


def action_for(server, monkeypatch, **rules) -> ActionAnalyzeEmotion:
    monkeypatch.setenv("EMOSERVE_SERVER", server)
    return type("Configured", (ActionAnalyzeEmotion,), rules)()


def test_a_path_in_the_slot_sets_the_emotion_slots(server, clip, monkeypatch):
    action = action_for(server, monkeypatch, escalate={"angry": 0.7})
    events, messages = run(action, tracker(slots={"audio_url": str(clip)}))
    want = analyze_directly(server, clip)
    assert events[:2] == [SlotSet("emotion", want["emotion"]), SlotSet("emotion_confidence", want["confidence"])]
    assert action.name() == "action_analyze_emotion"
    assert messages == []  # random:tiny is never that sure of anything


def test_a_url_in_the_message_metadata_and_the_handoff_rule(server, clip, monkeypatch):
    want = analyze_directly(server, clip)
    with serve_directory(clip.parent) as files:
        url = f"{files}/{clip.name}"
        hands_off = action_for(server, monkeypatch, escalate={want["emotion"]: want["confidence"] - 0.01},
                               handoff_action="action_handoff")
        events, messages = run(hands_off, tracker(metadata={"audio_url": url}))
        assert SlotSet("emotion", want["emotion"]) in events and FollowupAction("action_handoff") in events
        assert [m["response"] for m in messages] == ["utter_handoff"]
        stays = action_for(server, monkeypatch, escalate={want["emotion"]: want["confidence"] + 0.01})
        events, messages = run(stays, tracker(metadata={"audio_url": url}))
        assert messages == [] and not any(isinstance(e, dict) and e.get("event") == "followup" for e in events)


def test_no_audio_or_a_failure_leaves_the_slots_empty(server, tmp_path, monkeypatch):
    empty = [SlotSet("emotion", None), SlotSet("emotion_confidence", None)]
    assert run(action_for(server, monkeypatch), tracker()) == (empty, [])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio" * 50)
    events, messages = run(action_for(server, monkeypatch, error_response="utter_no_emotion"),
                           tracker(slots={"audio_url": str(broken)}))
    assert events == empty and [m["response"] for m in messages] == ["utter_no_emotion"]
    down = action_for("http://127.0.0.1:9", monkeypatch)
    assert run(down, tracker(slots={"audio_url": str(broken)}))[0] == empty


def test_escalation_rules_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMOSERVE_RASA_ESCALATE", "angry:0.6, fearful:0.9")
    action = ActionAnalyzeEmotion()
    assert action.escalate == {"angry": 0.6, "fearful": 0.9} == parse_rules("angry:0.6,fearful:0.9")
    assert action.should_escalate("angry", 0.61) and not action.should_escalate("angry", 0.6)
    assert not action.should_escalate("happy", 0.99) and not action.should_escalate(None, None)
