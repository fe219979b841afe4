"""The service's logs: access.log, error.log and model_load.log (rotating), plus stdout.

Each file has its own logger (`emoserve.access`, `emoserve.error`, `emoserve.model_load`); code
logs a line with `extra={...}` fields and the formatter renders them as text or JSON lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

LOG_FILES = {"emoserve.access": "access.log", "emoserve.error": "error.log", "emoserve.model_load": "model_load.log"}
FIELDS = ("request_id", "client", "method", "path", "status", "latency_ms", "audio_s", "model", "device", "dtype",
          "load_s", "warmup_s", "weights")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extras = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k))
        line = f"{stamp} {record.levelname} {record.getMessage()}" + (f" {extras}" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(log_dir: Path, json_lines: bool = False, max_bytes: int = 10 * 1024 * 1024,
                  backups: int = 5) -> None:
    """(Re)configure the three log files and stdout. Safe to call again (handlers are replaced)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    formatter = JsonFormatter() if json_lines else TextFormatter()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    for name, filename in LOG_FILES.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        file_handler = RotatingFileHandler(log_dir / filename, maxBytes=max_bytes, backupCount=backups,
                                           encoding="utf-8")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
        logger.addHandler(console)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    root = logging.getLogger("emoserve")
    if not root.handlers:
        root.addHandler(console)
        root.setLevel(logging.INFO)
