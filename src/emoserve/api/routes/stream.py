"""WebSocket /v1/stream: 16 kHz mono PCM16 in, frame and utterance messages out as they become final.

The route moves bytes and JSON; `emoserve.timeline.streaming.StreamSession` decides everything else.
After an error the server sends `{"type": "error", "code", "message"}` and, when the stream
cannot go on, closes with code 4000 + the HTTP status of that error code (4413, 4503, ...), the
code as the close reason, as the auth middleware does with 4401/4429. A client silent for
`stream_idle_timeout_s` is ended as one over the duration limit is (its audio analysed, then the
close); past `stream_max_concurrent` open streams the handshake is refused with an HTTP 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ...errors import AudioError, EmoserveError, InvalidParameterError, retry_headers, status_for
from ...runtime import Service
from ...timeline.streaming import StreamSession, end_message, error_message
from ..deps import service_of
from ..errors import error_response, request_id
from ..middleware import DENIAL_EXTENSION, STREAM_PROTOCOL

router = APIRouter()
error_log = logging.getLogger("emoserve.error")

END = "end"
DISCONNECTED, ENDED = "disconnected", "ended"
OVER_LIMIT, IDLE = "audio_too_long", "idle_timeout"  # outcomes that end a stream early: their error codes


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
    service = service_of(websocket)
    limit = service.settings.stream.max_concurrent
    if service.open_streams >= limit:
        await refuse(websocket, EmoserveError(f"{limit} streams are open, this server's limit "
                                              "(EMOSERVE_STREAM_MAX_CONCURRENT): retry shortly", code="overloaded"))
        return
    service.open_streams += 1
    try:
        await serve(websocket, service)
    finally:
        service.open_streams -= 1


async def refuse(websocket: WebSocket, error: EmoserveError) -> None:
    """Before the handshake: an HTTP error answer with its JSON body, as the middleware refuses a wrong key;
    a server that cannot answer a handshake with HTTP gets the error message and its close code instead."""
    if DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error.code, error.message, headers=retry_headers(error)))
    else:
        await accept(websocket)
        await Channel(websocket).fail(error)


async def accept(websocket: WebSocket) -> None:
    """Accept the handshake, choosing the subprotocol `emoserve` when the client offers it: a browser that sent
    its key as the subprotocol `emoserve.key.KEY` offers `emoserve` beside it, and needs one of its own
    subprotocols echoed (the key never is)."""
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=STREAM_PROTOCOL if STREAM_PROTOCOL in offered else None)


async def serve(websocket: WebSocket, service: Service) -> None:
    """One accepted stream, from the handshake to its close."""
    await accept(websocket)
    channel = Channel(websocket)
    try:
        engine = service.ready_engine()
    except EmoserveError as error:
        await channel.fail(error)
        return
    session = StreamSession(engine, service.settings.stream, channel.send, segments=service.settings.longform)
    analysis = asyncio.create_task(session.run())
    reading = asyncio.create_task(read_audio(websocket, session, channel, service.settings.stream.idle_timeout_s))
    try:
        await asyncio.wait({analysis, reading}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            outcome = reading.result()
            if outcome == DISCONNECTED:
                return
            await analysis
            await channel.send(end_message())
            code, reason = (1000, "") if outcome == ENDED else (4000 + status_for(outcome), outcome)
            await channel.close(code, reason)
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


async def read_audio(websocket: WebSocket, session: StreamSession, channel: Channel, idle_timeout_s: float) -> str:
    """Feed the session until the client ends, leaves, passes the duration limit or sends nothing for
    `idle_timeout_s` (time the server itself stops reading, for backpressure, is not the client's idleness)."""
    while True:
        await session.wait_for_room()
        try:
            message = await asyncio.wait_for(websocket.receive(), idle_timeout_s)
        except TimeoutError:
            await channel.send(error_message(EmoserveError(
                f"no message for {idle_timeout_s:g} s (EMOSERVE_STREAM_IDLE_TIMEOUT_S): the stream ends; send audio "
                "or an empty binary message to keep it open", code="idle_timeout")))
            session.end()
            return IDLE
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

