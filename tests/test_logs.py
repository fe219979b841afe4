"""Log lines: one record is one line whatever the logged values hold, in text and in JSON."""

from __future__ import annotations

import json
import logging
import sys

from emoserve.logs import JsonFormatter, TextFormatter

HOSTILE = "/v1/x\n2026-01-01T00:00:00.000Z INFO forged\r\x1b[2J\x7f\x85\u2028end"


def record(with_error: bool = False) -> logging.LogRecord:
    exc_info = None
    if with_error:
        try:
            raise ValueError(f"bad file name {HOSTILE}")
        except ValueError:
            exc_info = sys.exc_info()
    entry = logging.LogRecord("emoserve.error", logging.ERROR, __file__, 1, "failed on %s", (HOSTILE,), exc_info)
    entry.path, entry.client, entry.request_id = HOSTILE, "client\n1", "req-1"
    return entry


def physical_lines(text: str) -> list[str]:
    return text.splitlines()  # splits at \r, \x1c-\x1e, \x85 and \u2028 too, as log viewers may


def test_text_lines_escape_control_characters_in_the_message_and_every_field():
    text = TextFormatter().format(record())
    assert physical_lines(text) == [text] and "\x1b" not in text and "\x7f" not in text
    assert "failed on /v1/x\\n2026-01-01T00:00:00.000Z INFO forged\\r\\x1b[2J\\x7f\\x85\\u2028end" in text
    assert "client=client\\n1" in text


def test_a_traceback_stays_under_its_record_indented():
    lines = physical_lines(TextFormatter().format(record(with_error=True)))
    assert lines[0].endswith("forged\\r\\x1b[2J\\x7f\\x85\\u2028end") and "Traceback" in lines[1]
    assert all(line.startswith("    ") for line in lines[1:])  # a newline of the error's text starts no record
    assert lines[-2].endswith("ValueError: bad file name /v1/x")
    assert lines[-1] == "    2026-01-01T00:00:00.000Z INFO forged\\r\\x1b[2J\\x7f\\x85\\u2028end"


def test_json_lines_stay_one_line_and_read_back_the_values():
    text = JsonFormatter().format(record(with_error=True))
    assert physical_lines(text) == [text] and "\x1b" not in text and "\x85" not in text and "\u2028" not in text
    entry = json.loads(text)
    assert entry["path"] == HOSTILE and entry["message"] == f"failed on {HOSTILE}" and entry["client"] == "client\n1"
    assert entry["exception"].endswith(f"ValueError: bad file name {HOSTILE}")
