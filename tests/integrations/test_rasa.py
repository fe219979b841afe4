"""The Rasa action with rasa_sdk's own Tracker and CollectingDispatcher, against a live emoserve.

rasa-sdk pins pydantic < 2.14 and websockets < 16, older than the project's environment, so it is
not a dev dependency: these tests run in their own venv (tests/integrations/run_isolated.sh) and
are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

pytest.importorskip("rasa_sdk")

from rasa_sdk import Tracker  # noqa: E402
from rasa_sdk.events import FollowupAction, SlotSet  # noqa: E402
from rasa_sdk.executor import CollectingDispatcher  # noqa: E402

from emoserve.integrations.rasa import ActionAnalyzeEmotion, failure_text, parse_rules  # noqa: E402

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


def action_for(server, monkeypatch, allow_networks: str = "127.0.0.0/8", **rules) -> ActionAnalyzeEmotion:
    """The action for `server`; audio URLs may lead to `allow_networks` (the test file servers are on loopback)."""
    monkeypatch.setenv("EMOSERVE_SERVER", server)
    monkeypatch.setenv("EMOSERVE_RASA_DOWNLOAD_ALLOW_NETWORKS", allow_networks)
    return type("Configured", (ActionAnalyzeEmotion,), rules)()


def refusal(events, messages) -> str:
    """The text the user got, for a message that could not be analysed."""
    assert events == [SlotSet("emotion", None), SlotSet("emotion_confidence", None)]
    assert len(messages) == 1 and messages[0]["response"] is None
    return messages[0]["text"]


def test_a_path_in_an_allowed_folder_sets_the_emotion_slots(server, clip, monkeypatch):
    monkeypatch.setenv("EMOSERVE_RASA_AUDIO_DIRS", str(clip.parent))
    action = action_for(server, monkeypatch, escalate={"angry": 0.7})
    events, messages = run(action, tracker(slots={"audio_url": str(clip)}))
    want = analyze_directly(server, clip)
    assert events[:2] == [SlotSet("emotion", want["emotion"]), SlotSet("emotion_confidence", want["confidence"])]
    assert action.name() == "action_analyze_emotion"
    assert messages == []  # random:tiny is never that sure of anything


def test_base64_audio_in_the_message_metadata(server, clip, monkeypatch):
    want = analyze_directly(server, clip)
    for audio in (base64.b64encode(clip.read_bytes()).decode(),
                  "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()):
        events, messages = run(action_for(server, monkeypatch), tracker(metadata={"audio": audio}))
        assert events[:2] == [SlotSet("emotion", want["emotion"]), SlotSet("emotion_confidence", want["confidence"])]


def test_local_paths_are_refused_unless_enabled_and_inside_the_folders(server, clip, tmp_path, monkeypatch):
    monkeypatch.delenv("EMOSERVE_RASA_AUDIO_DIRS", raising=False)
    for path in ("/dev/zero", str(clip)):
        text = refusal(*run(action_for(server, monkeypatch), tracker(metadata={"audio_path": path})))
        assert "local audio files are not accepted" in text
    allowed = tmp_path / "voice"
    allowed.mkdir()
    (allowed / "escape.wav").symlink_to(clip)
    monkeypatch.setenv("EMOSERVE_RASA_AUDIO_DIRS", f"{allowed}{os.pathsep}/dev")
    for path in (str(clip), str(allowed / "escape.wav"), str(allowed / ".." / clip.name)):
        text = refusal(*run(action_for(server, monkeypatch), tracker(metadata={"audio_path": path})))
        assert "is not in a folder that audio may be read from" in text
    text = refusal(*run(action_for(server, monkeypatch), tracker(metadata={"audio_path": "/dev/zero"})))
    assert text == "Sorry, I could not analyse your voice message: /dev/zero is not a regular file"


def test_audio_over_the_cap_is_refused_with_a_reply(server, clip, monkeypatch):
    monkeypatch.setenv("EMOSERVE_RASA_AUDIO_DIRS", str(clip.parent))
    monkeypatch.setenv("EMOSERVE_RASA_MAX_AUDIO_BYTES", "1000")
    with serve_directory(clip.parent) as files:
        for source in ({"audio_path": str(clip)}, {"audio_url": f"{files}/{clip.name}"},
                       {"audio": base64.b64encode(clip.read_bytes()).decode()}):
            assert "over 1000 bytes" in refusal(*run(action_for(server, monkeypatch), tracker(metadata=source)))
    text = refusal(*run(action_for(server, monkeypatch), tracker(metadata={"audio_url": "file:///etc/passwd"})))
    assert "file: URLs are not accepted" in text


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


def test_an_audio_url_on_this_machine_is_refused_unless_its_network_is_allowed(server, clip, monkeypatch):
    with serve_directory(clip.parent) as files:
        url = files.replace("127.0.0.1", "localhost") + f"/{clip.name}"
        text = refusal(*run(action_for(server, monkeypatch, allow_networks=""), tracker(metadata={"audio_url": url})))
        assert "EMOSERVE_RASA_DOWNLOAD_ALLOW_NETWORKS" in text
        events, _ = run(action_for(server, monkeypatch, allow_networks="127.0.0.0/8,::1"),
                        tracker(metadata={"audio_url": url}))
        assert SlotSet("emotion", analyze_directly(server, clip)["emotion"]) in events


def test_no_audio_is_silent_and_every_failure_is_a_reply(server, monkeypatch):
    empty = [SlotSet("emotion", None), SlotSet("emotion_confidence", None)]
    assert run(action_for(server, monkeypatch), tracker()) == (empty, [])
    broken = {"audio": base64.b64encode(b"not audio" * 50).decode()}
    events, messages = run(action_for(server, monkeypatch, error_response="utter_no_emotion"), tracker(metadata=broken))
    assert events == empty and [m["response"] for m in messages] == ["utter_no_emotion"]
    assert messages[0]["reason"].startswith("Sorry, I could not analyse your voice message: ")
    down = refusal(*run(action_for("http://127.0.0.1:9", monkeypatch), tracker(metadata=broken)))
    assert down == "Sorry, the emotion service is not available right now; please try again later."

    class Buggy(ActionAnalyzeEmotion):
        async def analyze(self, audio, filename):
            raise RuntimeError("a bug")

    text = refusal(*run(Buggy(), tracker(metadata=broken)))
    assert text == failure_text(RuntimeError()) == "Sorry, something went wrong while analysing your voice message."
def test_escalation_rules_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMOSERVE_RASA_ESCALATE", "angry:0.6, fearful:0.9")
    action = ActionAnalyzeEmotion()
    assert action.escalate == {"angry": 0.6, "fearful": 0.9} == parse_rules("angry:0.6,fearful:0.9")
    assert action.should_escalate("angry", 0.61) and not action.should_escalate("angry", 0.6)
    assert not action.should_escalate("happy", 0.99) and not action.should_escalate(None, None)
