"""WebSocket /v1/stream: 16 kHz mono PCM16 in, frame and utterance messages out as they become final.

The route moves bytes and JSON; `emoserve.streaming.StreamSession` decides everything else.
After an error the server sends `{"type": "error", "code", "message"}` and, when the stream
cannot go on, closes with code 4000 + the HTTP status of that error code (4413, 4503, ...), the
code as the close reason, as the auth middleware does with 4401/4429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..errors import AudioError, EmoserveError, InvalidParameterError
from ..streaming import StreamOptions, StreamSession, error_message
from .errors import request_id, status_for
from .service import Service

router = APIRouter()
error_log = logging.getLogger("emoserve.error")

END = "end"
DISCONNECTED, ENDED, OVER_LIMIT = "disconnected", "ended", "over_limit"


class Channel:
    """The socket's sending side: one message at a time (two workers send), and error closes."""

    def __init__(self, websocket: WebSocket):
        self.websocket = websocket
        self.lock = asyncio.Lock()

    async def send(self, message: dict) -> None:
        async with self.lock:
            await self.websocket.send_json(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            async with self.lock:
                await self.websocket.close(code, reason)

    async def fail(self, error: EmoserveError) -> None:
        with contextlib.suppress(Exception):
            await self.send(error_message(error))
        await self.close(4000 + status_for(error.code), error.code)


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    """Binary messages: PCM16 audio; the text "end" flushes and ends the stream (docs/streaming.md)."""
    await websocket.accept()
    service: Service = websocket.app.state.service
    channel = Channel(websocket)
    try:
        engine = service.ready_engine()
        options = StreamOptions.from_settings(service.settings)
    except EmoserveError as error:
        await channel.fail(error)
        return
    session = StreamSession(engine, options, channel.send)
    analysis = asyncio.create_task(session.run())
    reading = asyncio.create_task(read_audio(websocket, session, channel))
    try:
        await asyncio.wait({analysis, reading}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            outcome = reading.result()
            if outcome == DISCONNECTED:
                return
            await analysis
            await channel.send({"type": "end"})
            await channel.close(1000 if outcome == ENDED else 4000 + status_for("audio_too_long"),
                                "" if outcome == ENDED else "audio_too_long")
        else:
            analysis.result()  # the analysis ends before the reading only by failing
    except EmoserveError as error:
        if status_for(error.code) >= 500:
            error_log.error("stream failed: %s", error, extra={"request_id": request_id(websocket)})
        await channel.fail(error)
    except Exception as error:
        if not isinstance(error, WebSocketDisconnect):  # a client gone mid-stream is no error of ours
            error_log.exception("stream failed", extra={"request_id": request_id(websocket)})
            await channel.fail(EmoserveError(f"internal error; quote request id {request_id(websocket)} "
                                             "when reporting it"))
    finally:
        for task in (reading, analysis):
            task.cancel()
        for task in (reading, analysis):
            with contextlib.suppress(BaseException):
                await task
        websocket.state.audio_seconds = session.seconds


async def read_audio(websocket: WebSocket, session: StreamSession, channel: Channel) -> str:
    """Feed the session until the client ends, leaves, or passes the duration limit."""
    while True:
        await session.wait_for_room()
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return DISCONNECTED
        if message.get("bytes") is not None:
            try:
                session.feed(message["bytes"])
            except AudioError as error:  # over the duration limit: what came before it is still analysed
                await channel.send(error_message(error))
                session.end()
                return OVER_LIMIT
        elif (message.get("text") or "").strip() == END:
            session.end()
            return ENDED
        else:
            await channel.send(error_message(InvalidParameterError(
                'send audio as binary messages (16 kHz mono PCM16) and the text "end" to finish')))

