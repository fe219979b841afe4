"""`Accept` → the media type to answer with, honouring q-values (RFC 9110, section 12.5.1)."""

from __future__ import annotations

import re
from collections.abc import Sequence

QVALUE = re.compile(r"^(0(\.\d{0,3})?|1(\.0{0,3})?)$")


def quality(accept: str, media_type: str) -> float:
    """The q-value `accept` gives `media_type`: that of its most specific matching range (type/subtype over
    type/* over */*); 0 when no range matches. A range with a malformed q-value is ignored."""
    main = media_type.split("/")[0]
    specificity, q = -1, 0.0
    for item in accept.split(","):
        media_range, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                weight = float(value.strip()) if QVALUE.match(value.strip()) else -1.0
        if weight < 0:
            continue
        rank = {media_type: 2, f"{main}/*": 1, "*/*": 0}.get(media_range.lower(), -1)
        if rank > specificity:
            specificity, q = rank, weight
    return q


def negotiate(accept: str | None, offers: Sequence[str]) -> str:
    """The offer `accept` prefers: the highest q-value, the earlier offer on a tie. Without the header, or when
    it accepts none of them, the first offer (a server may then answer as if there were no `Accept`)."""
    if not accept or not accept.strip():
        return offers[0]
    best = max(offers, key=lambda offer: (quality(accept, offer), -offers.index(offer)))
    return best if quality(accept, best) > 0 else offers[0]
