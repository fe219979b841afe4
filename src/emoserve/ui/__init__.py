"""The web UI (Gradio, the optional `ui` extra): record or upload, see the emotion and its timeline.

    mount_ui(app, service, throttle)   # at /ui of the API server (`emoserve serve`)
    standalone_app(settings)           # alone, with a service of its own (`emoserve ui`)

The UI runs on the composition root (`runtime.Service`) the API runs on, in the same process: it
calls the service's engine directly, no HTTP hop, no second model, and never imports the API. Its
sign-in and its analyses spend the same per-client budgets (`Throttle`) as the API's calls.
Importing this package does not import Gradio, so the API runs without the extra.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from ..config import Settings
from ..errors import EmoserveError
from ..logs import setup_logging
from ..throttle import Throttle

if TYPE_CHECKING:
    from ..runtime import Service

log = logging.getLogger(__name__)

UI_PATH = "/ui"
INSTALL_HINT = "pip install 'emoserve[ui]' (./run.sh installs it)"


def ui_available() -> bool:
    return importlib.util.find_spec("gradio") is not None


def mount_ui(app: FastAPI, service: Service, throttle: Throttle, path: str = UI_PATH,
             api_docs: str | None = "../docs") -> bool:
    """Serve the UI of `service` at `path` of `app` (and redirect `/` to it); without Gradio, warn and leave
    `app` as it is. With API keys, wrong sign-ins spend the address's failed-key budget in `throttle`, as
    wrong keys do.
    """
    if not ui_available():
        log.warning("web UI disabled: Gradio is not installed. Install the `ui` extra to have it at %s: %s "
                    "(or pass --api-only to silence this warning)", path, INSTALL_HINT)
        return False
    import gradio as gr

    from .blocks import SignInThrottle, build_blocks, mount_options

    settings = service.settings
    blocks = build_blocks(service.ready_engine, settings, throttle, api_docs)
    gr.mount_gradio_app(app, blocks, path=path, **mount_options(settings))
    if settings.server.keys():
        app.add_middleware(SignInThrottle, login_path=f"{path.rstrip('/')}/login", throttle=throttle)
    if path != "/":
        app.add_api_route("/", lambda: RedirectResponse(f"{path}/"), include_in_schema=False)
    return True


def standalone_app(settings: Settings) -> FastAPI:
    """The UI alone at `/`, loading `settings.model` in the background (the page says so meanwhile)."""
    from ..runtime import Service

    setup_logging(settings.server)
    service = Service(settings)
    app = FastAPI(title="emoserve UI", lifespan=lambda app: service.running(), docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    if not mount_ui(app, service, Throttle.from_config(settings.server), path="/", api_docs=None):
        raise EmoserveError(f"the web UI needs Gradio: {INSTALL_HINT}", code="ui_unavailable")
    return app
