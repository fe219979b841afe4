"""A Rasa custom action: the emotion of the user's voice message, into slots, with a hand-off rule.

In the action server's `actions.py` (rasa_sdk registers every `Action` subclass it imports):

    from emoserve.integrations.rasa import ActionAnalyzeEmotion   # the action "action_analyze_emotion"

The audio comes from the slot `audio_url` or from the latest message's metadata (`audio_url`,
`audio_path` or `audio`): a local path or an http(s) URL. The action sets the slots `emotion` and
`emotion_confidence` and, when a rule of `escalate` matches (default: angry with confidence above
0.7), sends the response `utter_handoff` (and runs `handoff_action` next, when set). Configure it by
subclassing, or with the environment: EMOSERVE_SERVER, EMOSERVE_API_KEY, EMOSERVE_RASA_ESCALATE
("angry:0.7,fearful:0.8"). A service that is down or audio that cannot be analysed leaves both slots
empty (and sends `error_response` when set): the conversation goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import httpx
from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from ..client import DEFAULT_URL, AsyncEmoClient, ClientResult
from ..errors import EmoserveError, InvalidParameterError, PayloadTooLargeError

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


class ActionAnalyzeEmotion(Action):
    """Analyse the user's audio with emoserve; set `emotion`/`emotion_confidence`; hand off when the rule says."""

    audio_slot = "audio_url"
    metadata_keys = ("audio_url", "audio_path", "audio")
    emotion_slot = "emotion"
    confidence_slot = "emotion_confidence"
    escalate: dict[str, float] = {"angry": 0.7}  # emotion → hand off above this confidence
    handoff_response = "utter_handoff"
    handoff_action: str | None = None
    error_response: str | None = None
    max_download_bytes = 10 * 1024 * 1024
    timeout_s = 30.0

    def __init__(self) -> None:
        self.server_url = os.environ.get("EMOSERVE_SERVER", DEFAULT_URL)
        self.api_key = os.environ.get("EMOSERVE_API_KEY") or None
        if os.environ.get("EMOSERVE_RASA_ESCALATE"):
            self.escalate = parse_rules(os.environ["EMOSERVE_RASA_ESCALATE"])

    def name(self) -> str:
        return "action_analyze_emotion"

    def audio_source(self, tracker: Tracker) -> str | None:
        metadata = (tracker.latest_message or {}).get("metadata") or {}
        candidates = [tracker.get_slot(self.audio_slot), *(metadata.get(key) for key in self.metadata_keys)]
        return next((str(c) for c in candidates if c), None)

    async def analyze(self, source: str) -> ClientResult:
        async with AsyncEmoClient(self.server_url, self.api_key, timeout=self.timeout_s) as client:
            if source.startswith(("http://", "https://")):
                return await client.analyze(await self.download(source), filename=Path(source).name)
            return await client.analyze(Path(source))

    async def download(self, url: str) -> bytes:
        """The voice message, streamed and refused past `max_download_bytes`."""
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=True) as http, \
                http.stream("GET", url) as response:
            response.raise_for_status()
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > self.max_download_bytes:
                    raise PayloadTooLargeError(f"{url} is over {self.max_download_bytes} bytes")
            return bytes(data)

    def should_escalate(self, emotion: str | None, confidence: float | None) -> bool:
        threshold = self.escalate.get(emotion or "")
        return threshold is not None and confidence is not None and confidence > threshold

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> list[EventType]:
        empty = [SlotSet(self.emotion_slot, None), SlotSet(self.confidence_slot, None)]
        source = self.audio_source(tracker)
        if source is None:
            log.info("no audio in slot %s or the message metadata: nothing to analyse", self.audio_slot)
            return empty
        try:
            result = await self.analyze(source)
        except (EmoserveError, httpx.HTTPError, OSError) as e:
            log.warning("could not analyse %s: %s", source, e)
            if self.error_response:
                dispatcher.utter_message(response=self.error_response)
            return empty
        events: list[EventType] = [SlotSet(self.emotion_slot, result.emotion),
                                   SlotSet(self.confidence_slot, result.confidence)]
        if self.should_escalate(result.emotion, result.confidence):
            dispatcher.utter_message(response=self.handoff_response)
            if self.handoff_action:
                events.append(FollowupAction(self.handoff_action))
        return events
