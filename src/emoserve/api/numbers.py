"""Numbers from headers, paths and query strings: ASCII decimal digits only, each refusal a 400.

Python's `int()`/`float()`, `str.isdigit()` and pydantic's lax mode take far more than a request
should carry: Unicode digits (`²`, `١٢`, `１２`), signs, surrounding spaces, `1_000`, exponents,
`nan`, and `int()` raises on strings over 4300 digits. Each of those was a 500 (`'²'.isdigit()` is
true, `int('²')` fails) or a silent misreading (`/chunk/1_2` was chunk 12). Every numeric value a
route reads goes through `parse_ascii_int` (or `parse_ascii_decimal` for seconds), so each of them
is an `invalid_parameter` naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator
from starlette.datastructures import Headers

from ..errors import InvalidParameterError

MAX_INT = 2**63 - 1  # SQLite's INTEGER: no value past it reaches the store
INTEGER = re.compile(r"[0-9]{1,19}")
DECIMAL = re.compile(r"[0-9]{1,19}(\.[0-9]{1,9})?")


def parse_ascii_int(value: Any, name: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """`value` as an integer in [minimum, maximum] if it is 1–19 ASCII digits; else 400 invalid_parameter."""
    if not isinstance(value, str) or not INTEGER.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise InvalidParameterError(f"{name} must be an integer from {minimum} to {maximum} in ASCII digits "
                                    f"(0-9 only); got {shown(value)}")
    return int(value)


def parse_ascii_decimal(value: Any, name: str, minimum: float = 0.0, maximum: float = float(MAX_INT)) -> float:
    """`value` as a number in [minimum, maximum] if it is ASCII digits with an optional `.` and fraction
    (no sign, exponent, nan or inf); else 400 invalid_parameter."""
    if not isinstance(value, str) or not DECIMAL.fullmatch(value) or not minimum <= float(value) <= maximum:
        raise InvalidParameterError(f"{name} must be a number from {minimum:g} to {maximum:g} written as ASCII "
                                    f"digits with an optional decimal point (e.g. 2.5); got {shown(value)}")
    return float(value)


def shown(value: Any) -> str:
    """The refused value, escaped (a non-ASCII digit shows as \\uXXXX) and cut short."""
    return ascii(value[:40]) + ("..." if len(value) > 40 else "") if isinstance(value, str) else type(value).__name__


def declared_length(headers: Headers) -> int | None:
    """The request's Content-Length, None when it has none (a chunked body)."""
    value = headers.get("content-length")
    return None if value is None else parse_ascii_int(value, "Content-Length")


def ascii_int(name: str, minimum: int = 0, maximum: int = MAX_INT) -> Any:
    """A path or query parameter type read by `parse_ascii_int`; OpenAPI still shows an integer."""
    return Annotated[int, BeforeValidator(lambda value: parse_ascii_int(value, name, minimum, maximum))]


def ascii_decimal(name: str, minimum: float = 0.0, maximum: float = float(MAX_INT)) -> Any:
    """A path or query parameter type read by `parse_ascii_decimal`; OpenAPI still shows a number."""
    return Annotated[float, BeforeValidator(lambda value: parse_ascii_decimal(value, name, minimum, maximum))]
