"""The Gradio page: audio in (file or microphone), the emotion out (summary, timeline, downloads).

Every refusal the service can give (too long, not audio, too short, still loading, overloaded)
arrives as a typed `EmoserveError` and is shown in words where the result would be; anything else is
logged with a reference the page shows, never a traceback.
"""

from __future__ import annotations

import asyncio
import html
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import key_is_valid, refusal_response
from ..config import Settings
from ..errors import EmoserveError
from ..inference.engine import Engine
from ..throttle import Throttle, client_address
from .analysis import (
    Analysis,
    CallAnalysis,
    DownloadDir,
    analyze_channels,
    analyze_clip,
    analyze_file,
    export_call_files,
    export_files,
)
from .charts import call_summary_html, call_timeline_html, message_html, summary_html, timeline_html
from .examples import example_clips

error_log = logging.getLogger("emoserve.error")

HERE = Path(__file__).parent
PLAYER_JS = (HERE / "player.js").read_text(encoding="utf-8")
CSS = (HERE / "style.css").read_text(encoding="utf-8")
GRANULARITIES = [("Whole clip", "utterance"), ("Every 20 ms (timeline)", "frame")]
CHANNELS = [("Mixed to one voice", "mix"), ("Each channel on its own: a lane per speaker (stereo call)", "split")]
HINT = "Upload a file or record from the microphone, then press Analyze."

EngineGetter = Callable[[], Engine]  # the running engine, or an EmoserveError saying why there is none


def build_blocks(get_engine: EngineGetter, settings: Settings, throttle: Throttle,
                 api_docs: str | None = None) -> gr.Blocks:
    """The page. `get_engine` is the service's (`Service.ready_engine`): the UI never loads a model itself.
    Each analysis spends a request of its address's budget in `throttle`, as an API call does.
    `api_docs` links the HTTP API's docs from the header (relative to the page), when there is one."""
    downloads = DownloadDir()
    long_minutes = f"{settings.ui.max_long_s / 60:g}"

    async def analyze(path: str | None, granularity: str, long_file: bool, channels: str, request: gr.Request,
                      progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        if not path:
            return message_html(HINT), hidden(), hidden()
        try:
            throttle.take_request(request.client.host)
            engine = get_engine()
            if channels == "split":
                analysis = await analyze_channels(engine, path, granularity, settings, long_file,
                                                  lambda fraction: progress(fraction, desc="analysing"))
            elif long_file:
                analysis = await analyze_file(engine, path, granularity, settings,
                                              lambda fraction: progress(fraction, desc="analysing"))
            else:
                analysis = await analyze_clip(engine, path, granularity, settings)
            # files and pictures (an MP3 of the audio) take a while for a long file: off the server's loop
            summary, timeline, files = await asyncio.to_thread(present, analysis, engine.model.weights,
                                                               downloads.new())
        except EmoserveError as e:
            return refusal(e, long_file, long_minutes), hidden(), hidden()
        except Exception:
            reference = uuid.uuid4().hex[:12]
            error_log.exception("web UI analysis failed (reference %s)", reference)
            text = f"Something went wrong on the server (reference {reference}, in its error log). Please try again."
            return message_html(text, "error"), hidden(), hidden()
        return (summary, gr.update(value=timeline, visible=True) if timeline else hidden(),
                gr.update(value=files, visible=True))

    def model_line() -> str:
        try:
            info = get_engine().model.info
        except EmoserveError as e:
            return header_html(e.message, api_docs)
        weights = " · random weights (a test model)" if info.weights == "random" else ""
        return header_html(f"Model {info.name} on {info.device} ({info.dtype}){weights}", api_docs)

    with gr.Blocks(title="emoserve: speech emotion", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        header = gr.HTML(header_html("loading the model…", api_docs))
        # the results are made first (unrendered) so the examples, in the left column, can fill them
        summary = gr.HTML(message_html(HINT), elem_id="summary", render=False)
        timeline = gr.HTML(elem_id="timeline", js_on_load=PLAYER_JS, visible=False, render=False)
        files = gr.File(label="Downloads: result (JSON, CSV) and embedding (.npy)", file_count="multiple",
                        interactive=False, visible=False, elem_id="downloads", render=False)
        outputs = [summary, timeline, files]
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                # no `format`: the file reaches our decoder and its limits as sent, not converted by Gradio first
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", buttons=["download"],
                                 label="Audio: upload a file or record", elem_id="audio-input")
                granularity = gr.Radio(GRANULARITIES, value="utterance", label="Scores for", elem_id="granularity")
                long_file = gr.Checkbox(label=f"Long file: split at pauses into voiced segments (up to {long_minutes}"
                                              " min here; the upload API takes hours)", elem_id="long-file")
                channels = gr.Radio(CHANNELS, value="mix", label="Channels", elem_id="channels")
                run = gr.Button("Analyze", variant="primary", elem_id="analyze")
                inputs = [audio, granularity, long_file, channels]
                clips = example_clips(settings.model.cache / "ui-examples") if settings.ui.examples else []
                if clips:
                    gr.Examples([[str(path), e.granularity, e.long_file, "mix"] for e, path in clips], inputs, outputs,
                                fn=analyze, run_on_click=True, cache_examples=False,
                                example_labels=[e.label for e, _ in clips], label="Examples (spoken by espeak-ng)")
            with gr.Column(scale=3, min_width=300):
                for output in outputs:
                    output.render()
        options = {"concurrency_limit": settings.ui.concurrency, "concurrency_id": "analyze"}
        run.click(analyze, inputs, outputs, api_name="analyze", scroll_to_output=True, **options)
        audio.upload(analyze, inputs, outputs, api_visibility="undocumented", **options)
        audio.stop_recording(analyze, inputs, outputs, api_visibility="undocumented", **options)
        blocks.load(model_line, outputs=header, api_visibility="private")
    return blocks


def mount_options(settings: Settings) -> dict[str, Any]:
    """`gr.mount_gradio_app` options: limits, look, and the API keys (when set) as the UI's sign-in."""
    keys = settings.server.keys()
    options: dict[str, Any] = {
        "max_file_size": settings.ui.max_upload_bytes, "footer_links": [], "run_history": False, "ssr_mode": False,
        "show_error": False, "css": CSS,
        # no web fonts: the page must load where the server has no internet (Gradio's own fonts ship with it)
        "theme": gr.themes.Soft(primary_hue="indigo"),
    }
    if keys:
        options["auth"] = lambda _user, password: key_is_valid(password, keys)
        options["auth_message"] = "This server needs an API key: sign in with any user name and an API key as password."
    return options


class SignInThrottle:
    """Wrong sign-ins at Gradio's `login_path` spend the address's failed-key budget, as wrong API keys do.

    Gradio checks the password itself (the `auth` of `mount_options`) and answers a wrong one with a
    4xx, so the budget is kept around its route: refused before it runs, spent by its refusals."""

    def __init__(self, app: ASGIApp, login_path: str, throttle: Throttle):
        self.app = app
        self.login_path = login_path
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.login_path:
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        try:
            self.throttle.check_sign_in(address)
        except EmoserveError as e:
            await refusal_response(e)(scope, receive, send)
            return
        statuses = []

        async def send_and_note_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await send(message)

        await self.app(scope, receive, send_and_note_status)
        if statuses and 400 <= statuses[0] < 500:
            self.throttle.sign_in_failed(address)


def header_html(model: str, api_docs: str | None) -> str:
    link = f' · <a href="{api_docs}" target="_blank">HTTP API</a>' if api_docs else ""
    return f'<div class="emo-header"><h1>emoserve · speech emotion</h1><p>{html.escape(model)}{link}</p></div>'


def present(analysis: Analysis | CallAnalysis, weights: str, folder: Path) -> tuple[str, str | None, list[str]]:
    """(the summary, the timeline or None, the downloads) of one analysis."""
    if isinstance(analysis, CallAnalysis):
        lanes = [a for _, a in analysis.channels]
        timeline = call_timeline_html(analysis) if analysis.is_long or lanes[0].frame_scores is not None else None
        return call_summary_html(analysis, weights), timeline, [str(p) for p in export_call_files(analysis, folder)]
    timeline = timeline_html(analysis) if analysis.is_long or analysis.frame_scores is not None else None
    return summary_html(analysis, weights), timeline, [str(p) for p in export_files(analysis, folder)]


def hidden() -> dict:
    return gr.update(visible=False)


def refusal(error: EmoserveError, long_file: bool, long_minutes: str) -> str:
    """The service's message, plus what to do in this UI where it differs from the API's advice."""
    text = error.message
    if error.code == "audio_too_long" and not long_file:
        text += f". Here: tick “Long file” to analyse up to {long_minutes} min in voiced segments."
    return message_html(text, "error")
