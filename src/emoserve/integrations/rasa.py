"""A Rasa custom action: the emotion of the user's voice message, into slots, with a hand-off rule.

In the action server's `actions.py` (rasa_sdk registers every `Action` subclass it imports):

    from emoserve.integrations.rasa import ActionAnalyzeEmotion   # the action "action_analyze_emotion"

The audio comes from the slot `audio_url` or from the latest message's metadata: `audio_url` (an
http(s) URL), `audio` (base64, a data: URI, or a URL) or `audio_path` (a local file, refused unless it lies
in a folder of EMOSERVE_RASA_AUDIO_DIRS). Whoever chats writes the message, so every source is capped
(`emoserve.integrations.sources`). The action sets the slots `emotion` and `emotion_confidence` and,
when a rule of `escalate` matches (default: angry with confidence above 0.7), sends the response
`utter_handoff` (and runs `handoff_action` next, when set). Configure it by subclassing, or with the
environment: EMOSERVE_SERVER, EMOSERVE_API_KEY, and the EMOSERVE_RASA_* settings of emoserve.config
(`RasaConfig`: limits, and ESCALATE, e.g. "angry:0.7,fearful:0.8"). Any failure (a refused source, a service that is
down, audio that cannot be analysed) leaves both slots empty and tells the user why, in plain text or
through `error_response`: the conversation goes on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx
from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from ..client import DEFAULT_URL, AsyncEmoClient, ClientResult
from ..config import Settings
from ..errors import AudioError, EmoserveError, InvalidParameterError, PayloadTooLargeError
from .sources import AudioPolicy, load_audio

log = logging.getLogger(__name__)


def parse_rules(text: str) -> dict[str, float]:
    """"angry:0.7,fearful:0.8" → {"angry": 0.7, "fearful": 0.8}."""
    rules = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        emotion, _, threshold = item.partition(":")
        try:
            rules[emotion.strip()] = float(threshold)
        except ValueError as e:
            raise InvalidParameterError(f"EMOSERVE_RASA_ESCALATE: {item!r} is not emotion:threshold") from e
    return rules


def failure_text(error: Exception) -> str:
    """What the user reads when their voice message could not be analysed (the details go to the log)."""
    if isinstance(error, AudioError | InvalidParameterError | PayloadTooLargeError):
        return f"Sorry, I could not analyse your voice message: {error.message}"
    if isinstance(error, EmoserveError | httpx.HTTPError):
        return "Sorry, the emotion service is not available right now; please try again later."
    return "Sorry, something went wrong while analysing your voice message."


class ActionAnalyzeEmotion(Action):
    """Analyse the user's audio with emoserve; set `emotion`/`emotion_confidence`; hand off when the rule says."""

    audio_slot = "audio_url"
    metadata_keys = ("audio_url", "audio_path", "audio")
    inline_key = "audio"  # this metadata key may carry the audio itself, base64
    emotion_slot = "emotion"
    confidence_slot = "emotion_confidence"
    escalate: dict[str, float] = {"angry": 0.7}  # emotion → hand off above this confidence
    handoff_response = "utter_handoff"
    handoff_action: str | None = None
    error_response: str | None = None  # on failure, this response (given `reason`) instead of a plain text
    timeout_s = 30.0

    def __init__(self) -> None:
        self.server_url = os.environ.get("EMOSERVE_SERVER", DEFAULT_URL)
        self.api_key = os.environ.get("EMOSERVE_API_KEY") or None
        config = Settings().rasa
        if config.escalate:
            self.escalate = parse_rules(config.escalate)
        self.policy = AudioPolicy.for_rasa(config)

    def name(self) -> str:
        return "action_analyze_emotion"

    def audio_source(self, tracker: Tracker) -> tuple[str, bool] | None:
        """(value, whether it may be base64) of the first audio in the slot or the message metadata."""
        metadata = (tracker.latest_message or {}).get("metadata") or {}
        candidates = [(tracker.get_slot(self.audio_slot), False),
                      *((metadata.get(key), key == self.inline_key) for key in self.metadata_keys)]
        return next(((str(value), inline) for value, inline in candidates if value), None)

    async def analyze(self, audio: bytes, filename: str) -> ClientResult:
        async with AsyncEmoClient(self.server_url, self.api_key, timeout=self.timeout_s) as client:
            return await client.analyze(audio, filename=filename)

    def should_escalate(self, emotion: str | None, confidence: float | None) -> bool:
        threshold = self.escalate.get(emotion or "")
        return threshold is not None and confidence is not None and confidence > threshold

    def reply_failure(self, dispatcher: CollectingDispatcher, reason: str) -> None:
        if self.error_response:
            dispatcher.utter_message(response=self.error_response, reason=reason)
        else:
            dispatcher.utter_message(text=reason)

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> list[EventType]:
        empty = [SlotSet(self.emotion_slot, None), SlotSet(self.confidence_slot, None)]
        source = self.audio_source(tracker)
        if source is None:
            log.info("no audio in slot %s or the message metadata: nothing to analyse", self.audio_slot)
            return empty
        value, inline = source
        try:
            audio, filename = await load_audio(value, self.policy, inline)
            result = await self.analyze(audio, filename)
        except Exception as e:  # every failure becomes a reply, never a crash: the conversation goes on
            log.warning("could not analyse the audio %.100s: %r", value, e)
            self.reply_failure(dispatcher, failure_text(e))
            return empty
        events: list[EventType] = [SlotSet(self.emotion_slot, result.emotion),
                                   SlotSet(self.confidence_slot, result.confidence)]
        if self.should_escalate(result.emotion, result.confidence):
            dispatcher.utter_message(response=self.handoff_response)
            if self.handoff_action:
                events.append(FollowupAction(self.handoff_action))
        return events
