"""The web UI in a real browser: Debian's Chromium, headless, against `emoserve serve` in its own process.

Playwright drives /usr/bin/chromium (no browser download). Screenshots of the main views go to
$EMOSERVE_UI_SCREENSHOTS when set (docs/screenshots is made that way), else to a temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ..api.live_server import free_port
from ..samples import espeak_available, noise, speech, sweep, wav_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
MAX_DURATION_S = 8  # the server's clip limit here, so a "too long" file stays small

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the dev extra)")
pytest.importorskip("gradio", reason="the web UI needs the `ui` extra")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`emoserve serve --model random:tiny` with the UI, on a free port, until the page answers."""
    home = tmp_path_factory.mktemp("ui-server")
    port = free_port()
    env = dict(os.environ, EMOSERVE_LOG_DIR=str(home / "logs"), EMOSERVE_CACHE=str(home / "cache"),
               EMOSERVE_DATA_DIR=str(home / "data"),
               EMOSERVE_MAX_DURATION_S=str(MAX_DURATION_S), GRADIO_TEMP_DIR=str(home / "gradio"))
    command = [sys.executable, "-m", "emoserve", "serve", "--model", "random:tiny", "--port", str(port)]
    # output to a file, not a pipe nobody reads: the access log would fill the pipe and block the server
    with open(home / "stdout.log", "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200 and \
                        httpx.get(base + "/ui/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (home / "stdout.log").read_text()
            time.sleep(0.2)
        else:
            process.kill()
            raise AssertionError("the server did not serve /ui in time")
        yield base
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        # launch() gives every run a fresh temporary profile (user-data-dir), removed on close
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("EMOSERVE_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "hello.wav"
    samples = speech("Hello! I am so happy you came, this is wonderful news.") if espeak_available() \
        else noise(3 * 16000)
    path.write_bytes(wav_bytes(samples))
    return path


class UI:
    """One browser tab on the UI, and what it sent to hosts other than the server."""

    def __init__(self, browser, base: str, **context):
        self.context = browser.new_context(permissions=["microphone"], **context)
        self.page = self.context.new_page()
        self.elsewhere: list[str] = []
        self.page.on("request", self.note)
        self.base = base
        self.page.goto(base + "/ui/")
        self.page.locator(".emo-header").get_by_text("random:tiny").wait_for()  # the page sees the model ready

    def note(self, request) -> None:
        if not request.url.startswith((self.base, "data:", "blob:")):
            self.elsewhere.append(request.url)

    def choose_frames(self) -> None:
        self.page.locator("#granularity").get_by_text("Every 20 ms").click()

    def choose_split(self) -> None:
        self.page.locator("#channels").get_by_text("Each channel on its own").click()

    def upload(self, path: Path) -> None:
        """Uploading starts the analysis (as the Analyze button does)."""
        self.page.locator("#audio-input input[type=file]").set_input_files(str(path))

    def result(self, selector: str, timeout: float = 30_000):
        locator = self.page.locator(selector)
        locator.first.wait_for(timeout=timeout)
        return locator

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui(browser, server):
    tabs = []

    def open_tab(**context) -> UI:
        tabs.append(UI(browser, server, **context))
        return tabs[-1]

    yield open_tab
    for tab in tabs:
        tab.close()


def test_upload_a_clip_and_see_its_emotion_and_the_scores(ui, clip, shots):
    tab = ui(viewport={"width": 1280, "height": 900})
    tab.upload(clip)
    assert tab.result("#summary .emo-bar").count() == 9
    top = tab.page.locator("#summary .emo-label").inner_text().lower()
    downloads = tab.result("#downloads a[download]")
    names = sorted(link.get_attribute("download") for link in downloads.all())
    assert names == ["hello.embedding.npy", "hello.json", "hello.scores.csv"]
    link = tab.page.locator("#downloads a[download='hello.json']").get_attribute("href")
    result = json.loads(tab.page.request.get(link).body())
    assert result["emotion"] == top and len(result["scores"]) == 9
    assert tab.elsewhere == []  # nothing from the internet: the page works offline
    tab.page.screenshot(path=shots / "upload-utterance.png", full_page=True)


def test_frame_mode_draws_the_timeline_and_its_cursor_follows_the_audio(ui, clip, shots):
    tab = ui(viewport={"width": 1280, "height": 900})
    tab.choose_frames()
    tab.upload(clip)
    assert tab.result("#timeline .emo-area path").count() == 9
    page = tab.page
    duration = page.evaluate("() => JSON.parse(document.querySelector('.emo-timeline').dataset.timeline).duration")
    page.locator("#timeline audio").evaluate("(a, t) => { a.currentTime = t; }", duration / 2)
    page.wait_for_function("() => parseFloat(document.querySelector('#timeline .emo-cursor').style.left) > 45")
    assert page.locator("#timeline .emo-readout").inner_text().startswith(f"{duration / 2:.2f} s · ")
    box = page.locator("#timeline .emo-area").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 4, box["y"] + box["height"] / 2)  # click to play from there
    seconds = page.locator("#timeline audio").evaluate("a => a.currentTime")
    assert seconds == pytest.approx(duration / 4, abs=0.05 * duration)
    page.screenshot(path=shots / "frame-timeline.png", full_page=True)


@pytest.mark.skipif(not espeak_available(), reason="the spoken examples need espeak-ng")
def test_a_long_file_shows_its_voiced_segments(ui, shots):
    tab = ui(viewport={"width": 1280, "height": 900})
    tab.page.get_by_text("A 30 s story").click()
    segments = tab.result("#timeline .emo-segment", timeout=60_000)
    assert segments.count() >= 4  # six sentences; voice-activity detection may join close ones
    assert "voiced segments" in tab.page.locator("#summary .emo-meta").inner_text()
    names = {link.get_attribute("download") for link in tab.result("#downloads a[download]").all()}
    assert names == {"story.json", "story.segments.csv", "story.embedding.npy"}
    tab.page.screenshot(path=shots / "long-file.png", full_page=True)


def test_a_stereo_call_split_into_channels_shows_a_lane_per_channel(ui, tmp_path, shots):
    tab = ui(viewport={"width": 1280, "height": 900})
    tab.choose_frames()
    tab.choose_split()
    call = tmp_path / "call.wav"
    call.write_bytes(wav_bytes(np.stack([sweep(2.0), noise(2 * 16000, seed=3, amplitude=0.3)], axis=1)))
    tab.upload(call)
    lanes = tab.result("#timeline .emo-lane-name")
    assert [lane.inner_text() for lane in lanes.all()] == ["left", "right"]
    assert tab.page.locator("#timeline .emo-area").count() == 2  # a frame track per lane, on one time axis
    assert tab.page.locator("#timeline .emo-area path").count() == 2 * 9
    assert [h.inner_text() for h in tab.page.locator("#summary h3.emo-lane-name").all()] == ["left", "right"]
    names = {link.get_attribute("download") for link in tab.result("#downloads a[download]").all()}
    assert {"call.json", "call.left.embedding.npy", "call.right.embedding.npy"} <= names
    assert "Traceback" not in tab.page.content()
    tab.page.screenshot(path=shots / "call-lanes.png", full_page=True)


def test_bad_input_reads_as_a_message_never_a_traceback(ui, tmp_path, shots):
    tab = ui(viewport={"width": 1280, "height": 900})
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"these are my meeting notes, not a recording " * 20)
    tab.upload(bad)
    message = tab.result("#summary .emo-error").inner_text()
    assert "format is not supported" in message and "WAV" in message
    tab.page.screenshot(path=shots / "error-bad-file.png")
    tab.page.locator("#audio-input button[aria-label='Clear']").click()
    long_clip = tmp_path / "long.wav"
    long_clip.write_bytes(wav_bytes(noise((MAX_DURATION_S + 2) * 16000)))
    tab.upload(long_clip)
    tab.page.get_by_text("Long file").first.wait_for()
    tab.page.wait_for_function("() => document.querySelector('#summary').innerText.includes('longer than')")
    assert "tick “Long file”" in tab.page.locator("#summary .emo-error").inner_text()
    assert "Traceback" not in tab.page.content()


def test_recording_from_the_microphone(ui):
    tab = ui(viewport={"width": 1280, "height": 900})  # Chromium's fake microphone: a beep
    tab.page.locator("#audio-input button[aria-label='Record audio']").click()
    tab.page.locator("#audio-input button.record").click()
    tab.page.wait_for_timeout(1500)
    tab.page.locator("#audio-input button.stop-button").first.click()
    assert tab.result("#summary .emo-bar").count() == 9


def test_the_page_fits_a_phone(ui, clip, shots):
    tab = ui(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    tab.choose_frames()
    tab.upload(clip)
    tab.result("#timeline .emo-area path")
    page = tab.page
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    for selector in ("#summary .emo-top", "#timeline .emo-area", "#analyze"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    page.screenshot(path=shots / "phone.png", full_page=True)
