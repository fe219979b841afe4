"""The one table of error codes (`emoserve.errors.ERROR_CODES`): every code in use is in it, the docs show it,
and each surface (API status, client error type, Retry-After) reads it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest

from emoserve import wire
from emoserve.client.parse import error_from_response
from emoserve.errors import (
    CODE_BY_STATUS,
    ERROR_CODES,
    AudioError,
    AuthenticationError,
    EmoserveError,
    ServiceUnavailableError,
    UploadIncompleteError,
    code_for_status,
    status_for,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "emoserve").rglob("*.py"))
CODE_CALLS = {"error_response", "status_for"}  # functions whose first argument is a code


def string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def codes_in(tree: ast.AST) -> set[str]:
    """String codes written in the source: `code = "..."` in a class, `code="..."`, `{"code": "..."}`,
    `error_response("...", ...)`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            found |= {string(s.value) for s in node.body if isinstance(s, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == "code" for t in s.targets)}
        elif isinstance(node, ast.keyword) and node.arg == "code":
            found.add(string(node.value))
        elif isinstance(node, ast.Dict):
            found |= {string(v) for k, v in zip(node.keys, node.values) if string(k) == "code"}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in CODE_CALLS and node.args:
            found.add(string(node.args[0]))
    return found - {None}


def detail_keys_in(tree: ast.AST) -> set[str]:
    """The keys of the dict literals passed as `details=` (through conditional expressions too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "details":
            for inner in ast.walk(node.value):
                if isinstance(inner, ast.Dict):
                    found |= {string(k) for k in inner.keys}
    return found - {None}


def test_every_error_code_written_in_the_source_is_in_the_table():
    used = {code: path.relative_to(ROOT) for path in SOURCES for code in codes_in(ast.parse(path.read_text()))}
    assert len(used) > 20  # the scan finds the codes at all
    assert {code: str(path) for code, path in used.items() if code not in ERROR_CODES} == {}


def test_every_error_detail_written_in_the_source_is_a_field_of_the_wire_error():
    used = set().union(*(detail_keys_in(ast.parse(path.read_text())) for path in SOURCES))
    assert {"missing", "max_bytes", "retry_after"} <= used
    assert used - set(wire.ErrorDetails.model_fields) == set()


def docs_error_table() -> dict[str, int]:
    """docs/API.md's error table: `| `code` | status | meaning |` rows."""
    text = (ROOT / "docs" / "API.md").read_text()
    section = text[text.index("## Errors"):]
    section = section[:section.index("\n## ")]
    return {code: int(status) for code, status in re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, re.M)}


def test_the_docs_error_table_lists_exactly_the_codes_with_their_statuses():
    assert docs_error_table() == {code: kind.status for code, kind in ERROR_CODES.items()}


def test_the_dead_clip_too_large_code_is_gone():
    assert "clip_too_large" not in ERROR_CODES
    from emoserve.inference.engine import ClipTooLarge

    assert status_for(ClipTooLarge.code) == 413  # a clip alone too large for the device: audio_too_long


def test_statuses_come_from_the_table():
    assert status_for("upload_incomplete") == 409 and status_for("model_loading") == 503
    assert status_for("not a code") == 500
    assert all(ERROR_CODES[code].status == status for status, code in CODE_BY_STATUS.items())
    assert code_for_status(418) == "invalid_parameter" and code_for_status(502) == "internal_error"


def answer(status: int, body: dict | None, **headers: str) -> httpx.Response:
    kwargs = {"json": body} if body is not None else {"text": "<html>bad gateway</html>"}
    return httpx.Response(status, headers=headers, **kwargs)


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_the_client_raises_the_tables_error_type_for_each_code(code):
    kind = ERROR_CODES[code]
    error = error_from_response(answer(kind.status, {"error": {"code": code, "message": "m"}}))
    assert type(error) is kind.error and error.code == code and error.status_code == kind.status


def test_the_client_keeps_details_and_reads_bare_statuses():
    error = error_from_response(answer(409, {"error": {"code": "upload_incomplete", "message": "m", "missing": [2]}},
                                       **{"Retry-After": "3"}))
    assert isinstance(error, UploadIncompleteError) and error.details == {"missing": [2]} and error.retry_after == 3
    assert type(error_from_response(answer(503, None))) is ServiceUnavailableError
    assert type(error_from_response(answer(401, None))) is AuthenticationError
    assert error_from_response(answer(502, None)).code == "internal_error"
    assert type(error_from_response(answer(400, {"error": {"code": "too_short", "message": "m"}}))) is AudioError
    assert type(error_from_response(answer(400, {"error": {"code": "from_the_future", "message": "m"}}))) \
        is EmoserveError
