"""The service's logs: access.log, error.log and model_load.log (rotating), plus stdout.

Each file has its own logger (`emoserve.access`, `emoserve.error`, `emoserve.model_load`); code
logs a line with `extra={...}` fields and the formatter renders them as text or JSON lines.
Logged values come from clients (a path may carry a decoded %0A), so the formatters escape control
characters in everything they write: one record is one line, and no client can forge another.
Every line logged while a request is handled names its request id: the middleware puts it in
`REQUEST_ID`, and the formatters add it to records that do not carry one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from logging.handlers import RotatingFileHandler

from .config import ServerConfig

LOG_FILES = {"emoserve.access": "access.log", "emoserve.error": "error.log", "emoserve.model_load": "model_load.log"}
FIELDS = ("request_id", "client", "method", "path", "status", "latency_ms", "audio_s", "model", "device", "dtype",
          "load_s", "warmup_s", "weights")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1 and the Unicode line breaks
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
REQUEST_ID: ContextVar[str | None] = ContextVar("emoserve_request_id", default=None)  # the request being handled


def fields_of(record: logging.LogRecord) -> dict:
    """The record's `extra` fields, with the request id of the request it was logged in."""
    fields = {k: getattr(record, k) for k in FIELDS if hasattr(record, k)}
    if "request_id" not in fields and REQUEST_ID.get() is not None:
        fields = {"request_id": REQUEST_ID.get(), **fields}
    return fields


def escape_controls(text: str) -> str:
    """`text` with each control character written as its escape (\\n, \\x1b, \\u2028): printable, on one line."""
    return CONTROL.sub(lambda m: SHORT_ESCAPES.get(m[0]) or m[0].encode("unicode_escape").decode("ascii"), text)


def indented_traceback(text: str) -> str:
    """A traceback under its record: escaped line by line and indented, so no line of it looks like a record."""
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extras = " ".join(f"{k}={v}" for k, v in fields_of(record).items())
        line = escape_controls(f"{stamp} {record.levelname} {record.getMessage()}" + (f" {extras}" if extras else ""))
        if record.exc_info:
            line += "\n" + indented_traceback(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update(fields_of(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json escapes C0 itself; DEL, C1 and U+2028/9 it leaves raw: written as \uXXXX, the values read back the same
        return CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", json.dumps(entry, ensure_ascii=False))


def setup_logging(config: ServerConfig) -> None:
    """(Re)configure the three log files (in `config.log_dir`) and stdout. Safe to call again (handlers are
    replaced)."""
    config.log_dir.mkdir(parents=True, exist_ok=True)
    formatter = JsonFormatter() if config.log_json else TextFormatter()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    for name, filename in LOG_FILES.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        file_handler = RotatingFileHandler(config.log_dir / filename, maxBytes=config.log_max_bytes,
                                           backupCount=config.log_backups, encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
        logger.addHandler(console)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    root = logging.getLogger("emoserve")
    if not root.handlers:
        root.addHandler(console)
        root.setLevel(logging.INFO)


def uvicorn_log_config(config: ServerConfig) -> dict | None:
    """uvicorn's own loggers on stdout in our JSON lines when `log_json` is on; None: uvicorn's default text."""
    if not config.log_json:
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
            "handlers": {"stdout": handler},
            "loggers": {name: {"handlers": ["stdout"], "level": "INFO", "propagate": False}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}
